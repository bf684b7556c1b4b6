"""Stable-Baselines3 / sb3-contrib zips to kd_system policies (teachers/imports/sb3.py): real SB3
models, tiny and trained for seconds, converted and compared with the library's own forward on our
pipeline's observations; the zip is never unpickled, and a planted pickle never runs."""
from __future__ import annotations

import base64
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

# Test extras (pyproject.toml): a missing library fails here rather than skipping the file unseen.
import sb3_contrib  # noqa: E402,F401
import stable_baselines3  # noqa: E402,F401

from sb3_contrib import QRDQN  # noqa: E402
from stable_baselines3 import A2C, DQN, PPO  # noqa: E402
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402

from kd_system.envs.make import EnvSpaces, env_spaces  # noqa: E402
from kd_system.errors import CheckpointError  # noqa: E402
from kd_system.experiments.sb3_logger import without_sb3_logger  # noqa: E402
from kd_system.policies.files import PolicySpec, module_from_bytes  # noqa: E402
from kd_system.teachers.imports.records import COMPARE_LOG_PROBS, Converted, ImportOptions  # noqa: E402
from kd_system.teachers.imports import sb3 as sb3_module  # noqa: E402
from kd_system.teachers.imports.sb3 import convert  # noqa: E402
from kd_system.teachers.imports.sb3_zip import read_blob  # noqa: E402
from kd_system.teachers.imports.states import env_states  # noqa: E402

CARTPOLE = EnvSpaces((4,), "float32", 2)
PARITY = 1e-5


@pytest.fixture(scope="module")
def cartpole_states() -> np.ndarray:
    return env_states("CartPole-v1", 1000)


@pytest.fixture(scope="module")
def pong() -> tuple[EnvSpaces, np.ndarray]:
    return env_spaces("ALE/Pong-v5"), env_states("ALE/Pong-v5", 200)


class Frames(gym.Env):
    """An env with Pong's frame-stack space, for CnnPolicy models that need no training."""
    action_space = gym.spaces.Discrete(6)

    def __init__(self, shape: tuple[int, ...] = (4, 84, 84)):
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)

    def reset(self, seed=None, options=None):
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def ours(converted: Converted, spaces: EnvSpaces, obs: np.ndarray) -> np.ndarray:
    spec = PolicySpec("teacher", "test", spaces.obs_shape, spaces.obs_dtype, spaces.num_actions,
                      converted.output_kind, converted.network)
    with torch.no_grad():
        return module_from_bytes(spec, converted.weights, "test")(torch.as_tensor(obs)).numpy()


def truth(model, obs: np.ndarray) -> np.ndarray:
    """The loaded SB3 model's own forward (tests may unpickle their own files)."""
    with torch.no_grad():
        tensor, _ = model.policy.obs_to_tensor(obs)
        if isinstance(model, QRDQN):
            return model.policy.quantile_net(tensor).mean(dim=1).numpy()
        if isinstance(model, DQN):
            return model.q_net(tensor).numpy()
        return model.policy.get_distribution(tensor).distribution.logits.numpy()


def comparable(values: np.ndarray, converted: Converted) -> np.ndarray:
    if converted.compare == COMPARE_LOG_PROBS:
        return torch.log_softmax(torch.as_tensor(values, dtype=torch.float64), dim=1).numpy()
    return values.astype(np.float64)


def assert_parity(converted: Converted, spaces: EnvSpaces, model, obs: np.ndarray, seen: np.ndarray | None = None):
    theirs = comparable(truth(model, obs), converted)
    diff = float(np.max(np.abs(comparable(ours(converted, spaces, obs), converted) - theirs)))
    assert diff <= PARITY, diff
    assert converted.reference is not None
    assert float(np.max(np.abs(comparable(converted.reference(obs), converted) - theirs))) <= 1e-6
    return diff


TEACHERS = {
    "dqn": (DQN, "DQN", "q", dict(policy_kwargs=dict(net_arch=[32, 32]), learning_starts=100, buffer_size=1000), 300),
    "qrdqn": (QRDQN, "QR-DQN", "q", dict(policy_kwargs=dict(net_arch=[32], n_quantiles=25), learning_starts=100,
                                         buffer_size=1000), 300),
    "ppo": (PPO, "PPO", "logits", dict(n_steps=64, batch_size=32, n_epochs=2,
                                       policy_kwargs=dict(net_arch=[32, 32])), 64),
    "a2c": (A2C, "A2C", "logits", dict(n_steps=8, policy_kwargs=dict(net_arch=[32])), 64),
    "ppo_relu": (PPO, "PPO", "logits", dict(n_steps=64, batch_size=32, n_epochs=2, policy_kwargs=dict(
        activation_fn=torch.nn.ReLU, net_arch=dict(pi=[24, 16], vf=[8]))), 64),
}


