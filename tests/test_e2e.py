"""End to end through the real command: real Ray, a real redis-server, real envs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHORT = ["--set", "head.target_score=null", "--set", "head.snapshot_every_s=3", "--set", "head.eval_episodes=5",
         "--set", "head.final_eval_episodes=10", "--set", "limiter.min_size_to_sample=2000"]


def kd(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kd_system.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def only_run_dir(runs_dir: Path) -> Path:
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run_dir


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_short_default_run_then_resume(tmp_path):
    runs = tmp_path / "runs"
    first = kd("run", "--set", f"head.runs_dir={runs}", "--set", "head.max_updates=150", *SHORT)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run_dir(runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("env_id", "teacher_params", "student_params", "teacher_return_mean", "student_return_mean",
                "random_return_mean", "normalized_score", "agreement_teacher_states", "env_steps",
                "states_labelled", "learner_updates", "wall_s", "best_checkpoint"):
        assert key in summary, key
    assert summary["env_id"] == "CartPole-v1"
    assert summary["student_params"] <= 0.10 * summary["teacher_params"]
    assert summary["learner_updates"] >= 150 and summary["states_labelled"] > 0
    assert summary["env_steps"] >= summary["states_labelled"]
    assert 0.0 <= summary["agreement_teacher_states"] <= 1.0
    assert Path(summary["best_checkpoint"]).is_dir()
    assert summary["teacher_return_mean"] > summary["random_return_mean"]
    kinds = {record["kind"] for record in read_jsonl(run_dir / "metrics.jsonl")}
    assert {"learner", "progress", "final_eval", "summary"} <= kinds
    assert any((run_dir / "tensorboard").iterdir())
    assert "states" in first.stdout and "updates" in first.stdout  # live progress lines

    # a snapshot is a checkpoint that `kd-system eval` scores
    scored = kd("eval", summary["best_checkpoint"], "--episodes", "3")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["episodes"] == 3

    second = kd("run", "--resume", str(run_dir), "--set", "head.max_updates=400")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["resumed"] is True
    assert "resumed from" in second.stderr
    assert resumed["learner_updates"] >= 400
    assert resumed["env_steps"] > summary["env_steps"]
    assert resumed["wall_s"] > summary["wall_s"]
    summaries = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "summary"]
    assert len(summaries) == 2  # the metrics log was appended to, not replaced


def test_two_node_cluster_puts_actors_and_learner_on_different_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"kd_learner": 1}})
    try:
        worker = cluster.add_node(num_cpus=2, resources={"kd_actor": 1})
        cluster.wait_for_nodes()
        runs = tmp_path / "runs"
        result = kd("run", "--address", cluster.address, "--set", f"head.runs_dir={runs}",
                    "--set", "head.max_updates=100", "--set", "actors.ray_resource=kd_actor",
                    "--set", "learner.ray_resource=kd_learner", *SHORT)
        assert result.returncode == 0, result.stderr[-3000:]
        placement = json.loads((only_run_dir(runs) / "summary.json").read_text())["placement"]
        assert set(placement["actors"]) == {worker.node_id}
        assert placement["learner"] != worker.node_id
    finally:
        cluster.shutdown()


def test_training_goes_on_after_the_target_for_evals_after_target(tmp_path):
    runs = tmp_path / "runs"
    done = kd("run", "--set", f"head.runs_dir={runs}", "--set", "head.target_score=0.0",
              "--set", "head.evals_after_target=2", "--set", "head.snapshot_every_s=2", "--set", "head.eval_episodes=3",
              "--set", "head.final_eval_episodes=3", "--set", "limiter.min_size_to_sample=2000")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_run_dir(runs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"].startswith("target score 0.0 reached") and "then 2 more evaluations" in summary["stop_reason"]
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 3
    # every snapshot is past the target (0.0): the one agreeing most with the teacher wins
    best = max(reversed(evals), key=lambda r: (r["agreement_teacher_states"], r["normalized_score"]))  # ties: the later
    assert summary["best_checkpoint"] == best["snapshot"]


def test_snapshot_pick_ranks_by_agreement_once_the_score_or_its_ci_reaches_the_target():
    from kd_system.checkpoints.selection import SnapshotSelection

    selection = SnapshotSelection(target_score=1.0, evals_after_target=0, rank_by_agreement=True)

    def key(score, agreement, high=float("nan")):
        return selection.key(score, agreement, high)

    lucky_early = key(1.010, 0.988, 1.030)
    steady_late = key(0.998, 0.998, 1.004)  # below 1.0, but its CI reaches it: agreement decides
    assert steady_late > lucky_early
    assert key(0.990, 0.999, 0.995) < lucky_early  # its CI stays under the target: below it, score decides
    assert key(0.990, 0.5, 0.995) > key(0.980, 0.999, 0.985)
    assert key(1.0, 0.97) < key(1.0, 0.98)  # multi-task reports have no CI: the score alone qualifies
    assert key(float("nan"), 0.9) > key(float("nan"), 0.8)


def test_students_of_lookahead_labels_are_picked_by_score_past_the_target_too():
    from kd_system.checkpoints.selection import SnapshotSelection

    selection = SnapshotSelection(target_score=1.0, evals_after_target=0, rank_by_agreement=False)
    better_than_teacher = selection.key(1.012, 0.95, 1.02)
    closer_to_teacher = selection.key(1.001, 0.99, 1.01)
    assert better_than_teacher > closer_to_teacher
