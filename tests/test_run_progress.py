"""The head's bookkeeping without Ray: snapshot selection, the target stop, resume and the
assembly of a multi-task evaluation (launch.monitor)."""
import io
import json
import math
from types import SimpleNamespace

import torch

from kd_system.checkpoints.progress import RunCounters, RunProgress, resume_point
from kd_system.checkpoints.run_dir import RunDirectory
from kd_system.checkpoints.selection import BestSnapshot, SnapshotSelection
from kd_system.launch.calls import EvalCall
from kd_system.launch.monitor import RunMonitor
from kd_system.metrics import MetricsLog, ResumedAt
from kd_system.policies.files import PolicyBundle, PolicySpec
from kd_system.policies.networks import build_network, count_parameters
from kd_system.types import EvalReport, LearnerState

NET = {"kind": "mlp", "hidden": [8], "activation": "relu"}
NAN = float("nan")


def eval_report(score: float, agreement: float | None = 0.9) -> EvalReport:
    return EvalReport(student_return_mean=100.0, student_return_std=1.0, student_returns=[99.0, 101.0], episodes=2,
                      seed=0, env_steps=200, teacher_return_mean=100.0, random_return_mean=10.0,
                      normalized_score=score, normalized_score_ci95=[score - 0.1, score + 0.1],
                      normalized_score_ci95_low=score - 0.1, normalized_score_ci95_high=score + 0.1,
                      normalized_score_se=0.05, normalized_score_dof=1, agreement_teacher_states=agreement)


def learner_state(updates: int) -> LearnerState:
    torch.manual_seed(updates)
    module = build_network(NET, (4,), 2)
    spec = PolicySpec("student", "CartPole-v1", (4,), "float32", 2, "logits", NET, count_parameters(module))
    optimizer = io.BytesIO()
    torch.save(torch.optim.Adam(module.parameters()).state_dict(), optimizer)
    return LearnerState([PolicyBundle.from_module(spec, module)], optimizer.getvalue(), updates, updates * 32)


def progress_in(tmp_path, selection: SnapshotSelection, task_names=("cartpole",)) -> RunProgress:
    run = RunDirectory(tmp_path)
    run.snapshots_dir.mkdir(exist_ok=True)
    return RunProgress(run, list(task_names), 2, selection, RunCounters(), started=0.0)


def test_the_target_stops_the_run_that_many_evaluations_later(tmp_path):
    selection = SnapshotSelection(target_score=1.0, evals_after_target=2, rank_by_agreement=True)
    for updates, score in [(100, 0.9), (200, 1.0), (300, 0.99)]:
        selection.record(tmp_path, updates, score, 0.9, NAN)
        assert selection.target_stop(score, updates) is None
    selection.record(tmp_path, 400, 0.98, 0.9, NAN)
    assert selection.target_stop(0.98, 400) == "target score 1.0 reached (score 1.000 at update 200), then 2 more evaluations"


def test_a_pruned_snapshot_is_counted_but_never_picked(tmp_path):
    selection = SnapshotSelection(target_score=None, evals_after_target=0, rank_by_agreement=True)
    assert selection.record(tmp_path, 100, 0.5, 0.9, NAN)
    assert not selection.record(tmp_path / "pruned", 200, 0.9, 0.9, NAN)
    assert not selection.record(tmp_path, 300, 0.4, 0.9, NAN)
    assert selection.evaluations == 3 and selection.best == BestSnapshot(str(tmp_path), 0.5, 100, 0.9, NAN)


def test_snapshots_keep_the_best_and_a_resumed_run_counts_on(tmp_path):
    progress = progress_in(tmp_path, SnapshotSelection(None, 0, True))
    progress.counters.add_collect(SimpleNamespace(actor_id=0, env_steps=500, states_written=384, rollout_steps=0))
    first = progress.snapshot(learner_state(10))
    progress.evaluated(first, 10, 500, eval_report(0.8).record())
    for updates in (20, 30, 40):
        progress.snapshot(learner_state(updates))
    assert [p.name for p in progress.run.snapshots()] == ["update-000000010", "update-000000030", "update-000000040"]
    assert json.loads((first / "eval.json").read_text())["snapshot"] == str(first)
    point = resume_point(progress.run)
    assert (point.updates, point.samples, point.snapshot.name) == (40, 40 * 32, "update-000000040")
    assert (point.counters.env_steps, point.counters.states_labelled, point.counters.updates) == (500, 384, 40)
    assert point.best.path == str(first) and point.best.score == 0.8


