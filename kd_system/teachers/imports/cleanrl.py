"""CleanRL teachers: the ``torch.save(model.state_dict(), "….cleanrl_model")`` files its scripts write.
A state dict holds key names and tensors only, so the architecture is read from them: the MLPs of
dqn.py (ReLU) and ppo.py (Tanh), the Nature CNN of dqn_atari.py and ppo_atari.py. Those Atari scripts
stack with gymnasium's FrameStack(4) over GrayScaleObservation (no channel axis) 84x84 frames: (4, 84,
84), oldest first, channels first, as our pipeline's, and divide by 255 in forward as our ConvNet
does; so the weights map over as they are, with no transpose."""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from kd_system.envs.make import EnvSpaces
from kd_system.errors import CheckpointError
from kd_system.policies.files import module_to_bytes
from kd_system.policies.networks import build_network, cnn_spec
from kd_system.policies.presets import CNN_PRESETS
from kd_system.teachers.imports.protocol import atari_protocol
from kd_system.teachers.imports.records import Converted, ImportOptions

State = dict[str, torch.Tensor]
SUPPORTED = ("supported: state dicts of CleanRL's dqn.py, dqn_atari.py, ppo.py and ppo_atari.py; export any other "
             "network to TorchScript or ONNX and import that with --output-kind")
# A state dict does not record strides: the only conv stack accepted is the Nature one, whose kernels
# 8, 4, 3 go with strides 4, 2, 1 in every CleanRL Atari script.
NATURE_KERNELS, NATURE_STRIDES = (8, 4, 3), (4, 2, 1)
CONVS, FC = ("network.0", "network.2", "network.4"), "network.7"