@pytest.mark.parametrize("name", list(TEACHERS))
def test_mlp_teachers_match_the_library(name, tmp_path, cartpole_states):
    cls, algorithm, kind, kwargs, steps = TEACHERS[name]
    without_sb3_logger(cls("MlpPolicy", "CartPole-v1", seed=0, device="cpu", **kwargs)).learn(steps).save(
        tmp_path / "model.zip")
    converted = convert(tmp_path / "model.zip", CARTPOLE, ImportOptions(env_id="CartPole-v1"))
    model = cls.load(tmp_path / "model.zip", device="cpu")
    diff = assert_parity(converted, CARTPOLE, model, cartpole_states)
    print(f"{name}: parity {diff:.3g}")
    assert (converted.algorithm, converted.output_kind, converted.protocol) == (algorithm, kind, {})
    assert converted.library == ("sb3-contrib" if name == "qrdqn" else "stable-baselines3")
    actions = model.predict(cartpole_states, deterministic=True)[0]
    assert (ours(converted, CARTPOLE, cartpole_states).argmax(1) == actions).mean() > 0.99  # ties aside
    if name == "qrdqn":
        assert any("mean over the 25 quantiles" in note for note in converted.notes)
    if name == "ppo_relu":
        assert converted.network == {"kind": "mlp", "hidden": [24, 16], "activation": "relu"}
        assert converted.source_params == 4 * 24 + 24 + 24 * 16 + 16 + 16 * 2 + 2  # policy path only
    if name == "dqn":
        assert converted.network["activation"] == "relu" and converted.library_version == stable_baselines3.__version__
        assert converted.source_params == sum(p.numel() for p in model.q_net.parameters())


@pytest.fixture(scope="module")
def vecnormalized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vecnorm")
    venv = VecNormalize(DummyVecEnv([lambda: gym.make("CartPole-v1")]), clip_obs=5.0)
    without_sb3_logger(PPO("MlpPolicy", venv, n_steps=128, batch_size=64, n_epochs=1, seed=0, device="cpu")).learn(
        256).save(folder / "model.zip")
    venv.save(folder / "vecnormalize.pkl")
    return folder


def test_vecnormalize_statistics_go_inside_the_network(vecnormalized, cartpole_states):
    options = ImportOptions(env_id="CartPole-v1", trust_pickle=True, vecnormalize=vecnormalized / "vecnormalize.pkl")
    converted = convert(vecnormalized / "model.zip", CARTPOLE, options)
    assert converted.network["obs_norm"] == {"clip": 5.0, "epsilon": 1e-8}
    stats = VecNormalize.load(vecnormalized / "vecnormalize.pkl", DummyVecEnv([lambda: gym.make("CartPole-v1")]))
    model = PPO.load(vecnormalized / "model.zip", device="cpu")
    with torch.no_grad():
        tensor, _ = model.policy.obs_to_tensor(stats.normalize_obs(cartpole_states))
        theirs = comparable(model.policy.get_distribution(tensor).distribution.logits.numpy(), converted)
    diff = float(np.max(np.abs(comparable(ours(converted, CARTPOLE, cartpole_states), converted) - theirs)))
    print(f"vecnormalize: parity {diff:.3g}")
    assert diff <= PARITY
    assert float(np.max(np.abs(comparable(converted.reference(cartpole_states), converted) - theirs))) <= 1e-6


def test_vecnormalize_needs_trust_pickle(vecnormalized):
    options = ImportOptions(env_id="CartPole-v1", vecnormalize=vecnormalized / "vecnormalize.pkl")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        convert(vecnormalized / "model.zip", CARTPOLE, options)


@pytest.mark.parametrize("cls", [DQN, PPO, QRDQN])
def test_atari_cnn_teachers_label_as_the_library_does(cls, tmp_path, pong):
    spaces, frames = pong
    extra = dict(buffer_size=1000) if cls is not PPO else dict(n_steps=64, batch_size=64)
    cls("CnnPolicy", Frames(), seed=0, device="cpu", **extra).save(tmp_path / "model.zip")
    converted = convert(tmp_path / "model.zip", spaces, ImportOptions(env_id="ALE/Pong-v5"))
    assert {k: converted.network[k] for k in ("kind", "channels", "kernels", "strides", "fc")} == {
        "kind": "cnn", "channels": [32, 64, 64], "kernels": [8, 4, 3], "strides": [4, 2, 1], "fc": [512]}
    assert "input_scale" not in converted.network  # SB3 divides by 255 inside: our default
    assert converted.protocol["obs_layout"] == "chw (VecTransposeImage)" and converted.protocol["assumed"]
    model = cls.load(tmp_path / "model.zip", device="cpu")
    diff = assert_parity(converted, spaces, model, frames)
    print(f"{cls.__name__} CnnPolicy: parity {diff:.3g}")
    actions = model.predict(frames, deterministic=True)[0]
    assert np.array_equal(ours(converted, spaces, frames).argmax(1), actions)


