"""CleanRL state dicts: the four supported script layouts convert with parity, and bad files are refused."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kd_system.envs.make import env_spaces
from kd_system.errors import CheckpointError
from kd_system.policies.files import PolicySpec, module_from_bytes
from kd_system.teachers.imports.cleanrl import convert
from kd_system.teachers.imports.records import ImportOptions
from kd_system.teachers.imports.states import env_states

PONG = "ALE/Pong-v5"


# The four networks as CleanRL's scripts define them (module names, layer order, activations, forward).
class DqnQNetwork(nn.Module):  # dqn.py
    def __init__(self, obs_dim: int, num_actions: int, hidden: tuple[int, int] = (120, 84)):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(obs_dim, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]),
                                     nn.ReLU(), nn.Linear(hidden[1], num_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def _nature_trunk() -> list[nn.Module]:
    return [nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 512), nn.ReLU()]


class DqnAtariQNetwork(nn.Module):  # dqn_atari.py
    def __init__(self, num_actions: int):
        super().__init__()
        self.network = nn.Sequential(*_nature_trunk(), nn.Linear(512, num_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x / 255.0)


class PpoAgent(nn.Module):  # ppo.py; the logits are actor(x)
    def __init__(self, obs_dim: int, num_actions: int):
        super().__init__()
        self.critic = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
        self.actor = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                                   nn.Linear(64, num_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actor(x)


class PpoAtariAgent(nn.Module):  # ppo_atari.py; the logits are actor(network(x / 255.0))
    def __init__(self, num_actions: int):
        super().__init__()
        self.network = nn.Sequential(*_nature_trunk())
        self.actor = nn.Linear(512, num_actions)
        self.critic = nn.Linear(512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actor(self.network(x / 255.0))


class Evil:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def pong_states() -> np.ndarray:
    return env_states(PONG, 200)


def _save(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "agent.cleanrl_model"
    torch.save(payload, path)
    return path


def _import(path: Path, env_id: str):
    spaces = env_spaces(env_id)
    converted = convert(path, spaces, ImportOptions(env_id))
    spec = PolicySpec("teacher", env_id, converted.obs_shape, spaces.obs_dtype, converted.num_actions,
                      converted.output_kind, converted.network)
    return converted, module_from_bytes(spec, converted.weights, str(path)).eval()


def _outputs(net: nn.Module, states: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.as_tensor(states, dtype=torch.float32)).numpy()


@pytest.mark.parametrize("make, kind, algorithm", [
    (lambda: DqnQNetwork(4, 2), "q", "DQN"),
    (lambda: DqnQNetwork(4, 2, hidden=(64, 32)), "q", "DQN"),  # widths are read from the shapes
    (lambda: PpoAgent(4, 2), "logits", "PPO"),
])
def test_cartpole_layouts_convert_with_parity(tmp_path, make, kind, algorithm):
    torch.manual_seed(0)
    net = make().eval()
    converted, ours = _import(_save(tmp_path, net.state_dict()), "CartPole-v1")
    states = env_states("CartPole-v1", 1000)
    theirs = _outputs(net, states)
    assert np.abs(_outputs(ours, states) - theirs).max() <= 1e-5
    assert np.abs(converted.reference(states) - theirs).max() <= 1e-5
    assert (converted.output_kind, converted.algorithm, converted.library) == (kind, algorithm, "cleanrl")
    assert converted.protocol == {} and converted.num_actions == 2
    policy_params = sum(p.numel() for name, p in net.named_parameters() if not name.startswith("critic"))
    assert converted.source_params == policy_params


@pytest.mark.parametrize("make, kind", [(lambda: DqnAtariQNetwork(6), "q"), (lambda: PpoAtariAgent(6), "logits")])
def test_atari_layouts_convert_with_parity(tmp_path, pong_states, make, kind):
    torch.manual_seed(0)
    net = make().eval()
    converted, ours = _import(_save(tmp_path, net.state_dict()), PONG)
    theirs, mine = _outputs(net, pong_states), _outputs(ours, pong_states)
    assert np.abs(mine - theirs).max() <= 1e-5
    assert (mine.argmax(1) == theirs.argmax(1)).all()
    assert np.abs(converted.reference(pong_states) - theirs).max() <= 1e-5
    assert converted.output_kind == kind and converted.network["strides"] == [4, 2, 1]
    assert converted.network.get("preset") == "nature" and converted.obs_shape == (4, 84, 84)
    assert converted.protocol["obs_layout"] == "chw" and converted.protocol["assumed"] is True


def test_wrong_env_names_the_layer(tmp_path):
    path = _save(tmp_path, DqnQNetwork(4, 2).state_dict())
    with pytest.raises(CheckpointError, match=r"network\.0\.weight.*Acrobot-v1"):
        convert(path, env_spaces("Acrobot-v1"), ImportOptions("Acrobot-v1"))
    wrong_actions = _save(tmp_path, PpoAgent(4, 3).state_dict())
    with pytest.raises(CheckpointError, match=r"actor\.4\.weight outputs 3 actions.*CartPole-v1 has 2"):
        convert(wrong_actions, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1"))
    atari = _save(tmp_path, DqnAtariQNetwork(6).state_dict())
    with pytest.raises(CheckpointError, match=r"network\.0\.weight is a Conv2d.*CartPole-v1"):
        convert(atari, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1"))


def test_atari_layout_checks(tmp_path):
    state = DqnAtariQNetwork(6).state_dict()
    state["network.0.weight"] = torch.zeros(32, 4, 5, 5)
    with pytest.raises(CheckpointError, match=r"network\.0\.weight has kernel \[5, 5\]"):
        convert(_save(tmp_path, state), env_spaces(PONG), ImportOptions(PONG))
    state = DqnAtariQNetwork(6).state_dict()
    state["network.7.weight"] = torch.zeros(512, 3000)
    with pytest.raises(CheckpointError, match=r"network\.7\.weight takes 3000 inputs.*3136"):
        convert(_save(tmp_path, state), env_spaces(PONG), ImportOptions(PONG))


@pytest.mark.parametrize("state, key", [
    ({"fc1.weight": torch.zeros(8, 4), "fc1.bias": torch.zeros(8)}, "fc1.weight"),
    ({**DqnQNetwork(4, 2).state_dict(), "network.5.weight": torch.zeros(2, 2)}, r"network\.5\.weight"),
    ({**PpoAtariAgent(6).state_dict(), "network.9.weight": torch.zeros(6, 512)}, r"network\.9\.weight"),
])
def test_unknown_keys_are_refused(tmp_path, state, key):
    with pytest.raises(CheckpointError, match=rf"{key}.*dqn\.py, dqn_atari\.py, ppo\.py and ppo_atari\.py"):
        convert(_save(tmp_path, state), env_spaces("CartPole-v1"), ImportOptions("CartPole-v1"))


def test_not_a_state_dict_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a state dict"):
        convert(_save(tmp_path, {"global_step": 3}), env_spaces("CartPole-v1"), ImportOptions("CartPole-v1"))
    garbage = tmp_path / "garbage.cleanrl_model"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(CheckpointError, match="torch.load"):
        convert(garbage, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer, message", [
    ("torch", "holds Python objects"), ("pickle-2", "holds Python objects"),
    ("pickle-5", "torch.load can read"),  # the weights_only unpickler stops at the protocol's FRAME opcode
])
def test_malicious_pickle_is_refused_unrun(tmp_path, writer, message):
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(Evil(control)))
    assert control.exists()  # the payload does run when unpickled in full
    marker = tmp_path / "marker"
    path = tmp_path / "evil.cleanrl_model"
    payload = {"network.0.weight": Evil(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=int(writer[-1]))
    with pytest.raises(CheckpointError, match=message):
        convert(path, env_spaces("CartPole-v1"), ImportOptions("CartPole-v1"))
    assert not marker.exists()
