"""Policy networks built from a JSON-able spec, so checkpoints never carry code.

A spec is a dict such as ``{"kind": "mlp", "hidden": [256, 256], "activation": "relu"}`` (``hidden: []``
is a linear policy, one ``Linear`` layer), ``{"kind": "cnn", "preset": "rusu-7"}`` (Atari frame stacks;
see ``CNN_PRESETS``) or ``{"kind": "ensemble", ...}`` (several teachers averaged into one; see ``Ensemble``).
New kinds register a builder in ``_BUILDERS``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from kd_system.errors import CheckpointError
from kd_system.policies.presets import CNN_PRESETS

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """Linear layers with activations between them; outputs one value per action.

    ``obs_norm`` (``{"clip": 10.0, "epsilon": 1e-8}``) standardises observations first with the
    running mean and variance held in the ``obs_mean``/``obs_var`` buffers: a teacher trained
    behind Stable-Baselines3's VecNormalize carries its statistics inside the network."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: list[int], activation: str = "relu",
                 obs_norm: dict[str, float] | None = None):
        super().__init__()
        sizes = [obs_dim, *hidden]
        layers: list[nn.Module] = []
        for size_in, size_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(size_in, size_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], num_actions))
        self.layers = nn.Sequential(*layers)
        self.obs_norm = dict(obs_norm) if obs_norm else None
        if self.obs_norm is not None:
            self.register_buffer("obs_mean", torch.zeros(obs_dim))
            self.register_buffer("obs_var", torch.ones(obs_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.flatten(1).float()
        if self.obs_norm is not None:
            clip = float(self.obs_norm["clip"])
            x = ((x - self.obs_mean) / torch.sqrt(self.obs_var + float(self.obs_norm["epsilon"]))).clamp(-clip, clip)
        return self.layers(x)


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
    obs_norm = spec.get("obs_norm")
    if obs_norm is not None and not (isinstance(obs_norm, dict) and {"clip", "epsilon"} <= set(obs_norm)):
        raise CheckpointError(f"network.obs_norm {obs_norm!r} must be a mapping with clip and epsilon")
    return MLP(obs_dim, num_actions, hidden, activation, obs_norm)


class ConvNet(nn.Module):
    """Conv layers, then fully connected layers, then one output per action, ReLU between them.

    Inputs are frames in pixel units (0..255), uint8 or float: ``forward`` scales by
    ``input_scale`` (1/255 unless an imported teacher was trained on other units), so uint8
    stacks travel from the env through the store to the learner's device at 1 byte a pixel.
    """

    def __init__(self, obs_shape: tuple[int, ...], num_actions: int, channels: list[int], kernels: list[int],
                 strides: list[int], fc: list[int], activation: str = "relu", input_scale: float = 1 / 255):
        super().__init__()
        self.input_scale = float(input_scale)
        layers: list[nn.Module] = []
        channels_in, height, width = obs_shape
        for channels_out, kernel, stride in zip(channels, kernels, strides):
            layers += [nn.Conv2d(channels_in, channels_out, kernel, stride), _ACTIVATIONS[activation]()]
            channels_in, height, width = channels_out, (height - kernel) // stride + 1, (width - kernel) // stride + 1
        layers.append(nn.Flatten(1))
        sizes = [channels_in * height * width, *fc]
        for size_in, size_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(size_in, size_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], num_actions))
        self.layers = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.input_scale == 1 / 255:
            return self.layers(obs.float() / 255.0)  # division, as the libraries we import from do: bitwise parity
        return self.layers(obs.float() * self.input_scale)


_CNN_FIELDS = ("channels", "kernels", "strides", "fc")


def cnn_spec(preset: str, activation: str = "relu") -> dict[str, Any]:
    """The full, self-describing spec of a preset: checkpoints keep the layer sizes, not just a name."""
    if preset not in CNN_PRESETS:
        raise CheckpointError(f"network.preset {preset!r} is unknown; use one of {sorted(CNN_PRESETS)}")
    return {"kind": "cnn", "preset": preset, **CNN_PRESETS[preset], "activation": activation}


