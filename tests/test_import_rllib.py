"""RLlib checkpoint import (teachers/imports/rllib.py) on real ray checkpoints: tiny, untrained
modules saved by ``algo.save()`` (Algorithm directories) or ``RLModule.save_to_path()`` (module
directories), converted and compared with the modules' own forward on kd_system's observations."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch


from kd_system.envs.make import EnvSpaces, env_spaces  # noqa: E402
from kd_system.errors import CheckpointError  # noqa: E402
from kd_system.policies.files import PolicySpec, module_from_bytes  # noqa: E402
from kd_system.teachers.imports.records import COMPARE_OUTPUTS, ImportOptions  # noqa: E402
from kd_system.teachers.imports.rllib import convert  # noqa: E402
from kd_system.teachers.imports.states import env_states  # noqa: E402

CARTPOLE, PONG = "CartPole-v1", "ALE/Pong-v5"
TOLERANCE = 1e-5
MODULE_SUBDIR = "learner_group/learner/rl_module/default_policy"


def _config(algorithm: str, **model):
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    config = DQNConfig() if algorithm == "dqn" else PPOConfig()
    return config.rl_module(model_config=DefaultModelConfig(**model))


@torch.no_grad()
def _module_outputs(module, obs: np.ndarray) -> np.ndarray:
    """What the RLlib module itself computes: Q-values (DQN) or action-distribution logits (PPO)."""
    batch = {"obs": torch.as_tensor(obs)}
    if hasattr(module, "compute_q_values"):
        return module.compute_q_values(batch)["qf_preds"].numpy()
    return module.forward_inference(batch)["action_dist_inputs"].numpy()


def _ours(converted, env_id: str) -> torch.nn.Module:
    """The converted network as kd_system loads it: from the spec and the safetensors bytes."""
    spec = PolicySpec("teacher", env_id, converted.obs_shape, "float32", converted.num_actions,
                      converted.output_kind, converted.network)
    return module_from_bytes(spec, converted.weights, "converted")


def _parity(converted, env_id: str, states: np.ndarray, expected: np.ndarray) -> float:
    got = _ours(converted, env_id)(torch.as_tensor(states)).detach().numpy()
    reference = converted.reference(states)
    assert got.shape == expected.shape == reference.shape
    np.testing.assert_allclose(reference, expected, atol=1e-6, rtol=0)  # the importer's reference: the module's own
    return float(np.max(np.abs(got - expected)))


def _trusted(env_id: str) -> ImportOptions:
    return ImportOptions(env_id, trust_pickle=True)


@pytest.fixture(scope="module")
def cartpole_states() -> np.ndarray:
    return env_states(CARTPOLE)


@pytest.fixture(scope="module")
def algorithms(tmp_path_factory, cartpole_states):
    """Algorithm checkpoints from ``algo.save()``: {name: (directory, the live module's outputs)}."""
    import ray
    started = not ray.is_initialized()  # build_algo() needs Ray even with no remote env runners
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    configs = {
        "dqn": _config("dqn", fcnet_hiddens=[32, 32]),  # dueling=True, double_q=True, head_fcnet_hiddens=[]
        "dqn_head16": _config("dqn", fcnet_hiddens=[32, 32], head_fcnet_hiddens=[16], head_fcnet_activation="tanh"),
        "ppo": _config("ppo", fcnet_hiddens=[32, 32]),  # fcnet_activation="tanh", vf_share_layers=True
    }
    saved = {}
    try:
        for name, config in configs.items():
            algo = (config.environment(CARTPOLE).env_runners(num_env_runners=0)
                    .debugging(seed=0, log_level="ERROR").build_algo())
            try:
                directory = tmp_path_factory.mktemp(name)
                algo.save(str(directory))
                saved[name] = (directory, _module_outputs(algo.get_module().eval(), cartpole_states))
            finally:
                algo.stop()
        yield saved
    finally:
        if started:
            ray.shutdown()


def _module_dir(path: Path, algorithm: str, obs_space, num_actions: int, training: dict | None = None,
                **model) -> Path:
    """An RLModule directory (``RLModule.save_to_path``) built from the algorithm's default module spec."""
    import gymnasium as gym
    spec = _config(algorithm, **model).training(**(training or {})).get_rl_module_spec(
        spaces={"default_policy": (obs_space, gym.spaces.Discrete(num_actions))})
    spec.build().save_to_path(str(path))
    return path


def _pixel_space(low: float = 0.0, high: float = 1.0):
    import gymnasium as gym
    return gym.spaces.Box(low, high, (84, 84, 4), np.float32)


def _cartpole_obs_space():
    import gymnasium as gym
    return gym.make(CARTPOLE).observation_space


def _cartpole_spaces():
    return env_spaces(CARTPOLE)


# --- DQN -------------------------------------------------------------------------------------------


def test_default_dueling_dqn_folds_into_one_linear(algorithms, cartpole_states):
    directory, expected = algorithms["dqn"]
    converted = convert(directory, _cartpole_spaces(), _trusted(CARTPOLE))
    assert _parity(converted, CARTPOLE, cartpole_states, expected) <= TOLERANCE
    assert converted.network == {"kind": "mlp", "hidden": [32, 32], "activation": "tanh"}
    assert (converted.output_kind, converted.algorithm, converted.library) == ("q", "DQN", "ray[rllib]")
    assert converted.compare == COMPARE_OUTPUTS and converted.protocol == {}
    encoder, advantage, value = 4 * 32 + 32 + 32 * 32 + 32, 32 * 2 + 2, 32 + 1
    assert converted.source_params == encoder + advantage + value
    assert sum(p.numel() for p in _ours(converted, CARTPOLE).parameters()) == encoder + advantage
    assert any("one Linear" in note for note in converted.notes)
    assert "compute_q_values" in converted.reference_name


def test_dueling_dqn_with_a_hidden_head_layer_folds_block_diagonal(algorithms, cartpole_states):
    directory, expected = algorithms["dqn_head16"]
    converted = convert(directory, _cartpole_spaces(), _trusted(CARTPOLE))
    assert _parity(converted, CARTPOLE, cartpole_states, expected) <= TOLERANCE
    assert converted.network["hidden"] == [32, 32, 16 + 16]  # advantage and value streams side by side
    assert any("block-diagonal" in note for note in converted.notes)


def test_non_dueling_dqn(tmp_path, cartpole_states):
    from ray.rllib.core.rl_module.rl_module import RLModule
    directory = _module_dir(tmp_path / "plain", "dqn", _cartpole_obs_space(), 2, {"dueling": False}, fcnet_hiddens=[16])
    module = RLModule.from_checkpoint(directory).eval()
    converted = convert(directory, _cartpole_spaces(), _trusted(CARTPOLE))
    assert _parity(converted, CARTPOLE, cartpole_states, _module_outputs(module, cartpole_states)) <= TOLERANCE
    assert converted.network["hidden"] == [16] and not any("dueling" in note for note in converted.notes)


def test_mixed_activations_are_refused_naming_the_layer(tmp_path):
    # RLlib's defaults: tanh encoder, relu head layers; our MLP has one activation
    directory = _module_dir(tmp_path / "m", "dqn", _cartpole_obs_space(), 2, fcnet_hiddens=[8], head_fcnet_hiddens=[4])
    with pytest.raises(CheckpointError, match="mixes activations"):
        convert(directory, _cartpole_spaces(), _trusted(CARTPOLE))


def test_distributional_dqn_is_refused(tmp_path):
    directory = _module_dir(tmp_path / "c51", "dqn", _cartpole_obs_space(), 2, {"num_atoms": 5}, fcnet_hiddens=[8])
    with pytest.raises(CheckpointError, match="distributional"):
        convert(directory, _cartpole_spaces(), _trusted(CARTPOLE))


# --- PPO -------------------------------------------------------------------------------------------


def test_default_ppo_tanh_mlp(algorithms, cartpole_states):
    directory, expected = algorithms["ppo"]
    converted = convert(directory, _cartpole_spaces(), _trusted(CARTPOLE))
    assert _parity(converted, CARTPOLE, cartpole_states, expected) <= TOLERANCE
    assert converted.network == {"kind": "mlp", "hidden": [32, 32], "activation": "tanh"}
    assert (converted.output_kind, converted.algorithm) == ("logits", "PPO")
    assert converted.source_params == 4 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2  # the value head is not on the path
    assert "forward_inference" in converted.reference_name


def test_algorithm_dir_and_module_dirs_give_the_same_network(algorithms):
    directory, _ = algorithms["ppo"]
    converted = [convert(path, _cartpole_spaces(), _trusted(CARTPOLE)).weights
                 for path in (directory, directory / Path(MODULE_SUBDIR).parent, directory / MODULE_SUBDIR)]
    assert converted[0] == converted[1] == converted[2]


def test_ppo_cnn_on_atari_frames(tmp_path):
    from ray.rllib.core.rl_module.rl_module import RLModule
    directory = _module_dir(tmp_path / "cnn", "ppo", _pixel_space(), 6,
                            conv_filters=[[16, 8, 4, "valid"], [32, 4, 2, "valid"]], head_fcnet_hiddens=[32])
    module = RLModule.from_checkpoint(directory).eval()
    frames = env_states(PONG, 100)
    converted = convert(directory, env_spaces(PONG), _trusted(PONG))
    expected = _module_outputs(module, np.moveaxis(frames.astype(np.float32) / 255.0, 1, -1))
    assert _parity(converted, PONG, frames, expected) <= TOLERANCE
    got = _ours(converted, PONG)(torch.as_tensor(frames)).detach().numpy()
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    assert converted.network["kind"] == "cnn" and converted.network["input_scale"] == pytest.approx(1 / 255)
    assert (converted.network["channels"], converted.network["fc"]) == ([16, 32], [32])
    protocol = converted.protocol
    assert protocol["obs_layout"] == "hwc" and protocol["assumed"] is True and protocol["trained_env"] == PONG
    assert protocol["sticky_actions"] == pytest.approx(0.25)


def test_dueling_dqn_cnn_on_minus_one_to_one_pixels(tmp_path):
    """RLlib's own Atari wrapper feeds x/128 - 1: the -1 folds into the first conv's bias."""
    from ray.rllib.core.rl_module.rl_module import RLModule
    directory = _module_dir(tmp_path / "cnn", "dqn", _pixel_space(-1.0, 1.0), 6,
                            conv_filters=[[16, 8, 4, "valid"], [32, 4, 2, "valid"]], head_fcnet_hiddens=[32])
    module = RLModule.from_checkpoint(directory).eval()
    frames = env_states(PONG, 100)
    options = ImportOptions(PONG, trust_pickle=True, trained_env="ALE/Pong-v5")
    converted = convert(directory, env_spaces(PONG), options)
    expected = _module_outputs(module, np.moveaxis(frames.astype(np.float32) / 128.0 - 1.0, 1, -1))
    assert _parity(converted, PONG, frames, expected) <= TOLERANCE
    assert converted.network["input_scale"] == 1 / 128 and converted.network["fc"] == [64]
    assert converted.protocol["assumed"] is False


@pytest.mark.parametrize("model, match", [
    ({"fcnet_hiddens": [8], "fcnet_use_layernorm": True}, "mlp.1 .*LayerNorm"),
    ({"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 8}, "LSTM"),
])
def test_layers_without_a_counterpart_are_refused(tmp_path, model, match):
    directory = _module_dir(tmp_path / "m", "ppo", _cartpole_obs_space(), 2, **model)
    with pytest.raises(CheckpointError, match=match):
        convert(directory, _cartpole_spaces(), _trusted(CARTPOLE))


def test_atari_protocol_from_the_algorithm_config():
    from kd_system.teachers.imports.rllib import _protocol
    config = {"env": "ale_py:ALE/Pong-v5", "env_config": {"frameskip": 1, "repeat_action_probability": 0.0}}
    protocol = _protocol(env_spaces(PONG), ImportOptions(PONG, trust_pickle=True), config, "obs/255")
    assert (protocol["trained_env"], protocol["assumed"], protocol["sticky_actions"]) == (PONG, False, 0.0)
    assert _protocol(_cartpole_spaces(), _trusted(CARTPOLE), config, "") == {}


def test_same_padding_cnn_is_refused(tmp_path):
    # conv_filters=None: RLlib's default Atari filters, padded "same"
    directory = _module_dir(tmp_path / "cnn", "ppo", _pixel_space(), 6)
    with pytest.raises(CheckpointError, match="padding"):
        convert(directory, env_spaces(PONG), _trusted(PONG))


# --- refusals --------------------------------------------------------------------------------------


def test_without_trust_pickle_it_refuses_naming_the_flag(algorithms):
    directory, _ = algorithms["dqn"]
    for path in (directory, directory / MODULE_SUBDIR):
        with pytest.raises(CheckpointError, match="--trust-pickle") as raised:
            convert(path, _cartpole_spaces(), ImportOptions(CARTPOLE))
        assert "\n" not in str(raised.value) and "code" in str(raised.value)


class _Planted:
    """A pickle that creates a file when loaded: what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_planted_pickle_is_not_loaded_without_trust(algorithms, tmp_path):
    directory, _ = algorithms["dqn"]
    planted = shutil.copytree(directory, tmp_path / "planted")
    marker = tmp_path / "pwned"
    for path in planted.rglob("*.pkl"):
        path.write_bytes(pickle.dumps(_Planted(marker)))
    for source in (planted, planted / MODULE_SUBDIR):
        with pytest.raises(CheckpointError, match="--trust-pickle"):
            convert(source, _cartpole_spaces(), ImportOptions(CARTPOLE))
    assert not marker.exists()
    pickle.loads((planted / MODULE_SUBDIR / "class_and_ctor_args.pkl").read_bytes())
    assert marker.exists()  # the planted file was live: only the refusal kept it from running


def test_not_a_checkpoint_directory(tmp_path):
    (tmp_path / "file.pkl").write_bytes(b"x")
    for source in (tmp_path, tmp_path / "file.pkl", tmp_path / "missing"):
        with pytest.raises(CheckpointError, match="not an RLlib checkpoint|not a directory") as raised:
            convert(source, _cartpole_spaces(), _trusted(CARTPOLE))
        assert "\n" not in str(raised.value)


def test_wrong_env_is_refused_naming_the_space(algorithms):
    directory, _ = algorithms["dqn"]
    with pytest.raises(CheckpointError, match="observation_space.*Acrobot-v1"):
        convert(directory, EnvSpaces((6,), "float32", 2), _trusted("Acrobot-v1"))
    with pytest.raises(CheckpointError, match="action_space.*2 actions.*MountainCar-v0 has 3"):
        convert(directory, EnvSpaces((4,), "float32", 3), _trusted("MountainCar-v0"))