def _load_state(source: Path) -> State:
    try:  # weights_only: tensors and containers only; a file that needs more is refused, never fully unpickled
        state = torch.load(source, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch.load raises UnpicklingError, RuntimeError, EOFError... for what it cannot read
        text = str(exc).split("WeightsUnpickler error:")[-1].strip()
        first = (text.splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        if isinstance(exc, pickle.UnpicklingError) and "global" in first.lower():
            raise CheckpointError(f"{source} holds Python objects besides tensors ({first}); refused, as it is loaded "
                                  "weights_only: save it with torch.save(model.state_dict(), path)") from None
        raise CheckpointError(f"{source} is not a file torch.load can read ({first}); pass CleanRL's "
                              ".cleanrl_model (torch.save(model.state_dict(), path))") from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise CheckpointError(f"{source} is not a state dict (layer names to tensors); save the network with "
                              "torch.save(model.state_dict(), path) as CleanRL does")
    return state


def _linears(state: State, prefix: str) -> list[str]:
    """CleanRL's nn.Sequential of Linear layers with an activation between them: indices 0, 2, 4..."""
    count = sum(1 for key in state if re.fullmatch(rf"{prefix}\.\d+\.weight", key))
    return [f"{prefix}.{2 * i}" for i in range(count)]


def _script_of(state: State) -> tuple[str, list[str], list[str]]:
    """The CleanRL script, the layers of its policy path in order, and all its layers (critic included)."""
    conv = "network.0.weight" in state and state["network.0.weight"].dim() == 4
    actor = any(key.startswith("actor.") for key in state)
    if conv:
        policy = [*CONVS, FC, "actor" if actor else "network.9"]
        return ("ppo_atari.py", policy, [*policy, "critic"]) if actor else ("dqn_atari.py", policy, policy)
    if actor:
        return "ppo.py", _linears(state, "actor"), _linears(state, "actor") + _linears(state, "critic")
    return "dqn.py", _linears(state, "network"), _linears(state, "network")


def _check_keys(state: State, source: Path, script: str, layers: list[str]) -> None:
    expected = [f"{layer}.{part}" for layer in layers for part in ("weight", "bias")]
    unexpected = [key for key in state if key not in expected] or ([] if layers else list(state))
    missing = [key for key in expected if key not in state]
    if unexpected or missing:
        problem = f"key {unexpected[0]} is not in" if unexpected else f"key {missing[0]} is missing from"
        raise CheckpointError(f"{source}: {problem} the layout of CleanRL's {script}; {SUPPORTED}")
    for key in expected:
        if not state[key].is_floating_point():
            raise CheckpointError(f"{source}: layer {key} holds {state[key].dtype} values, not floating point weights")


def _check_shapes(state: State, source: Path, env_id: str, spaces: EnvSpaces, layers: list[str],
                  policy: list[str]) -> list[int]:
    """Layers are Linear/Conv2d, widths chain, the input fits --env, the output has its actions; the strides."""
    weights = [state[f"{layer}.weight"] for layer in policy]
    atari = policy[0] == CONVS[0] and weights[0].dim() == 4
    for layer in layers:
        weight, bias, conv = state[f"{layer}.weight"], state[f"{layer}.bias"], atari and layer in CONVS
        if weight.dim() != (4 if conv else 2) or bias.shape != weight.shape[:1]:
            raise CheckpointError(f"{source}: layer {layer} has weight {list(weight.shape)} and bias "
                                  f"{list(bias.shape)}, not the {'Conv2d' if conv else 'Linear'} of CleanRL's layout")
    if atari and not spaces.pixels:
        raise CheckpointError(f"{source}: layer network.0.weight is a Conv2d (a CleanRL Atari script) but --env "
                              f"{env_id} gives flat {spaces.obs_shape} observations; pass its Atari env")
    strides: list[int] = []
    flat = int(np.prod(spaces.obs_shape))  # what the first Linear takes: the observation, or the convs flattened
    if atari:
        height, width = spaces.obs_shape[1:]
        for layer, weight, kernel, stride in zip(CONVS, weights, NATURE_KERNELS, NATURE_STRIDES):
            if tuple(weight.shape[2:]) != (kernel, kernel):
                raise CheckpointError(f"{source}: layer {layer}.weight has kernel {list(weight.shape[2:])}; only "
                                      "the Nature kernels 8, 4, 3 can be imported (a state dict has no strides)")
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            strides.append(stride)
        flat = int(weights[len(CONVS) - 1].shape[0]) * height * width
    first_fc = len(strides)
    for index, (layer, weight) in enumerate(zip(policy, weights)):
        want = (spaces.obs_shape[0] if index == 0 and atari else flat if index == first_fc
                else int(weights[index - 1].shape[0]))
        if int(weight.shape[1]) != want:
            where = (f"--env {env_id}'s {spaces.obs_shape} observations have" if index == 0 else
                     f"the Nature convs (strides 4, 2, 1) on {spaces.obs_shape} give" if index == first_fc
                     else f"layer {policy[index - 1]} gives")
            fix = "pass the env the teacher was trained on" if index in (0, first_fc) else "the file is corrupt"
            raise CheckpointError(f"{source}: layer {layer}.weight takes {int(weight.shape[1])} inputs but "
                                  f"{where} {want}; {fix}")
    if int(weights[-1].shape[0]) != spaces.num_actions:
        raise CheckpointError(f"{source}: layer {policy[-1]}.weight outputs {int(weights[-1].shape[0])} actions but "
                              f"--env {env_id} has {spaces.num_actions}; pass the env the teacher was trained on")
    return strides


def _linear(state: State, layer: str) -> nn.Linear:
    return nn.Linear(int(state[f"{layer}.weight"].shape[1]), int(state[f"{layer}.weight"].shape[0]))


def _mlp(state: State, layers: list[str], activation: Callable[[], nn.Module]) -> nn.Sequential:
    """Linear layers keyed 0, 2, 4... with an activation between them, as CleanRL's nn.Sequential."""
    modules = [module for layer in layers for module in (_linear(state, layer), activation())]
    return nn.Sequential(*modules[:-1])


def _reference(script: str, state: State, strides: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    """CleanRL's module rebuilt from the shapes, keyed as CleanRL's, loaded strictly, forward as CleanRL's."""
    activation = nn.Tanh if script == "ppo.py" else nn.ReLU
    if not strides:
        parts: dict[str, nn.Module] = {prefix: _mlp(state, _linears(state, prefix), activation)
                                       for prefix in ("network", "actor", "critic") if _linears(state, prefix)}
    else:  # the Atari scripts: Nature convs, Flatten (index 6), Linear(3136, 512) at 7, ReLU, [Q head at 9]
        trunk: list[nn.Module] = []
        for layer, stride in zip(CONVS, strides):
            out_c, in_c, kernel, _ = state[f"{layer}.weight"].shape
            trunk += [nn.Conv2d(int(in_c), int(out_c), int(kernel), stride=stride), nn.ReLU()]
        trunk += [nn.Flatten(), _linear(state, FC), nn.ReLU()]
        trunk += [_linear(state, "network.9")] if script == "dqn_atari.py" else []
        parts = {"network": nn.Sequential(*trunk)}  # ppo_atari's actor and critic heads are bare Linears
        parts |= {head: _linear(state, head) for head in ("actor", "critic") if script == "ppo_atari.py"}
    module = nn.ModuleDict(parts).eval()
    module.load_state_dict(state, strict=True)

    @torch.inference_mode()
    def forward(obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)  # CleanRL feeds torch.Tensor(obs): float32
        if "network" in module:  # the Atari scripts: network(x / 255.0); dqn.py: network(x)
            x = module["network"](x / 255.0 if strides else x)
        return (module["actor"](x) if "actor" in module else x).numpy()  # the PPO Agents' logits: actor(...)

    return forward


def _ours(script: str, state: State, policy: list[str], strides: list[int],
          spaces: EnvSpaces) -> tuple[dict[str, Any], nn.Module]:
    """Our MLP or ConvNet: its Sequential ``layers`` has the same indices as CleanRL's, heads at the end."""
    widths = [int(state[f"{layer}.weight"].shape[0]) for layer in policy]
    if strides:
        fields = {"channels": widths[:3], "kernels": list(NATURE_KERNELS), "strides": strides, "fc": widths[3:-1]}
        nature = all(CNN_PRESETS["nature"][key] == value for key, value in fields.items())
        spec = {**(cnn_spec("nature") if nature else {"kind": "cnn", **fields, "activation": "relu"}),
                "input_scale": 1 / 255}
        indices = [0, 2, 4, 7, 9]
    else:
        spec = {"kind": "mlp", "hidden": widths[:-1], "activation": "relu" if script == "dqn.py" else "tanh"}
        indices = [2 * i for i in range(len(policy))]
    module = build_network(spec, spaces.obs_shape, widths[-1])
    mapped = {f"layers.{index}.{part}": state[f"{layer}.{part}"]
              for layer, index in zip(policy, indices) for part in ("weight", "bias")}
    module.load_state_dict(mapped, strict=True)
    return spec, module.eval()


def convert(source: Path, spaces: EnvSpaces, options: ImportOptions) -> Converted:
    state = _load_state(source)
    script, policy, layers = _script_of(state)
    _check_keys(state, source, script, layers)
    strides = _check_shapes(state, source, options.env_id, spaces, layers, policy)
    spec, ours = _ours(script, state, policy, strides, spaces)
    dqn = script.startswith("dqn")
    notes = ["library version unknown: a CleanRL state dict does not record it"]
    notes += [] if dqn else ["critic.* dropped: a teacher's labels come from the actor's logits"]
    notes += ["strides 4, 2, 1 inferred from the Nature kernels 8, 4, 3 (not in a state dict)"] if strides else []
    return Converted(
        network=spec, weights=module_to_bytes(ours), obs_shape=tuple(spaces.obs_shape),
        num_actions=int(state[f"{policy[-1]}.weight"].shape[0]), output_kind="q" if dqn else "logits",
        library="cleanrl", library_version="unknown", algorithm="DQN" if dqn else "PPO",
        source_params=sum(state[f"{layer}.{part}"].numel() for layer in policy for part in ("weight", "bias")),
        reference=_reference(script, state, strides),
        reference_name=f"CleanRL {script} layout rebuilt in torch (CleanRL is not a library)",
        protocol=atari_protocol("CleanRL", "chw", options.trained_env) if spaces.pixels else {},
        notes=tuple(notes))