def test_a_multi_task_snapshot_is_scored_once_every_task_is_in(tmp_path):
    logged = []
    metrics = SimpleNamespace(log=lambda kind, step, values: logged.append((kind, values)))
    prepared = SimpleNamespace(tasks=[SimpleNamespace(name="a"), SimpleNamespace(name="b")])
    progress = progress_in(tmp_path, SnapshotSelection(1.0, 0, True), task_names=("a", "b"))
    monitor = RunMonitor(prepared, progress, metrics)
    snapshot = progress.snapshot(learner_state(10))
    assert monitor.task_evaluated(EvalCall(snapshot, 10, 500, 1), eval_report(1.0, None)) == (False, None)
    scored, stop = monitor.task_evaluated(EvalCall(snapshot, 10, 500, 0), eval_report(1.02))
    assert scored and stop == "target score 1.0 reached (score 1.010 at update 10)"
    (kind, record), = logged
    assert kind == "eval" and record["normalized_score"] == monitor.latest_score == 1.01
    assert record["a.normalized_score"] == 1.02 and "b.agreement_teacher_states" not in record
    assert "student_returns" not in record and record["agreement_teacher_states"] == 0.9
    assert math.isnan(record["kl_teacher_states"])


def test_run_state_names_the_latest_snapshot_and_its_updates_not_the_live_count(tmp_path):
    progress = progress_in(tmp_path, SnapshotSelection(None, 0, True))
    progress.counters.wall_s_before = 100.0
    first = progress.snapshot(learner_state(10))
    progress.counters.updates = 715  # the learner trained on (monitor.trained): no snapshot holds that
    progress.counters.add_collect(SimpleNamespace(actor_id=0, env_steps=900, states_written=800, rollout_steps=0))
    progress.evaluated(first, 10, 900, eval_report(0.8).record())
    state = progress.run.read_state()
    assert (state["snapshot"], state["updates"], state["env_steps"]) == ("update-000000010", 10, 900)
    assert state["wall_s"] > 100.0 and state["best"]["path"] == str(first)
    point = resume_point(progress.run)
    assert (point.snapshot.name, point.updates, point.counters.updates) == (state["snapshot"], 10, 10)
    assert point.counters.env_steps == 900 and point.counters.wall_s_before == state["wall_s"]
    assert point.best.path == str(first) and point.best.score == 0.8

    resumed = RunProgress(progress.run, ["cartpole"], 2, SnapshotSelection(None, 0, True, best=point.best),
                          point.counters, started=0.0, resumed_from=point.snapshot)
    resumed.write_state()  # before its first snapshot, a resumed run names the one it continues
    assert resumed.run.read_state()["snapshot"] == "update-000000010"
    assert resumed.wall_s() > state["wall_s"]  # the wall budget counts on from the earlier sessions


def test_a_head_killed_between_snapshot_and_run_state_resumes_from_the_snapshot(tmp_path):
    progress = progress_in(tmp_path, SnapshotSelection(None, 0, True))
    progress.snapshot(learner_state(10))
    before = progress.run.read_state()
    # what progress.snapshot writes first; the kill came before run_state.json
    progress.run.write_snapshot(learner_state(20), {"env_steps": 2000, "states_labelled": 1500,
                                                    "rollout_steps": 0, "wall_s": before["wall_s"] + 10}, ["cartpole"])
    point = resume_point(progress.run)
    assert (point.snapshot.name, point.updates) == ("update-000000020", 20)
    assert (point.counters.env_steps, point.counters.states_labelled) == (2000, 1500)
    assert point.counters.wall_s_before == before["wall_s"] + 10


def read_scalars(where, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(where))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_resumed_run_logs_no_step_twice_in_jsonl_or_tensorboard(tmp_path):
    jsonl, board = tmp_path / "metrics.jsonl", tmp_path / "tensorboard"
    killed = MetricsLog(jsonl, board)
    for updates, env_steps in [(10, 100), (20, 200), (30, 300), (40, 400)]:
        killed.log("learner", updates, {"loss": 1.0})
        killed.log("actor", env_steps, {"behaviour_return_mean": 1.0})
        killed.log("progress", updates, {"env_steps": env_steps})
    killed.log("eval", 20, {"normalized_score": 0.5})
    killed.close()
    with open(jsonl, "a") as torn:
        torn.write('{"kind": "learner", "step": 4')  # SIGKILL mid-line

    resumed = MetricsLog(jsonl, board, ResumedAt(updates=20, env_steps=300))  # snapshot 20; run_state at 300
    kept = [(r["kind"], r["step"]) for r in map(json.loads, jsonl.read_text().splitlines())]
    assert kept == [("learner", 10), ("actor", 100), ("progress", 10), ("learner", 20), ("actor", 200),
                    ("progress", 20), ("actor", 300), ("eval", 20)]
    for updates, env_steps in [(30, 400), (40, 500)]:
        resumed.log("learner", updates, {"loss": 2.0})
        resumed.log("actor", env_steps, {"behaviour_return_mean": 2.0})
    resumed.close()
    assert read_scalars(board, "learner/loss") == [(10, 1.0), (20, 1.0), (30, 2.0), (40, 2.0)]
    assert read_scalars(board / "env_steps", "actor/behaviour_return_mean") == [
        (100, 1.0), (200, 1.0), (300, 1.0), (400, 2.0), (500, 2.0)]
