"""Multi-task distillation: a shared-trunk student, per-task store namespaces, per-task scores."""
import json
import math
from pathlib import Path

import pytest
import torch

from kd_system.config import load_config
from kd_system.errors import ConfigError
from kd_system.policies.networks import SharedTrunkMLPs, count_parameters
from kd_system.policies.files import FrozenPolicy
from kd_system.launch.preparation import prepare
from kd_system.checkpoints.summary import combine_reports

from test_e2e import SHORT, kd, only_run_dir, read_jsonl

TWO_TASKS = """
tasks:
  - {env: CartPole-v1, teacher: "shipped:cartpole-v1"}
  - {env: Acrobot-v1, teacher: "shipped:acrobot-v1"}
student: {hidden: [32, 32]}
actors: {num_actors: 1, envs_per_actor: 4}
"""


def test_tasks_share_the_trunk_and_keep_their_own_ends():
    student = SharedTrunkMLPs([(4, 2), (6, 3)], [16, 8, 8])
    cartpole, acrobot = student.views
    assert cartpole.layers[2] is acrobot.layers[2] and cartpole.layers[4] is acrobot.layers[4]
    assert cartpole.layers[0] is not acrobot.layers[0] and cartpole.layers[6] is not acrobot.layers[6]
    # ends: 4*16+16 + 8*2+2 and 6*16+16 + 8*3+3; trunk 16*8+8 + 8*8+8 once
    assert count_parameters(student) == (80 + 18) + (112 + 27) + (136 + 72)
    with torch.no_grad():
        cartpole.layers[2].weight.add_(1.0)  # a trunk change shows in every task
    assert torch.equal(acrobot.layers[2].weight, cartpole.layers[2].weight)


def test_combined_report_is_the_mean_with_the_worst_task():
    reports = [{"normalized_score": 1.02, "agreement_teacher_states": 0.9, "env_steps": 10},
               {"normalized_score": 0.96, "agreement_teacher_states": 0.8, "env_steps": 20}]
    combined = combine_reports(["cartpole-v1", "acrobot-v1"], reports)
    assert combined["normalized_score"] == pytest.approx(0.99)
    assert combined["normalized_score_min"] == pytest.approx(0.96)
    assert combined["agreement_teacher_states"] == pytest.approx(0.85)
    assert combined["acrobot-v1.env_steps"] == 20 and math.isnan(combined["kl_teacher_states"])
    assert all(math.isnan(b) for b in combined["normalized_score_ci95"])  # no standard errors given


def test_combined_report_puts_a_ci_on_the_mean_that_the_snapshot_pick_reads():
    # se 0 (CartPole at 500 every episode) and 0.01 on 99 dof: the mean 0.999 has half width
    # t(0.975, 99) * 0.01 / 2 = 0.009921
    reports = [{"normalized_score": 1.0, "normalized_score_se": 0.0, "normalized_score_dof": 29},
               {"normalized_score": 0.998, "normalized_score_se": 0.01, "normalized_score_dof": 99}]
    combined = combine_reports(["cartpole-v1", "acrobot-v1"], reports)
    assert combined["normalized_score_ci95"] == pytest.approx([0.989079, 1.008921], abs=1e-6)
    assert combined["normalized_score_ci95_high"] == combined["normalized_score_ci95"][1]


def test_multi_task_config_is_checked_per_task(tmp_path):
    path = tmp_path / "mt.yaml"
    path.write_text(TWO_TASKS.replace("Acrobot-v1, teacher", "Acrobot-v9, teacher"))
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.env: 'Acrobot-v9'"):
        prepare(load_config(str(path)))
    path.write_text(TWO_TASKS.replace('"shipped:acrobot-v1"', '"shipped:cartpole-v1"'))
    with pytest.raises(ConfigError, match=r"tasks\[1\]\.teacher .* use a teacher trained on Acrobot-v1"):
        prepare(load_config(str(path)))
    path.write_text(TWO_TASKS.replace("[32, 32]", "[32]"))
    with pytest.raises(ConfigError, match="at least two layers"):
        load_config(str(path))


@pytest.mark.slow
def test_short_multi_task_run_then_resume(tmp_path):
    config = tmp_path / "two-tasks.yaml"
    config.write_text(TWO_TASKS)
    runs = tmp_path / "runs"
    first = kd("run", "--config", str(config), "--set", f"head.runs_dir={runs}", "--set", "head.max_updates=120", *SHORT)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = only_run_dir(runs)
    assert run_dir.name.startswith("multitask-")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_id"] == "CartPole-v1+Acrobot-v1"
    assert [task["env_id"] for task in summary["tasks"]] == ["CartPole-v1", "Acrobot-v1"]
    assert summary["normalized_score"] == pytest.approx(
        sum(task["normalized_score"] for task in summary["tasks"]) / 2)
    assert summary["normalized_score_min"] == min(task["normalized_score"] for task in summary["tasks"])
    low, high = summary["normalized_score_ci95"]
    assert low <= summary["normalized_score"] <= high
    assert summary["student_params"] < sum(task["student_params"] for task in summary["tasks"])  # shared trunk
    best = Path(summary["best_checkpoint"])
    for task in ("cartpole-v1", "acrobot-v1"):  # each task's student is an ordinary checkpoint
        assert FrozenPolicy.load(best / task).spec.env_id.lower() == task
    records = read_jsonl(run_dir / "metrics.jsonl")
    # per-task figures reach the metrics: every evaluation during the run (if one finished) and the final one
    evals = [r for r in records if r["kind"] in ("eval", "final_eval")]
    assert any(r["kind"] == "final_eval" for r in evals)
    assert all("cartpole-v1.normalized_score" in r and "normalized_score_min" in r for r in evals)

    second = kd("run", "--resume", str(run_dir), "--set", "head.max_updates=240")
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["resumed"] is True and resumed["learner_updates"] >= 240
