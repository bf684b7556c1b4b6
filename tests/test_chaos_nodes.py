"""Nodes come and go (issue 16 part 7): every component on a node that dies is recovered, a lost
node never adds up to giving up, and with actors.num_actors=auto the collectors follow the nodes.
The decisions are tested without Ray; the slow tests remove and add nodes of a real cluster."""
from __future__ import annotations

import itertools
import json
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kd_system.config import load_config
from kd_system.launch import recovery
from kd_system.launch.calls import CollectCall
from kd_system.launch.cluster_info import room
from kd_system.launch.elastic import Roster, lost_node, per_task, plan
from kd_system.launch.supervision import DeathLog
from kd_system.launch.topology import Components
from tests.chaos import settings, start

NODE_GONE = ("The actor died unexpectedly before finishing this task.\n\tclass_name: Collector\n\tpid: 8547\n"
             "\tip: 10.0.0.7\nThe actor died because its node has died. Node Id: {node}\n"
             "\tthe actor's node was terminated expectedly: received SIGTERM")
CRASH = ("The actor died unexpectedly before finishing this task.\n\tclass_name: Collector\n\tpid: 4242\n"
         "\tip: 10.0.0.7\nThe actor is dead because its worker process has died.")


def node(node_id: str, cpus: float, alive: bool = True, **resources: float) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus, **resources}}


def auto_config(*more: str):
    return load_config(None, ["actors.num_actors=auto", "actors.num_cpus=0.5", "actors.ray_resource=kd_actor",
                              "learner.ray_resource=kd_learner", *more])


HEAD = node("head", 1, kd_learner=1)


# ---- the decisions, without Ray ----------------------------------------------------------------
def test_a_death_names_the_node_whose_loss_caused_it():
    assert lost_node(NODE_GONE.format(node="c5fe912d845ccdbf")) == "c5fe912d845ccdbf"
    assert lost_node(CRASH) is None


def test_the_room_is_recounted_from_the_nodes_alive_now():
    config = auto_config()
    workers = [node("a", 1, kd_actor=1), node("b", 1, kd_actor=1)]
    # 2 slots per worker, less one held back for the evaluator (it may land there); the learner
    # is pinned to the head, so none for it
    assert room([HEAD, *workers], config, 0.0, 1) == 3
    workers[0]["Alive"] = False
    assert room([HEAD, *workers], config, 0.0, 1) == 1
    assert room([HEAD], config, 0.0, 1) == 0 and per_task(0, 2) == 1  # one per task waits for a node


def test_the_plan_keeps_tasks_balanced_and_drops_only_collectors_not_placed_yet():
    roster = Roster.of([0, 0, 1, 1])
    for index in (0, 2):
        roster.answered(index)
    grow = plan(roster, num_tasks=2, room_total=7)  # 3 per task
    assert sorted(grow.add) == [0, 1] and grow.drop == ()
    shrink = plan(roster, num_tasks=2, room_total=2)  # 1 per task: only the waiting ones go
    assert shrink.add == () and shrink.drop == (1, 3)
    for index in (1, 3):
        roster.answered(index)
    assert not plan(roster, num_tasks=2, room_total=2)  # working collectors fit: they stay
    roster.gone(0)
    roster.gone(1)
    assert plan(roster, num_tasks=2, room_total=0).add == (0,)  # never fewer than one per task
    assert roster.restart(0) == 1 and roster.restart(0) == 2  # each replacement: fresh seeds
    assert roster.add(1) == 4 and roster.live(1) == 3


class _Handle:
    """A Ray actor handle that records nothing: the calls return fresh tokens."""
    tokens = itertools.count()

    def __init__(self):
        self.collect = SimpleNamespace(remote=lambda *args: next(self.tokens))


