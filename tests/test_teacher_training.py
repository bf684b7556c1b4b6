"""Teacher training: config validation (fast) and real, tiny RLlib DQN/PPO runs (slow)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from kd_system.errors import CheckpointError, ConfigError
from kd_system.policies.files import FrozenPolicy, PolicySpec, save_policy
from kd_system.teachers.cli import register_cli
from kd_system.teachers.training import TeacherTrainConfig, train_teacher

CARD_FIELDS = {"eval_return_mean", "eval_return_std", "eval_episodes", "random_return_mean", "random_return_std",
               "train_env_steps", "train_wall_s", "algorithm", "rllib_version", "hidden", "num_params", "command",
               "created"}
TINY = {
    "dqn": dict(steps_per_iter=400, learning_starts=200, train_batch_size=32, buffer_size=2000),
    "ppo": dict(train_batch_size=400, minibatch_size=100, num_epochs=1, num_envs_per_runner=2),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd-system")
    register_cli(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize("kwargs, field", [
    (dict(env_id="NoSuchEnv-v9"), "env_id"),
    (dict(algorithm="sac"), "algorithm"),
    (dict(hidden=(256, 0)), "hidden"),
    (dict(max_env_steps=0), "max_env_steps"),
    (dict(eval_episodes=0), "eval_episodes"),
    (dict(target_return=float("nan")), "target_return"),
    (dict(hparams={"n_step": 3}, algorithm="ppo"), "hparams.n_step"),
    (dict(hparams={"lr": -1.0}), "hparams.lr"),
])
def test_bad_config_raises_config_error_naming_the_field(tmp_path, kwargs, field):
    base = dict(env_id="CartPole-v1", algorithm="dqn", out_dir=str(tmp_path / "t"))
    cfg = TeacherTrainConfig(**{**base, **kwargs})
    with pytest.raises(ConfigError) as info:
        train_teacher(cfg)  # validation happens before Ray starts
    message = str(info.value)
    assert message.startswith(field) and "\n" not in message
    assert not (tmp_path / "t").exists()


def test_cli_builds_config_and_rejects_bad_input(tmp_path):
    args = _parser().parse_args(["teacher", "train", "--env", "CartPole-v1", "--algo", "bad", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="^algorithm"):
        args.func(args)
    args = _parser().parse_args(["teacher", "train", "--env", "CartPole-v1", "--algo", "dqn", "--out", str(tmp_path),
                                 "--hidden", "64,x"])
    with pytest.raises(ConfigError, match="^--hidden"):
        args.func(args)


def test_command_round_trips_through_the_cli():
    cfg = TeacherTrainConfig("LunarLander-v3", "ppo", "out dir", hidden=(64, 64), target_return=250.0,
                             hparams={"lambda_": 0.98, "num_epochs": 4})
    argv = __import__("shlex").split(cfg.command())
    assert argv[:3] == ["kd-system", "teacher", "train"]
    args = _parser().parse_args(argv[1:])
    assert (args.env, args.algo, args.out, args.hidden) == ("LunarLander-v3", "ppo", "out dir", "64,64")
    assert (args.hp_lambda_, args.hp_num_epochs, args.target_return) == (0.98, 4, 250.0)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["dqn", "ppo"])
def test_export_reproduces_rllib_module(ray_session, tmp_path, algorithm):
    from kd_system.teachers.rllib_export import DEFAULTS, build_algo, mlp_model_config, export_mlp, rllib_outputs, sample_observations, verify_export
    import gymnasium as gym

    algo = build_algo("CartPole-v1", {}, algorithm, mlp_model_config((32, 32)), {**DEFAULTS[algorithm], **TINY[algorithm]}, 0, 0)
    try:
        algo.train()
        module = algo.get_module()
        obs = sample_observations(gym.make("CartPole-v1").observation_space, 256, seed=1)
        ours = export_mlp(module, algorithm, 4, 2, [32, 32], "relu")
        assert verify_export(module, algorithm, ours, obs) <= 1e-4
        spec = PolicySpec("teacher", "CartPole-v1", (4,), "float32", 2, "q" if algorithm == "dqn" else "logits",
                          {"kind": "mlp", "hidden": [32, 32], "activation": "relu"})
        save_policy(tmp_path / "p", spec, ours)
        loaded = FrozenPolicy.load(tmp_path / "p")
        np.testing.assert_allclose(loaded.outputs(obs), rllib_outputs(module, algorithm, obs), atol=1e-4)
        with torch.no_grad():  # a wrong mapping must be caught
            ours.layers[0].weight[0, 0] += 0.5
        with pytest.raises(CheckpointError, match="export check failed"):
            verify_export(module, algorithm, ours, obs)
    finally:
        algo.stop()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, output_kind", [("dqn", "q"), ("ppo", "logits")])
def test_train_teacher_end_to_end(ray_session, tmp_path, algorithm, output_kind):
    out = tmp_path / "teacher"
    cfg = TeacherTrainConfig("CartPole-v1", algorithm, str(out), hidden=(32, 32), max_env_steps=800,
                             eval_episodes=5, select_episodes=2, eval_every_iters=1, hparams=TINY[algorithm])
    assert train_teacher(cfg) == out
    # and the resume point, kept so that raising the budget continues the training (resume.py)
    assert {p.name for p in out.iterdir()} == {"spec.json", "model.safetensors", "MODEL_CARD.md", ".training"}
    policy = FrozenPolicy.load(out)
    spec = policy.spec
    assert (spec.role, spec.env_id, spec.obs_shape, spec.num_actions) == ("teacher", "CartPole-v1", (4,), 2)
    assert spec.output_kind == output_kind and spec.network["hidden"] == [32, 32]
    card = spec.model_card
    assert CARD_FIELDS <= set(card)
    assert card["algorithm"] == algorithm and card["eval_episodes"] == 5 and card["hidden"] == [32, 32]
    assert card["num_params"] == spec.num_params == policy.num_params == 4 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2
    assert 1 <= card["train_env_steps"] <= card["train_env_steps_total"] and card["train_env_steps_total"] >= 800
    assert card["command"].startswith(f"kd-system teacher train --env CartPole-v1 --algo {algorithm} --out ")
    assert card["eval_return_mean"] > 0 and card["random_return_mean"] > 0
    assert json.loads((out / "spec.json").read_text())["model_card"] == card
    assert "Reproduce with" in (out / "MODEL_CARD.md").read_text()
    assert policy.greedy_actions(np.zeros((3, 4), np.float32)).shape == (3,)


@pytest.mark.slow
def test_train_atari_teacher_exports_rllibs_cnn_onto_our_convnet(ray_session, tmp_path):
    """RLlib sees channels-last frames in [0, 1] and flattens its convs (h, w, c)-wise; the exported
    ConvNet takes uint8 (4, 84, 84) stacks: the card records the verified max difference."""
    from kd_system.teachers.rllib_cnn import RllibAtariEnv, to_rllib_obs

    env = RllibAtariEnv({"env_id": "ALE/Pong-v5"})
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (84, 84, 4) and obs.dtype == np.float32 and 0.0 <= obs.min() <= obs.max() <= 1.0
        assert env._env.settings.terminal_on_life_loss and env._env.settings.clip_rewards  # training settings
    finally:
        env.close()
    stacks = np.random.default_rng(0).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    np.testing.assert_array_equal(to_rllib_obs(stacks)[1, :, :, 3], stacks[1, 3] / np.float32(255))

    out = tmp_path / "pong"
    cfg = TeacherTrainConfig("ALE/Pong-v5", "ppo", str(out), preset="rusu-4", max_env_steps=256, eval_episodes=1,
                             select_episodes=1, eval_every_iters=1,
                             hparams=dict(train_batch_size=256, minibatch_size=128, num_epochs=1, num_envs_per_runner=2))
    train_teacher(cfg)
    policy = FrozenPolicy.load(out)
    card = policy.spec.model_card
    assert policy.spec.network["kind"] == "cnn" and policy.spec.network["preset"] == "rusu-4"
    assert policy.spec.obs_shape == (4, 84, 84) and policy.spec.obs_dtype == "uint8"
    assert card["export_max_abs_diff"] <= 1e-4 and "--preset rusu-4" in card["command"]
    assert -21 <= card["eval_return_mean"] <= 21
    assert "CNN `rusu-4`" in (out / "MODEL_CARD.md").read_text()
