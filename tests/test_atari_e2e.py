"""A short Atari distillation through the real command: ALE Pong actors labelling with a
Nature-DQN CNN teacher into a real Redis store, a Rusu 7% CNN student, snapshots and evaluation.

The teacher here is an untrained Nature CNN saved in the project's format (the weights do not
matter to the plumbing, and the test must not depend on the shipped teacher's quality)."""
import json
import subprocess
import sys

import pytest
import torch

from kd_system.policies.networks import build_network, cnn_spec, count_parameters
from kd_system.policies.files import FrozenPolicy, PolicySpec, save_policy

pytestmark = pytest.mark.slow


def test_short_pong_run_distils_a_cnn_student_and_scores_it(tmp_path):
    torch.manual_seed(0)
    network = cnn_spec("nature")
    module = build_network(network, (4, 84, 84), 6)
    spec = PolicySpec("teacher", "ALE/Pong-v5", (4, 84, 84), "uint8", 6, "logits", network, count_parameters(module))
    save_policy(tmp_path / "teacher", spec, module)
    runs = tmp_path / "runs"
    overrides = [f"teacher.checkpoint={tmp_path / 'teacher'}", f"head.runs_dir={runs}", "head.max_updates=40",
                 "head.snapshot_every_s=5", "head.eval_episodes=1", "head.final_eval_episodes=1",
                 "head.heldout_states=256", "head.max_wall_s=240", "actors.envs_per_actor=4",
                 "limiter.min_size_to_sample=1024", "actors.num_cpus=0.5", "learner.num_cpus=0.5"]
    command = [sys.executable, "-m", "kd_system.cli", "run", "--config", "pong-v5"]
    for item in overrides:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = list(runs.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_id"] == "ALE/Pong-v5"
    assert summary["teacher_params"] == 1_687_206 and summary["student_params"] == 111_798
    assert summary["learner_updates"] >= 40 and summary["states_labelled"] >= 1024
    # Pong scores are whole-game point differences in [-21, 21], never clipped per point
    for key in ("teacher_return_mean", "student_return_mean"):
        assert -21 <= summary[key] <= 21
    student = FrozenPolicy.load(summary["best_checkpoint"])
    assert student.spec.network["kind"] == "cnn" and student.spec.obs_dtype == "uint8"