def _head(monkeypatch, config, nodes: list[dict], tasks: list[int], num_tasks: int = 1):
    """A Recovery with just the state it uses, and Ray's calls replaced."""
    monkeypatch.setattr(recovery, "make_collector", lambda *args, **kwargs: _Handle())
    monkeypatch.setattr(recovery, "_kill", lambda handle: None)
    monkeypatch.setattr(recovery.ray, "nodes", lambda: nodes)
    head = recovery.Recovery()
    head.config, head.prepared = config, SimpleNamespace(tasks=[None] * num_tasks)
    head.components = Components([_Handle() for _ in tasks], list(tasks), None, [], 0.0)
    head.stores, head.pending, head.roster = SimpleNamespace(addresses=[None] * num_tasks), {}, Roster.of(tasks)
    head.auto, head.next_follow_s, head.stop_reason, head.failure = config.actors.num_actors == "auto", 0.0, None, None
    head.deaths = DeathLog(config.head.max_deaths, config.head.death_window_s)
    for index in range(len(tasks)):
        head.roster.answered(index)
        head.pending[object()] = CollectCall(index)
    return head


def _collecting(head) -> list[int]:
    return sorted(call.actor_index for call in head.pending.values())


def test_lost_nodes_never_add_up_to_giving_up_but_crashes_do(monkeypatch):
    head = _head(monkeypatch, load_config(None, ["actors.num_actors=2"]), [], [0, 0])
    for lost in "abcde":  # collector 0's replacement lands on one node after another, and each goes
        head._died(CollectCall(0), RuntimeError(NODE_GONE.format(node=lost * 16)))
    assert head.stop_reason is None and head.deaths.total == 5 and head.roster.slots[0].incarnation == 5
    assert _collecting(head) == [0, 0, 0, 0, 0, 0, 1]  # fixed count: every replacement waits for room
    unreachable = recovery.ray.exceptions.ActorUnavailableError("Socket closed", None)
    head._died(CollectCall(1), unreachable)  # no word of a death yet: counted, a crash must not slip by
    for _ in range(2):
        head._died(CollectCall(1), RuntimeError(CRASH))
    assert head.failure.startswith("collector 1 died 3 times")


def test_auto_drops_collectors_whose_node_left_and_replaces_one_that_crashed(monkeypatch):
    nodes = [HEAD, node("a", 1, kd_actor=1), node("b", 1, kd_actor=1)]
    head = _head(monkeypatch, auto_config(), nodes, [0, 0, 0])
    head.pending = {}
    nodes[1]["Alive"] = False  # node a leaves with collectors 1 and 2: room for 1
    for index in (1, 2):
        head._died(CollectCall(index), RuntimeError(NODE_GONE.format(node="a" * 16)))
    assert _collecting(head) == [] and head.roster.live(0) == 1 and head.stop_reason is None
    head._died(CollectCall(0), RuntimeError(CRASH))  # below the room: replaced in its index
    assert _collecting(head) == [0] and head.roster.slots[0].incarnation == 1
    assert head.deaths.total == 3


def test_auto_follows_nodes_that_join_with_new_collectors_and_drops_the_unplaced_excess(monkeypatch):
    nodes = [HEAD, node("a", 1, kd_actor=1)]  # room for 1: one per task of two
    head = _head(monkeypatch, auto_config(), nodes, [0, 1], num_tasks=2)
    head.pending = {}
    nodes.append(node("b", 2, kd_actor=1))  # room 2 + 4 - 1 = 5: two per task
    head._follow_cluster()
    assert _collecting(head) == [2, 3] and sorted(head.components.collector_tasks[2:]) == [0, 1]
    head._follow_cluster()  # not due yet: nothing changes
    assert len(head.components.collectors) == 4
    nodes.pop()  # b left before its collectors were placed: they are dropped, the working ones stay
    head.next_follow_s = 0.0
    head._follow_cluster()
    assert _collecting(head) == [] and head.roster.count("working") == 2 and head.roster.count("waiting") == 0


# ---- real clusters -----------------------------------------------------------------------------
def _records(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [r for r in (json.loads(line) for line in lines[:-1] if line) if r["kind"] == kind]  # the last may be torn


def _until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def _drive(cluster, overrides: list[str], tmp_path: Path, script) -> tuple[dict, str, list[str]]:
    """`kd-system run` against ``cluster`` while ``script(run_dir, problems)`` removes and adds its
    nodes here (Ray's Cluster does that from the main thread only); then SIGTERM ends the run as
    `docker stop` would. Returns the summary, the console, and the script's failed expectations."""
    runs, log = tmp_path / "runs", tmp_path / "console.log"
    command = settings(runs, "head.run_name=nodes", "head.target_score=null", "head.max_wall_s=150", *overrides)
    run, _, _ = start([*command, "--address", cluster.address], log)
    problems: list[str] = []
    try:
        script(runs / "nodes", problems)
        run.send_signal(signal.SIGTERM)  # a last snapshot, the final evaluation, the summary
        run.wait(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
    console = log.read_text()
    assert run.returncode == 0, (problems, console[-3000:])
    return json.loads((runs / "nodes" / "summary.json").read_text()), console, problems


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    started = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"kd_learner_head": 1},
                                                           "include_dashboard": False})
    yield started
    started.shutdown()


