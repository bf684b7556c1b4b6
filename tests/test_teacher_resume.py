"""Teacher training in parts: the resume point (fast), the command line's refusals (fast), a real
RLlib DQN resumed with its learner state (slow), and SIGTERM / SIGINT stopping a training without
leaving Ray's processes behind (slow)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from kd_system.errors import CheckpointError, ConfigError
from kd_system.teachers import resume
from kd_system.teachers.cli import register_cli
from kd_system.teachers.training import TeacherTrainConfig
from tests.chaos import Family, wait_for

TINY = ["--steps-per-iter", "400", "--learning-starts", "200", "--train-batch-size", "32", "--buffer-size", "2000"]
QUICK = ["--hidden", "32", "--eval-episodes", "3", "--select-episodes", "2", "--eval-every-iters", "1"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd-system")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


def _cli(*argv: str) -> int:
    args = _parser().parse_args(["teacher", "train", *argv])
    return args.func(args)


def test_resume_point_round_trips_nested_state_with_int_keys(tmp_path):
    learner = {"rl_module": {"default_policy": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}},
               "optimizer": {"opt": {"state": {0: {"step": 3.0, "exp_avg": np.ones(2)}},
                                     "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0], "x": None}]}}}
    progress = resume.Progress(iteration=7, env_steps=2800, wall_s=12.5, best={"full": 9.0}, resumed_at=[1200])
    resume.save(tmp_path, {"env_id": "CartPole-v1"}, progress, learner, {"layers.0.weight": np.zeros((2, 2), np.float32)})
    point = resume.load(tmp_path)
    state = point.learner_state["optimizer"]["opt"]
    assert list(state["state"]) == [0]  # an int key stays an int: torch's optimizer maps params by it
    assert state["state"][0]["step"] == 3.0 and np.array_equal(state["state"][0]["exp_avg"], np.ones(2))
    assert state["param_groups"][0]["betas"] == [0.9, 0.999] and state["param_groups"][0]["x"] is None
    assert np.array_equal(point.learner_state["rl_module"]["default_policy"]["w"], learner["rl_module"]["default_policy"]["w"])
    assert point.progress == progress and point.config == {"env_id": "CartPole-v1"}
    assert set(point.best_state) == {"layers.0.weight"}
    # A kill between the two renames of the next save leaves the previous part as .training.old.
    resume.state_dir(tmp_path).rename(tmp_path / ".training.old")
    assert resume.load(tmp_path).progress.env_steps == 2800 and resume.exists(tmp_path)
    # ... and the next save keeps it rather than deleting the only copy before the new one is in place
    resume.save(tmp_path, {"env_id": "CartPole-v1"}, resume.Progress(iteration=8), learner, None)
    assert resume.load(tmp_path).progress.iteration == 8 and not (tmp_path / ".training.old").exists()


def test_cli_refuses_what_it_cannot_resume(tmp_path):
    with pytest.raises(CheckpointError, match=r"^--resume .*no teacher training to continue"):
        _cli("--resume", str(tmp_path))
    resume.save(tmp_path, {"env_id": "CartPole-v1"}, resume.Progress(), {}, None)
    with pytest.raises(ConfigError, match=r"^--resume continues with the settings saved .* drop --hidden, --lr"):
        _cli("--resume", str(tmp_path), "--hidden", "64", "--lr", "0.1")
    with pytest.raises(ConfigError, match=r"^--out .* holds a teacher training already; continue it with --resume"):
        _cli("--env", "CartPole-v1", "--algo", "dqn", "--out", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--env, --algo required"):
        _cli("--out", str(tmp_path / "new"))


def test_resumed_dqn_continues_epsilon_and_refills_its_buffer():
    cfg = TeacherTrainConfig("CartPole-v1", "dqn", "out", hparams={"epsilon_steps": 1000, "learning_starts": 300})
    fresh, half, past = cfg.resumed_hparams(0), cfg.resumed_hparams(500), cfg.resumed_hparams(5000)
    assert "epsilon_start" not in fresh and fresh["learning_starts"] == 300
    assert half["epsilon_start"] == pytest.approx(1.0 + (0.02 - 1.0) * 0.5) and half["epsilon_steps"] == 500
    assert past["epsilon_start"] == pytest.approx(0.02) and past["learning_starts"] == 300
    assert TeacherTrainConfig.from_record(cfg.to_record()) == cfg


@pytest.mark.slow
def test_resumed_training_restores_the_learner_and_continues_the_counters(tmp_path):
    from kd_system.teachers.rllib_export import build_algo, mlp_model_config

    out = tmp_path / "teacher"
    assert _cli("--env", "CartPole-v1", "--algo", "dqn", "--out", str(out), "--max-env-steps", "800", *QUICK, *TINY) == 0
    first = json.loads((out / "spec.json").read_text())["model_card"]
    point = resume.load(out)
    assert (point.progress.iteration, point.progress.env_steps) == (2, 800)
    # The learner state restores into a freshly built algorithm: weights and Adam's moments.
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        cfg = TeacherTrainConfig.from_record(point.config)
        algo = build_algo("CartPole-v1", {}, "dqn", mlp_model_config(cfg.hidden), cfg.resumed_hparams(800), 1, 0)
        algo.set_state({"learner_group": {"learner": point.learner_state}})
        learner = algo.get_state(components=["learner_group"])["learner_group"]["learner"]
        saved = point.learner_state["rl_module"]["default_policy"]
        restored = learner["rl_module"]["default_policy"]
        assert any(k.startswith("_target") for k in saved) and set(saved) == set(restored)  # the target network too
        assert all(np.array_equal(np.asarray(restored[k]), np.asarray(v)) for k, v in saved.items())
        acting = algo.get_module().state_dict()  # the env runner's copy: synced from the learner
        assert all(np.array_equal(acting[k].cpu().numpy(), np.asarray(saved[k])) for k in acting if k in saved)
        moments = [s["exp_avg"] for s in next(iter(learner["optimizer"].values()))["state"]["state"].values()]
        saved_moments = [s["exp_avg"] for s in next(iter(point.learner_state["optimizer"].values()))["state"]["state"].values()]
        assert moments and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(moments, saved_moments))
        algo.stop()
    finally:
        ray.shutdown()
    with pytest.raises(ConfigError, match=r"^--resume .* already spent its budget"):
        _cli("--resume", str(out))  # the same budget: nothing to continue
    assert _cli("--resume", str(out), "--max-env-steps", "1600") == 0
    card = json.loads((out / "spec.json").read_text())["model_card"]
    progress = resume.load(out).progress
    assert (progress.iteration, progress.env_steps, progress.resumed_at) == (4, 1600, [800])
    assert card["train_env_steps_total"] == 1600 and card["train_resumed_at"] == [800]
    assert card["train_wall_s_total"] > first["train_wall_s_total"]
    assert "in 2 parts (resumed at 800 env steps)" in (out / "MODEL_CARD.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_training_leaves_no_ray_and_the_training_resumes(tmp_path, signum):
    out, log = tmp_path / "teacher", tmp_path / "console.log"
    command = [sys.executable, "-m", "kd_system.cli", "teacher", "train", "--env", "CartPole-v1", "--algo", "dqn",
               "--out", str(out), "--max-env-steps", "1000000", *QUICK, *TINY]
    with open(log, "w") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    family = Family(process.pid)
    try:
        assert wait_for(lambda: (out / ".training" / "progress.json").exists(), 180), log.read_text()[-3000:]
        assert family.seen, "Ray's processes were not seen"
        process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert process.returncode == 130, text[-3000:]
    assert "Traceback" not in text
    assert f"continue with: kd-system teacher train --resume {out}" in text
    left = family.leftovers()
    assert not left, left
    done = resume.load(out).progress
    assert done.iteration >= 1 and not (out / "spec.json").exists()
    assert _cli("--resume", str(out), "--max-env-steps", str(done.env_steps + 400)) == 0
    assert json.loads((out / "spec.json").read_text())["model_card"]["train_resumed_at"] == [done.env_steps]
