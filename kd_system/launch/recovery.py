"""The head's recovery of components that die (a spot VM taken back, an OOM kill, a crash): a
replacement collector with fresh env seeds, a replacement learner restored from the latest
snapshot, a replacement evaluator that re-runs the evaluation it lost; giving up, with a summary,
on a component that keeps dying; and, with ``actors.num_actors: auto``, collectors that follow the
cluster's nodes as they come and go (the decisions: launch/elastic.py). A replacement that cannot
be placed yet waits for a node without holding up the head. Why the head and not Ray's
max_restarts: launch/supervision.py."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from kd_system.checkpoints.progress import resume_point
from kd_system.checkpoints.run_dir import load_snapshot
from kd_system.launch.calls import LEARNER_CALLS, BaselinesCall, Call, CollectCall, EvalCall, RestoreCall
from kd_system.launch.cluster_info import actor_nodes, room
from kd_system.launch.elastic import FOLLOW_EVERY_S, lost_node, per_task, plan
from kd_system.launch.supervision import death_of
from kd_system.launch.topology import make_collector, make_evaluator, make_learner
from kd_system.metrics import say

ACTOR_CALL_S = 1.0  # each remote call runs this long, so the head reacts within about a second


def _name(call: Call) -> str:
    match call:
        case CollectCall(actor_index=index):
            return f"collector {index}"
        case BaselinesCall(task_index=index) | EvalCall(task_index=index):
            return f"evaluator {index}"
    return "learner"


class Recovery:
    """Mixed into the Head: it owns the state these methods change (see head.py)."""

    def _died(self, call: Call, exc: Exception) -> None:
        """Replace the component that answered ``call`` with a dead actor, unless it keeps dying."""
        name = _name(call)
        death, node = death_of(name, exc), lost_node(str(exc))
        how = f"with its node {node[:8]} ({death.where()})" if node else f"({death.where()})"
        if isinstance(exc, ray.exceptions.ActorUnavailableError):
            # Ray lost touch and had no word of a death within a second: a node that vanished without
            # notice, before Ray marks it dead (or a busy node slow to report a crash). Counted as a
            # death: a crash must never slip past max_deaths; a vanished node costs each component on
            # it one count, and the replacement's death with the node, once Ray knows, none.
            how = "(unreachable: Ray lost touch with it, as when its node vanishes)"
        if node is not None:
            # The cluster's doing, not the component's: a lost node (or one lost after another, with a
            # replacement on each) never adds up to giving up. The summary still counts it.
            self.deaths.total += 1
        elif self.deaths.record(name):
            self._give_up(f"{name} died {self.config.head.max_deaths} times within {self.config.head.death_window_s:g} s; "
                          f"{death.where()}", learner_dead=name == "learner")
            return
        match call:
            case CollectCall(actor_index=index):
                self._collector_died(index, how)
            case BaselinesCall(task_index=index) | EvalCall(task_index=index):
                self._replace_evaluator(index, call, how)
            case _:
                self._replace_learner(how)

    def _failed(self, call: Call, exc: Exception) -> None:
        """A component raised an error that is not the user's: give up, keeping its traceback."""
        name = _name(call)
        log = self.progress.run.root / "failure.log"
        log.write_text(f"{name} raised:\n{exc}\n")
        last = next((line.strip() for line in reversed(str(exc).strip().splitlines()) if line.strip()), type(exc).__name__)
        self._give_up(f"{name} failed ({last}); its traceback: {log}")  # a live learner still gives a last snapshot

    # ---- collectors -------------------------------------------------------------------------
    def _collector_died(self, index: int, how: str) -> None:
        """A fixed number of collectors: replace it. ``auto``: replace it while the cluster has room
        for it, else drop it (its node left, and the collectors follow the nodes)."""
        self.roster.gone(index)
        _kill(self.components.collectors[index])  # an unreachable one may still run: never two in one index
        task = self.components.collector_tasks[index]
        if self.auto:
            slots = self._room()
            if slots is not None and self.roster.live(task) >= per_task(slots, len(self.prepared.tasks)):
                say(f"actor {index} died {how}; not replaced: the cluster has room for {slots} collectors "
                    f"({self._collector_count()})")
                return
        incarnation = self.roster.restart(index)
        say(f"actor {index} died {how}; starting replacement #{incarnation} with fresh env seeds")
        self._start_collector(index, incarnation)

    def _start_collector(self, index: int, incarnation: int = 0) -> None:
        """A collector in ``index`` (a new index is appended), collecting as soon as it is placed."""
        task = self.roster.slots[index].task
        handle = make_collector(self.config, index, task, self.prepared, self.stores.addresses, incarnation=incarnation)
        if index < len(self.components.collectors):
            self.components.collectors[index] = handle
        else:
            self.components.collectors.append(handle)
            self.components.collector_tasks.append(task)
        self.pending[handle.collect.remote(ACTOR_CALL_S)] = CollectCall(index)

    def _follow_cluster(self) -> None:
        """``auto``: every FOLLOW_EVERY_S, bring the collectors to the room the cluster has now."""
        if not self.auto or self.stop_reason is not None or time.monotonic() < self.next_follow_s:
            return
        self.next_follow_s = time.monotonic() + FOLLOW_EVERY_S
        slots = self._room()
        if slots is None:
            return
        change = plan(self.roster, len(self.prepared.tasks), slots)
        if not change:
            return
        for index in change.drop:
            for ref in [ref for ref, call in self.pending.items() if call == CollectCall(index)]:
                del self.pending[ref]
            _kill(self.components.collectors[index])
            self.roster.gone(index)
        added = []
        for task in change.add:
            added.append(self.roster.add(task))
            self._start_collector(added[-1])
        what = [f"starting collector(s) {', '.join(map(str, added))}"] if added else []
        what += [f"dropping collector(s) {', '.join(map(str, change.drop))} (not placed yet)"] if change.drop else []
        say(f"the cluster has room for {slots} collectors now: {'; '.join(what)} ({self._collector_count()})")

    def _room(self) -> int | None:
        """Collectors the cluster has room for now; None when Ray cannot list its nodes this moment
        (then a dead collector is replaced, and any excess is dropped at a later count)."""
        nodes = _nodes()
        return None if nodes is None else room(nodes, self.config, self.components.learner_num_gpus,
                                               len(self.prepared.tasks))

    def _collector_count(self) -> str:
        waiting = self.roster.count("waiting")
        starting = f", {waiting} starting or waiting for room" if waiting else ""
        return f"{self.roster.count('working')} working{starting}"

    # ---- the learner and the evaluators -----------------------------------------------------
    def _replace_evaluator(self, index: int, call: Call, how: str) -> None:
        """A fresh evaluator replays the baselines (its held-out states), then the evaluation it lost."""
        # the dead evaluator's other calls only fail: each would count as one more death of it
        lost = [call, *(c for c in self.pending.values()
                        if isinstance(c, (BaselinesCall, EvalCall)) and c.task_index == index)]
        for ref in [ref for ref, c in self.pending.items() if isinstance(c, (BaselinesCall, EvalCall))
                    and c.task_index == index]:
            del self.pending[ref]
        # a snapshot pruned meanwhile cannot be evaluated again: the next snapshot's evaluation follows
        requeue = next((c for c in lost if isinstance(c, EvalCall) and Path(c.snapshot).is_dir()), None)
        for dropped in {c.snapshot for c in lost if isinstance(c, EvalCall)} - ({requeue.snapshot} if requeue else set()):
            self.monitor.eval_parts.pop(dropped, None)
            self.eval_in_flight = False
        say(f"evaluator {index} died {how}; starting a replacement"
            + (f" and re-queueing the evaluation of {Path(requeue.snapshot).name}" if requeue else ""))
        _kill(self.components.evaluators[index])
        evaluator = self.components.evaluators[index] = make_evaluator(self.config, self.prepared, index)
        cfg = self.config.head
        self.pending[evaluator.baselines.remote(cfg.eval_episodes, cfg.seed)] = BaselinesCall(index)
        if requeue is not None:
            bundle = load_snapshot(requeue.snapshot)[0][index]
            self.pending[evaluator.evaluate.remote(bundle, cfg.eval_episodes, cfg.seed)] = requeue

    def _replace_learner(self, how: str) -> None:
        """A fresh learner restored from the latest snapshot: the updates since it are lost, at most
        one snapshot interval (head.snapshot_every_s). Until it has loaded the snapshot it counts as
        not alive, so a run that ends while it waits for a node does not wait on it."""
        for ref in [ref for ref, call in self.pending.items() if isinstance(call, LEARNER_CALLS)]:
            del self.pending[ref]  # calls to the dead learner: they only fail
        _kill(self.components.learner)
        self.monitor.learner_replaced()
        learner = self.components.learner = make_learner(self.config, self.prepared, self.stores.addresses,
                                                         self.components.learner_num_gpus)
        point = resume_point(self.progress.run)  # what --resume would continue from: the same restore
        lost = self.counters.updates
        if point is not None:
            ref = learner.load_state.remote(point.student_weights, point.optimizer, point.updates, point.samples)
            self.counters.updates = point.updates
        else:
            ref, self.counters.updates = learner.node_id.remote(), 0
        resource = self.config.learner.ray_resource
        nodes = _nodes() if resource is not None else None
        waits = nodes is not None and not actor_nodes(nodes, resource)
        say(f"learner died {how}; restarting it from "
            + (f"{point.snapshot.name} (update {self.counters.updates}; {lost - self.counters.updates} updates lost)"
               if point else "scratch (no snapshot yet)")
            + (f"; it starts once a node offering {resource!r} joins" if waits else ""))
        self.pending[ref] = RestoreCall(point.snapshot if point else None)
        self.snapshot_in_flight, self.learner_idle, self.learner_alive = False, False, False
        self.last_snapshot = (self.progress.elapsed(), self.counters.updates)

    def _give_up(self, why: str, learner_dead: bool = False) -> None:
        say(f"giving up: {why}")
        self.failure, self.stop_reason = why, f"failed: {why}"
        if learner_dead:
            self.learner_alive = False


def _nodes() -> list[dict[str, Any]] | None:
    try:
        return ray.nodes()
    except Exception:  # the GCS is briefly out of reach (it may be restarting): ask again later
        return None


def _kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # already dead: nothing to stop
        pass