def _build_cnn(spec: dict[str, Any], obs_shape: tuple[int, ...], num_actions: int) -> nn.Module:
    """``{"kind": "cnn", "preset": "rusu-7"}``, or explicit channels/kernels/strides/fc lists,
    which override the preset's where both are given."""
    fields = dict(cnn_spec(spec["preset"])) if "preset" in spec else {}
    fields.update({key: spec[key] for key in _CNN_FIELDS if key in spec})
    missing = [key for key in _CNN_FIELDS if key not in fields]
    if missing:
        raise CheckpointError(f"network.{missing[0]} is missing; give a network.preset "
                              f"({', '.join(sorted(CNN_PRESETS))}) or all of {', '.join(_CNN_FIELDS)}")
    channels, kernels, strides, fc = ([int(v) for v in fields[key]] for key in _CNN_FIELDS)
    activation = spec.get("activation", "relu")
    if activation not in _ACTIVATIONS:
        raise CheckpointError(f"network.activation {activation!r} is unknown; use one of {sorted(_ACTIVATIONS)}")
    if not len(channels) == len(kernels) == len(strides) or not channels:
        raise CheckpointError(f"network.channels, kernels and strides have lengths {len(channels)}, {len(kernels)}, "
                              f"{len(strides)}; give one kernel and one stride per conv layer (at least one)")
    if min(channels + kernels + strides + (fc or [1])) <= 0:
        raise CheckpointError("network.channels, kernels, strides and fc must hold positive integers")
    if len(obs_shape) != 3:
        raise CheckpointError(f"network.kind 'cnn' needs (channels, height, width) observations, not {obs_shape}; "
                              "use kind 'mlp' for flat observations")
    height, width = obs_shape[1:]
    for index, (kernel, stride) in enumerate(zip(kernels, strides)):
        height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        if height < 1 or width < 1:
            raise CheckpointError(f"network.kernels[{index}] {kernel} does not fit the {obs_shape} input after "
                                  f"{index} conv layers; use smaller kernels or strides")
    return ConvNet(obs_shape, num_actions, channels, kernels, strides, fc, activation,
                   float(spec.get("input_scale", 1 / 255)))


class Ensemble(nn.Module):
    """Several teachers as one policy network: ``temperature * log sum_k w_k softmax(out_k / tau_k)``.

    Its outputs are logits whose softmax at ``temperature`` is the weighted mean of the members'
    tempered policies, so a learner, evaluator or lookahead that reads ``logits`` at that temperature
    sees exactly the mean policy. Computed as a logsumexp of log-probabilities: a Q-value member at
    tau = 0.01 has log-probabilities of -1e3 and below, whose exp would underflow in a plain mean."""

    def __init__(self, members: list[nn.Module], temperatures: list[float], weights: list[float], temperature: float):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperatures = [float(t) for t in temperatures]
        self.temperature = float(temperature)
        # Not persistent: the spec holds the weights, so the file cannot disagree with it.
        self.register_buffer("log_weights", torch.tensor(weights, dtype=torch.float32).log(), persistent=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        log_policies = torch.stack([torch.log_softmax(member(obs).float() / tau, dim=-1)
                                    for member, tau in zip(self.members, self.temperatures)])  # (K, batch, actions)
        return self.temperature * torch.logsumexp(log_policies + self.log_weights[:, None, None], dim=0)


def _build_ensemble(spec: dict[str, Any], obs_shape: tuple[int, ...], num_actions: int) -> nn.Module:
    """``{"kind": "ensemble", "members": [{"network": ..., "temperature": ...}, ...], "weights": [...],
    "temperature": ...}``; teachers/ensemble.py writes it (member sources and sizes ride along)."""
    members, weights = spec.get("members"), spec.get("weights")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise CheckpointError("network.members must be a non-empty list of {network, temperature} mappings")
    numbers = isinstance(weights, list) and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
    if not numbers or len(weights) != len(members) or min(weights) < 0 or not sum(weights) > 0:
        raise CheckpointError(f"network.weights {weights!r} must hold one non-negative weight per member, summing above 0")
    temperatures = [float(m.get("temperature", 0)) for m in members]
    if min(temperatures + [float(spec.get("temperature", 0))]) <= 0:
        raise CheckpointError("network.temperature and every member's temperature must be > 0")
    if any(not isinstance(m.get("network"), dict) or m["network"].get("kind") == "ensemble" for m in members):
        raise CheckpointError("network.members[].network must be a network spec other than an ensemble")
    modules = [build_network(m["network"], obs_shape, num_actions) for m in members]
    total = float(sum(weights))
    return Ensemble(modules, temperatures, [float(w) / total for w in weights], float(spec["temperature"]))


_BUILDERS: dict[str, Callable[[dict[str, Any], tuple[int, ...], int], nn.Module]] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "ensemble": _build_ensemble,
}


def build_network(spec: dict[str, Any], obs_shape: tuple[int, ...], num_actions: int) -> nn.Module:
    kind = spec.get("kind")
    if kind not in _BUILDERS:
        raise CheckpointError(f"network.kind {kind!r} is unknown; use one of {sorted(_BUILDERS)}")
    return _BUILDERS[kind](spec, tuple(obs_shape), int(num_actions))


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters; an opaque ONNX teacher (policies/opaque.py) reports its initializers'."""
    override = getattr(module, "opaque_num_params", None)
    return int(override) if override else sum(p.numel() for p in module.parameters())


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
