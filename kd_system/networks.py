"""Policy networks built from a JSON-able spec, so checkpoints never carry code.

A spec is a dict such as ``{"kind": "mlp", "hidden": [256, 256], "activation": "relu"}``.
New kinds (the Atari CNNs) register a builder in ``_BUILDERS``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .errors import CheckpointError

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """Linear layers with activations between them; outputs one value per action."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        sizes = [obs_dim, *hidden]
        layers: list[nn.Module] = []
        for size_in, size_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(size_in, size_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], num_actions))
        self.layers = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.layers(obs.flatten(1).float())


def _build_mlp(spec: dict[str, Any], obs_shape: tuple[int, ...], num_actions: int) -> nn.Module:
    obs_dim = 1
    for dim in obs_shape:
        obs_dim *= int(dim)
    hidden = [int(h) for h in spec.get("hidden", [])]
    activation = spec.get("activation", "relu")
    if activation not in _ACTIVATIONS:
        raise CheckpointError(
            f"network.activation {activation!r} is unknown; use one of {sorted(_ACTIVATIONS)}"
        )
    if any(h <= 0 for h in hidden):
        raise CheckpointError(f"network.hidden {hidden} must list positive layer widths")
    return MLP(obs_dim, num_actions, hidden, activation)


_BUILDERS: dict[str, Callable[[dict[str, Any], tuple[int, ...], int], nn.Module]] = {
    "mlp": _build_mlp,
}


def build_network(spec: dict[str, Any], obs_shape: tuple[int, ...], num_actions: int) -> nn.Module:
    kind = spec.get("kind")
    if kind not in _BUILDERS:
        raise CheckpointError(f"network.kind {kind!r} is unknown; use one of {sorted(_BUILDERS)}")
    return _BUILDERS[kind](spec, tuple(obs_shape), int(num_actions))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class SharedTrunkMLPs(nn.Module):
    """One MLP per task whose hidden-to-hidden layers are the same modules for every task.

    Task i's network is a plain :class:`MLP` (its own input layer, the shared trunk, its own
    output head), so each task's student saves and loads as an ordinary ``mlp`` checkpoint.
    Tasks may differ in observation size and action count, as classic-control tasks do.
    """

    def __init__(self, tasks: list[tuple[int, int]], hidden: list[int], activation: str = "relu"):
        super().__init__()
        if len(hidden) < 2:
            raise CheckpointError("student.hidden needs at least two layers for a multi-task student "
                                  "(the layers between them are what the tasks share)")
        self.views = nn.ModuleList(MLP(obs_dim, num_actions, hidden, activation) for obs_dim, num_actions in tasks)
        first = self.views[0].layers
        trunk = range(2, 2 * len(hidden) - 1)  # after the input Linear+activation, before the head
        for view in self.views[1:]:
            for index in trunk:
                view.layers[index] = first[index]

    def forward(self, obs: torch.Tensor, task: int) -> torch.Tensor:
        return self.views[task](obs)