@pytest.mark.slow
def test_collectors_follow_worker_nodes_that_leave_and_join(cluster, tmp_path):
    workers = [cluster.add_node(num_cpus=1, resources={"kd_actor": 1}) for _ in range(2)]
    cluster.wait_for_nodes()

    def collectors(run_dir: Path) -> list[int]:
        return [r["collectors"] for r in _records(run_dir, "progress")]

    def script(run_dir: Path, problems: list[str]) -> None:
        if not _until(lambda: 3 in collectors(run_dir), 90):  # room: 2 x 2 slots, 1 held for the evaluator
            problems.append(f"never 3 collectors at work: {collectors(run_dir)}")
            return
        cluster.remove_node(workers[0])  # it holds one or two of them
        seen = len(collectors(run_dir))
        if not _until(lambda: any(n < 3 for n in collectors(run_dir)[seen:]), 60):
            problems.append(f"the collectors did not follow the lost node: {collectors(run_dir)}")
            return
        cluster.add_node(num_cpus=1, resources={"kd_actor": 1})
        seen = len(collectors(run_dir))
        if not _until(lambda: 3 in collectors(run_dir)[seen:], 90):
            problems.append(f"the collectors did not follow the new node: {collectors(run_dir)}")

    auto = ["actors.num_actors=auto", "actors.num_cpus=0.5", "actors.ray_resource=kd_actor",
            "learner.ray_resource=kd_learner_head"]
    summary, console, problems = _drive(cluster, auto, tmp_path, script)
    assert not problems, (problems, console[-3000:])
    assert summary["stop_reason"] == "interrupted" and summary.get("failure") is None
    assert "with its node" in console and "not replaced: the cluster has room for 1 collectors" in console
    assert "the cluster has room for 3 collectors now: starting collector(s)" in console
    assert summary["component_deaths"] >= 1 and summary["learner_updates"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("notice", [True, False], ids=["node-shut-down", "node-vanished"])
def test_the_learner_on_a_node_that_leaves_waits_for_a_node_that_offers_its_resource(cluster, tmp_path, notice):
    learner_node = cluster.add_node(num_cpus=1, resources={"kd_learner": 1})
    cluster.wait_for_nodes()

    def script(run_dir: Path, problems: list[str]) -> None:
        if not _until(lambda: any((run_dir / "checkpoints").glob("update-*")), 90):
            problems.append("no snapshot")
            return
        # without notice (SIGKILL, as a VM that vanishes) Ray first loses touch with the learner,
        # and learns of the node's death only once its health checks fail
        cluster.remove_node(learner_node, allow_graceful=notice)
        time.sleep(5)  # the run goes on without a learner meanwhile
        trained = len(_records(run_dir, "learner"))
        cluster.add_node(num_cpus=1, resources={"kd_learner": 1})
        if not _until(lambda: len(_records(run_dir, "learner")) > trained + 2, 90):
            problems.append("the replacement learner never trained")

    summary, console, problems = _drive(cluster, ["actors.num_actors=1", "learner.ray_resource=kd_learner",
                                                  "head.snapshot_every_s=5"], tmp_path, script)
    assert not problems, (problems, console[-3000:])
    assert re.search(r"learner died .*; restarting it from update-\d+ \(update \d+; \d+ updates lost\)", console)
    if notice:
        assert "learner died with its node" in console
        assert "it starts once a node offering 'kd_learner' joins" in console
    assert summary["stop_reason"] == "interrupted" and summary.get("failure") is None
    assert summary["component_deaths"] >= 1 and summary["learner_updates"] > 0