def test_channels_last_training_env_is_saved_channels_first(tmp_path, pong):
    """SB3 wraps a channels-last image env in VecTransposeImage; the zip's space is (4, 84, 84) then."""
    spaces, frames = pong
    DQN("CnnPolicy", Frames((84, 84, 4)), buffer_size=1000, seed=1, device="cpu").save(tmp_path / "hwc.zip")
    data = json.loads(zipfile.ZipFile(tmp_path / "hwc.zip").read("data"))
    assert data["observation_space"]["_shape"] == [4, 84, 84]
    converted = convert(tmp_path / "hwc.zip", spaces, ImportOptions(env_id="ALE/Pong-v5"))
    assert_parity(converted, spaces, DQN.load(tmp_path / "hwc.zip", device="cpu"), frames)


class TinyExtractor(BaseFeaturesExtractor):
    """A user's own features extractor: not something kd_system's networks can hold."""

    def __init__(self, observation_space, features_dim: int = 8):
        super().__init__(observation_space, features_dim)
        self.net = torch.nn.Linear(4, features_dim)

    def forward(self, obs):
        return self.net(obs)


def test_cnn_variants(tmp_path, pong):
    """ReLU layers after NatureCNN become more fc layers; raw-pixel (normalize_images=False) models keep
    input_scale 1; a Tanh layer after NatureCNN and a custom extractor are refused."""
    spaces, frames = pong
    DQN("CnnPolicy", Frames(), buffer_size=1000, seed=0, device="cpu",
        policy_kwargs=dict(net_arch=[64], normalize_images=False)).save(tmp_path / "deep.zip")
    converted = convert(tmp_path / "deep.zip", spaces, ImportOptions(env_id="ALE/Pong-v5"))
    assert converted.network["fc"] == [512, 64] and converted.network["input_scale"] == 1.0
    assert_parity(converted, spaces, DQN.load(tmp_path / "deep.zip", device="cpu"), frames)
    PPO("CnnPolicy", Frames(), n_steps=64, batch_size=64, device="cpu",
        policy_kwargs=dict(net_arch=[64])).save(tmp_path / "tanh.zip")
    with pytest.raises(CheckpointError, match=r"data\.policy_kwargs\.net_arch adds tanh layers"):
        convert(tmp_path / "tanh.zip", spaces, ImportOptions(env_id="ALE/Pong-v5"))
    DQN("MlpPolicy", "CartPole-v1", device="cpu",
        policy_kwargs=dict(features_extractor_class=TinyExtractor)).save(tmp_path / "custom.zip")
    with pytest.raises(CheckpointError, match=r"features_extractor_class is .*TinyExtractor.*supported"):
        convert(tmp_path / "custom.zip", CARTPOLE, ImportOptions(env_id="CartPole-v1"))


# --- safety: nothing in the file runs ---------------------------------------------------------------

class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def rewrite(source: Path, target: Path, **members: bytes) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, members.get(name, old.read(name)))
    return target


@pytest.fixture(scope="module")
def dqn_zip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dqn") / "model.zip"
    DQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[16]), seed=0, device="cpu").save(path)
    return path


