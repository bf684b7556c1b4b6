"""Issue 18's route for the Pong teacher, end to end with the real kind of teacher: a DQN whose
outputs are Q-values. A Stable-Baselines3 ``DQN("CnnPolicy")`` made by the project's own teacher
driver (``kd_system.experiments.sb3_teacher``, on our training env, a few hundred steps), brought
in with ``kd-system teacher import`` (its parity check, its card), then a short
``kd-system run --config pong-v5`` that distils it into Rusu's 7% student with the KL loss at
Rusu's tau = 0.01 for Q-value teachers, and leaves no Ray process behind.

tests/test_atari_e2e.py runs the same pipeline with a random *logits* teacher in the project's
format; this one covers what the issue ships: an imported ``q`` teacher."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from kd_system.learner.losses import build_loss, kl_divergence, resolve_temperature
from kd_system.policies.files import FrozenPolicy
from kd_system.processes import cmdline, descendants
from kd_system.teachers.imports.states import env_states
from tests.chaos import Family

pytest.importorskip("stable_baselines3")
pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "kd_system.cli"]
NATURE_PARAMS, RUSU_7_PARAMS = 1_687_206, 111_798
TEACHER_STEPS = 300  # the driver's first evaluation (and best.zip) comes at its last step


def _teacher_zip(tmp_path):
    """``best.zip`` from the driver the issue trains the Pong teacher with: 200 steps of filling,
    100 of learning (25 gradient steps), then one greedy game that saves it."""
    out = tmp_path / "sb3"
    command = [sys.executable, "-m", "kd_system.experiments.sb3_teacher", "--env", "ALE/Pong-v5", "--out", str(out),
               "--total-steps", str(TEACHER_STEPS), "--learning-starts", "200", "--eval-every", str(TEACHER_STEPS),
               "--save-every", str(TEACHER_STEPS), "--eval-episodes", "1", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (out / "best.zip").is_file(), done.stdout[-2000:]
    assert (out / "best.training.json").is_file()  # how best.zip was trained, for the card
    return out / "best.zip"


def _import(source, out) -> dict:
    # --trained-env: the driver trains on our ALE v5 env (sticky actions 0.25), not SB3's NoFrameskip-v4 default
    command = [*CLI, "teacher", "import", str(source), "--env", "ALE/Pong-v5", "--trained-env", "ALE/Pong-v5",
               "--out", str(out), "--episodes", "1", "--training", str(source.parent / "best.training.json")]
    # One torch thread: the import's evaluation plays at batch 1 with torch's default threads (one
    # per core), which on a busy 2-core machine made each Nature-CNN forward 84 ms instead of 5 ms.
    done = subprocess.run(command, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "q teacher" in done.stderr + done.stdout  # the CLI's own last word: "... DQN → q teacher, ..."
    return json.loads((out / "spec.json").read_text())


def _check_imported(spec: dict) -> None:
    card = spec["model_card"]
    assert spec["output_kind"] == "q" and spec["role"] == "teacher" and spec["env_id"] == "ALE/Pong-v5"
    assert spec["obs_shape"] == [4, 84, 84] and spec["obs_dtype"] == "uint8" and spec["num_actions"] == 6
    # converted onto our Nature CNN (not run opaquely): the size the grid's shares are measured against
    assert spec["network"]["kind"] == "cnn" and spec["num_params"] == NATURE_PARAMS
    assert card["library"] == "stable-baselines3" and card["algorithm"] == "DQN" and card["source_format"] == "sb3"
    assert card["parity_max_abs_diff"] is not None and card["parity_max_abs_diff"] <= 1e-5
    assert card["protocol_differences"] == []  # trained on the env it is played on
    assert card["eval_episodes"] == 1 and -21 <= card["eval_return_mean"] <= 21
    assert card["eval_return_ci95"] is None  # one game has no interval
    training = card["training"]  # the driver's record: what the issue asks the card to state
    assert training["trainer"].startswith("Stable-Baselines3") and training["env_steps"] == TEACHER_STEPS
    assert training["wall_s"] > 0 and training["steps_per_s"] == pytest.approx(TEACHER_STEPS / training["wall_s"], rel=1e-3)
    assert training["parts"] == 1 and [e["env_steps"] for e in training["evaluations"]] == [TEACHER_STEPS]


def test_an_imported_sb3_dqn_pong_teacher_distils_with_kl_at_rusus_tau(tmp_path):
    spec = _import(_teacher_zip(tmp_path), tmp_path / "teacher")
    _check_imported(spec)
    card = (tmp_path / "teacher" / "MODEL_CARD.md").read_text()
    assert "| Trained with | Stable-Baselines3" in card and "| Env steps/s |" in card

    runs = tmp_path / "runs"
    overrides = [f"teacher.checkpoint={tmp_path / 'teacher'}", f"head.runs_dir={runs}", "head.max_updates=40",
                 "head.snapshot_every_s=5", "head.eval_episodes=1", "head.final_eval_episodes=1",
                 "head.heldout_states=256", "head.max_wall_s=240", "actors.envs_per_actor=4",
                 "limiter.min_size_to_sample=1024", "actors.num_cpus=0.5", "learner.num_cpus=0.5"]
    command = [*CLI, "run", "--config", "pong-v5"]
    for item in overrides:
        command += ["--set", item]
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        family = Family(run.pid)  # every process the run starts (Ray's, redis-server), seen while it lives
        names: set[str] = set()
        try:
            deadline = time.monotonic() + 420
            while run.poll() is None and time.monotonic() < deadline:
                names |= {cmdline(pid).split(b"\0")[0].decode(errors="replace") for pid in descendants(run.pid)}
                time.sleep(1)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    console = (tmp_path / "run.log").read_text()
    assert run.returncode == 0, console[-3000:]
    assert "Traceback" not in console
    assert any("raylet" in name for name in names) and any("redis-server" in name for name in names), names
    left = family.leftovers()
    assert not left, f"left behind: {left}"

    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env_id"] == "ALE/Pong-v5" and summary["teacher_checkpoint"] == str(tmp_path / "teacher")
    assert summary["teacher_params"] == NATURE_PARAMS and summary["student_params"] == RUSU_7_PARAMS
    assert summary["learner_updates"] >= 40 and summary["states_labelled"] >= 1024
    assert summary["labels"] == "teacher" and summary["acting"] == "teacher" and summary["loss"] == "kl"
    for key in ("teacher_return_mean", "student_return_mean"):
        assert -21 <= summary[key] <= 21
    snapshots = sorted((run_dir / "checkpoints").glob("update-*"))
    assert snapshots and summary["best_checkpoint"] is not None

    # The KL's teacher temperature: the run resolves it from the teacher's output kind (q -> 0.01),
    # and the run records it where the labelling engine was checked.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["learner"]["loss"] == "kl" and config["learner"]["temperature"] is None
    assert config["learner"]["student_temperature"] is None
    assert resolve_temperature(config["learner"]["temperature"], spec["output_kind"]) == 0.01
    assert summary["teacher_engine_kl_temperature"] == 0.01
    # ... and the learner's loss built as Learner builds it for this run's labels is Rusu's KL at 0.01
    loss = build_loss(config["learner"]["loss"], spec["output_kind"], config["learner"]["temperature"],
                      config["learner"]["student_temperature"])
    torch.manual_seed(0)
    student_out, teacher_out = torch.randn(64, 6), 0.05 * torch.randn(64, 6)  # Q-values of an untrained DQN's scale
    assert torch.allclose(loss(student_out, teacher_out), kl_divergence(student_out, teacher_out, 0.01))
    assert not torch.allclose(loss(student_out, teacher_out), kl_divergence(student_out, teacher_out, 1.0))

    student = FrozenPolicy.load(summary["best_checkpoint"])
    # ... and the student shows it: the teacher's Q-values span about a tenth, so softmax(q)
    # is nearly uniform and softmax(q / 0.01) is sharp; 40 updates towards the sharp one leave the
    # student far closer to it (a student trained at tau = 1 would stay near uniform: the reverse)
    states = env_states("ALE/Pong-v5", 256, seed=1)
    ours = torch.as_tensor(student.outputs(states))
    theirs = torch.as_tensor(FrozenPolicy.load(tmp_path / "teacher").outputs(states))
    assert kl_divergence(ours, theirs, 0.01) < 0.1 * kl_divergence(ours, theirs, 1.0)
    assert student.spec.role == "student" and student.spec.output_kind == "logits"  # a KL student's outputs
    assert student.spec.network.get("preset") == "rusu-7" and student.spec.obs_dtype == "uint8"
    assert student.spec.model_card["loss"] == "kl" and student.spec.model_card["labels"] == "teacher"
