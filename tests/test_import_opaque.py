"""TorchScript and ONNX teachers: they run as they are, fed our observations as the user says."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kd_system.envs.make import env_spaces
from kd_system.errors import CheckpointError
from kd_system.policies.opaque import load_opaque
from kd_system.teachers.imports.opaque import convert_onnx, convert_torchscript
from kd_system.teachers.imports.records import ImportOptions
from kd_system.teachers.imports.states import env_states

PONG = "ALE/Pong-v5"


class ChannelsLastCNN(nn.Module):
    """An Atari net exported for (batch, 84, 84, 4) float frames in [0, 1], as some libraries keep them."""

    def __init__(self, num_actions: int = 6):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(4, 8, 8, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 4, stride=2), nn.ReLU(),
                                   nn.Flatten(), nn.Linear(16 * 9 * 9, num_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x.permute(0, 3, 1, 2))


class Uint8CNN(ChannelsLastCNN):
    """Takes our uint8 stacks as they are (channels first) and scales inside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x.float() / 255.0)


def _mlp(num_actions: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, num_actions)).eval()


def _onnx(tmp_path: Path, net: nn.Module, example: torch.Tensor, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated in torch 2.13, and fast offline
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["obs"], output_names=["out"],
                          dynamic_axes={"obs": {0: "batch"}, "out": {0: "batch"}})
    return path


def _torchscript(tmp_path: Path, net: nn.Module) -> Path:
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(path))
    return path


@pytest.fixture(scope="module")
def pong_states() -> np.ndarray:
    return env_states(PONG, 100)


def _run(converted, states: np.ndarray) -> np.ndarray:
    module = load_opaque(converted.network, converted.num_actions, converted.weights, "test")
    with torch.inference_mode():
        return module(torch.from_numpy(states)).numpy()


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_cartpole_mlp_parity(tmp_path, kind):
    net = _mlp()
    if kind == "onnx":
        path, convert = _onnx(tmp_path, net, torch.zeros(2, 4)), convert_onnx
    else:
        path, convert = _torchscript(tmp_path, net), convert_torchscript
    converted = convert(path, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1", output_kind="q"))
    states = env_states("CartPole-v1", 1000)
    ours = _run(converted, states)
    with torch.inference_mode():
        theirs = net(torch.from_numpy(states)).numpy()
    assert np.abs(ours - converted.reference(states)).max() <= 1e-5
    assert np.abs(ours - theirs).max() <= 1e-5
    assert converted.network == {"kind": kind, "input_layout": "chw", "input_scale": 1.0, "input_dtype": "float32"}
    assert converted.weights == path.read_bytes() and converted.num_actions == 2 and converted.output_kind == "q"
    assert converted.source_params == 4 * 32 + 32 + 32 * 2 + 2 and converted.protocol == {}
    assert converted.library == ("onnx" if kind == "onnx" else "torch") and converted.algorithm == "unknown"
    if kind == "onnx":
        assert converted.library_version.startswith("pytorch ")
        assert converted.reference_name == f"onnxruntime {ort.__version__} InferenceSession"


def test_channels_last_atari_onnx_same_actions(tmp_path, pong_states):
    torch.manual_seed(0)
    path = _onnx(tmp_path, ChannelsLastCNN().eval(), torch.zeros(2, 84, 84, 4))
    options = ImportOptions(PONG, output_kind="logits", obs_layout="hwc", obs_scale=1 / 255,
                            trained_env="PongNoFrameskip-v4")
    converted = convert_onnx(path, env_spaces(PONG), options)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = pong_states.transpose(0, 2, 3, 1).astype(np.float32) / 255.0  # the test's own adaptation
    theirs = session.run(None, {"obs": frames})[0]
    ours = _run(converted, pong_states)
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert np.abs(ours - theirs).max() <= 1e-4
    assert converted.network["input_layout"] == "hwc" and converted.obs_shape == (4, 84, 84)
    assert converted.protocol["obs_layout"] == "hwc" and converted.protocol["assumed"] is False
    assert converted.protocol["sticky_actions"] == 0.0  # a v4 id says it: no sticky actions


def test_uint8_onnx_input_is_fed_raw(tmp_path, pong_states):
    torch.manual_seed(0)
    net = Uint8CNN().eval()
    path = _onnx(tmp_path, net, torch.zeros(2, 4, 84, 84, dtype=torch.uint8))
    converted = convert_onnx(path, env_spaces(PONG), ImportOptions(PONG, output_kind="q", trained_env="ALE/Pong-v5"))
    assert converted.network["input_dtype"] == "uint8"
    assert "sticky_actions" not in converted.protocol  # only a v4 id tells the dynamics
    with torch.inference_mode():
        theirs = net(torch.from_numpy(pong_states)).numpy()
    assert np.abs(_run(converted, pong_states) - theirs).max() <= 1e-4


@pytest.mark.parametrize("convert", [convert_onnx, convert_torchscript])
def test_missing_output_kind_is_refused(tmp_path, convert):
    path = _onnx(tmp_path, _mlp(), torch.zeros(2, 4))
    with pytest.raises(CheckpointError, match="--output-kind"):
        convert(path, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1"))


@pytest.mark.parametrize("convert, suffix", [(convert_onnx, ".onnx"), (convert_torchscript, ".pt")])
def test_corrupt_file_is_refused(tmp_path, convert, suffix):
    good = _onnx(tmp_path, _mlp(), torch.zeros(2, 4)) if suffix == ".onnx" else _torchscript(tmp_path, _mlp())
    for number, payload in enumerate([good.read_bytes()[: len(good.read_bytes()) // 2], b"not a model" * 9]):
        broken = tmp_path / f"teacher{number}{suffix}"
        broken.write_bytes(payload)
        with pytest.raises(CheckpointError, match="not an ONNX model" if suffix == ".onnx" else "not a TorchScript"):
            convert(broken, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1", output_kind="q"))


def test_wrong_output_size_is_refused(tmp_path):
    path = _onnx(tmp_path, _mlp(num_actions=3), torch.zeros(2, 4))
    with pytest.raises(CheckpointError, match=r"output has shape \(4, 3\).*--env CartPole-v1"):
        convert_onnx(path, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1", output_kind="q"))
    scripted = _torchscript(tmp_path, _mlp(num_actions=3))
    with pytest.raises(CheckpointError, match=r"output has shape \(4, 3\)"):
        convert_torchscript(scripted, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1", output_kind="logits"))


def test_wrong_input_is_refused(tmp_path):
    path = _onnx(tmp_path, _mlp(), torch.zeros(2, 4))
    with pytest.raises(CheckpointError, match="does not run on --env Acrobot-v1"):
        convert_onnx(path, env_spaces("Acrobot-v1"), ImportOptions("Acrobot-v1", output_kind="q"))