def test_the_payload_is_live(tmp_path):
    """The planted pickle really would run (so the tests below prove something)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("entry", ["observation_space", "action_space", "policy_kwargs", "policy_class"])
def test_a_planted_pickle_in_data_never_runs(entry, dqn_zip, tmp_path):
    marker = tmp_path / "ran"
    data = json.loads(zipfile.ZipFile(dqn_zip).read("data"))
    planted = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    data[entry] = {**data[entry], ":serialized:": planted} if isinstance(data[entry], dict) else {
        ":serialized:": planted}
    evil = rewrite(dqn_zip, tmp_path / "evil.zip", data=json.dumps(data).encode())
    try:
        converted = convert(evil, CARTPOLE, ImportOptions(env_id="CartPole-v1"))
        converted.reference(np.zeros((2, 4), np.float32))
    except CheckpointError as exc:
        assert entry == "policy_class" and "posix.system" in str(exc)  # the class it names is not a policy
    assert not marker.exists()


def test_a_planted_pickle_in_policy_pth_never_runs(dqn_zip, tmp_path):
    marker, buffer = tmp_path / "ran", io.BytesIO()
    torch.save({"q_net.q_net.0.weight": Payload(marker)}, buffer)
    evil = rewrite(dqn_zip, tmp_path / "evil.zip", **{"policy.pth": buffer.getvalue()})
    with pytest.raises(CheckpointError, match="policy.pth"):
        convert(evil, CARTPOLE, ImportOptions(env_id="CartPole-v1"))
    assert not marker.exists()


def test_a_planted_vecnormalize_pickle_never_runs_without_trust(dqn_zip, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "vecnormalize.pkl").write_bytes(pickle.dumps(Payload(marker)))
    options = ImportOptions(env_id="CartPole-v1", vecnormalize=tmp_path / "vecnormalize.pkl")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        convert(dqn_zip, CARTPOLE, options)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_opcode_reader_names_classes_without_importing_them(protocol):
    kwargs = {"optimizer_class": torch.optim.Adam, "net_arch": {"pi": [8]}, "activation_fn": torch.nn.ELU,
              "other": torch.nn.ELU, "n": 3}  # "other" reaches ELU through the memo
    blob = read_blob(base64.b64encode(pickle.dumps(kwargs, protocol=protocol)).decode())
    assert [str(g) for g in blob.globals] == ["torch.optim.adam.Adam", "torch.nn.modules.activation.ELU"]
    assert blob.items["n"] == 3 and str(blob.items["activation_fn"]) == str(blob.items["other"]) == \
        "torch.nn.modules.activation.ELU"


def test_without_the_library_there_is_no_reference(dqn_zip, monkeypatch):
    real = sb3_module.importlib.import_module

    def missing(name, *args):
        if name.startswith("stable_baselines3"):
            raise ImportError(name)
        return real(name, *args)
    monkeypatch.setattr(sb3_module.importlib, "import_module", missing)
    converted = convert(dqn_zip, CARTPOLE, ImportOptions(env_id="CartPole-v1"))
    assert converted.reference is None
    assert converted.reference_name == "not measured: stable-baselines3 is not installed"
    assert converted.network == {"kind": "mlp", "hidden": [16], "activation": "relu"}


# --- errors --------------------------------------------------------------------------------------------

def test_wrong_env_names_the_field(dqn_zip):
    with pytest.raises(CheckpointError, match=r"data\.observation_space\.shape is \[4\].*Acrobot-v1"):
        convert(dqn_zip, env_spaces("Acrobot-v1"), ImportOptions(env_id="Acrobot-v1"))
    with pytest.raises(CheckpointError, match=r"data\.action_space\.n is 2"):
        convert(dqn_zip, EnvSpaces((4,), "float32", 3), ImportOptions(env_id="Other-v0"))


def test_a_channels_last_saved_space_is_named(dqn_zip, tmp_path):
    data = json.loads(zipfile.ZipFile(dqn_zip).read("data"))
    data["observation_space"]["_shape"] = [84, 84, 4]
    hwc = rewrite(dqn_zip, tmp_path / "hwc.zip", data=json.dumps(data).encode())
    with pytest.raises(CheckpointError, match=r"data\.observation_space\.shape is \[84, 84, 4\].*channels last"):
        convert(hwc, EnvSpaces((4, 84, 84), "uint8", 2, pixels=True), ImportOptions(env_id="ALE/Pong-v5"))


def test_corrupt_and_incomplete_zips_are_refused(dqn_zip, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(dqn_zip.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated.zip"):
        convert(truncated, CARTPOLE, ImportOptions(env_id="CartPole-v1"))
    state = torch.load(io.BytesIO(zipfile.ZipFile(dqn_zip).read("policy.pth")), weights_only=True)
    del state["q_net.q_net.2.bias"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with pytest.raises(CheckpointError, match=r"q_net\.q_net\.2\.bias"):
        convert(rewrite(dqn_zip, tmp_path / "partial.zip", **{"policy.pth": buffer.getvalue()}), CARTPOLE,
                ImportOptions(env_id="CartPole-v1"))


def test_continuous_actions_are_refused(tmp_path):
    PPO("MlpPolicy", "Pendulum-v1", device="cpu").save(tmp_path / "pendulum.zip")
    with pytest.raises(CheckpointError, match=r"data\.action_space is .*Box.*supported"):
        convert(tmp_path / "pendulum.zip", EnvSpaces((3,), "float32", 2), ImportOptions(env_id="Pendulum-v1"))
