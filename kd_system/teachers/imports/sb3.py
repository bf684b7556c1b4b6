"""Stable-Baselines3 and sb3-contrib zips (``model.save(...)``) to the project's policy format.

DQN and QR-DQN give Q-values (QR-DQN's mean over quantiles, folded into the last layer); PPO, A2C
and TRPO give the policy path's logits (features extractor, ``mlp_extractor.policy_net``,
``action_net``; the value path is dropped). The zip is read without unpickling (``sb3_zip``), and
the reference forward is SB3's own policy class built from what was read, loaded with the zip's
state dict, so a file is never trusted to run code. ``vecnormalize.pkl`` is a pickle: it is loaded
only with ``--trust-pickle``."""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kd_system.envs.make import EnvSpaces
from kd_system.errors import CheckpointError
from kd_system.policies.files import module_to_bytes
from kd_system.policies.networks import build_network
from kd_system.teachers.imports.protocol import atari_protocol
from kd_system.teachers.imports.records import COMPARE_LOG_PROBS, COMPARE_OUTPUTS, Converted, ImportOptions
from kd_system.teachers.imports.sb3_arch import (ACTIVATIONS, NATURE_STRIDES, Architecture, Layer,
                                                 read_architecture, sequential)
from kd_system.teachers.imports.sb3_zip import SB3Zip, open_zip

Reference = Callable[[np.ndarray], np.ndarray]
_TORCH_NAMES = {ours: theirs for theirs, ours in ACTIVATIONS.items()}


def _fold_quantiles(head: Layer, num_actions: int) -> tuple[Layer, int]:
    """QR-DQN's head outputs quantile q of action a at row q * num_actions + a (its forward views the
    output as (batch, quantiles, actions)); averaging those rows is exactly the mean over quantiles."""
    name, weight, bias = head
    if weight.shape[0] % num_actions:
        raise CheckpointError(f"policy.pth {name}.weight has {weight.shape[0]} rows, not a multiple of the "
                              f"{num_actions} actions; the file is not a QR-DQN quantile head")
    quantiles = weight.shape[0] // num_actions
    folded = (weight.reshape(quantiles, num_actions, -1).mean(0), bias.reshape(quantiles, num_actions).mean(0))
    return (name, *folded), quantiles


def _network_spec(arch: Architecture, obs_norm: dict[str, float] | None) -> dict[str, Any]:
    hidden = [int(weight.shape[0]) for _, weight, _ in arch.hidden]
    if not arch.features:
        spec: dict[str, Any] = {"kind": "mlp", "hidden": hidden, "activation": arch.activation}
        return spec | ({"obs_norm": obs_norm} if obs_norm else {})
    convs, linear = arch.features[:3], arch.features[3]
    spec = {"kind": "cnn", "channels": [int(w.shape[0]) for _, w, _ in convs], "strides": NATURE_STRIDES,
            "kernels": [int(w.shape[-1]) for _, w, _ in convs], "fc": [int(linear[1].shape[0]), *hidden],
            "activation": "relu"}
    return spec | ({"input_scale": arch.pixel_scale} if arch.pixel_scale != 1 / 255 else {})


def _fill(module: torch.nn.Module, layers: list[Layer], source: Path) -> None:
    """Copy the source layers, in forward order, onto our network's weighted layers."""
    ours = [layer for layer in module.layers if hasattr(layer, "weight")]
    if len(ours) != len(layers):
        raise CheckpointError(f"{source}: read {len(layers)} layers but built {len(ours)}; please report it")
    with torch.no_grad():
        for layer, (name, weight, bias) in zip(ours, layers):
            if tuple(layer.weight.shape) != tuple(weight.shape):
                raise CheckpointError(f"{source}: policy.pth {name}.weight has shape {list(weight.shape)}, but the "
                                      f"layers before it give {list(layer.weight.shape)}; the file is inconsistent")
            layer.weight.copy_(weight.float())
            layer.bias.copy_(bias.float())


def _vecnormalize(options: ImportOptions, arch: Architecture) -> tuple[Any, dict[str, float] | None]:
    """The VecNormalize object (a pickle, so only with --trust-pickle) and the MLP's obs_norm from it."""
    path = options.vecnormalize
    if path is None:
        return None, None
    if not options.trust_pickle:
        raise CheckpointError(f"{path} is a pickle (VecNormalize.save) and loading it can run code; pass "
                              "--trust-pickle if you trust whoever made it")
    try:
        with open(path, "rb") as handle:
            vecnorm = pickle.load(handle)  # the user opted in with --trust-pickle
        mean, var = np.asarray(vecnorm.obs_rms.mean), np.asarray(vecnorm.obs_rms.var)
        norm = {"clip": float(vecnorm.clip_obs), "epsilon": float(vecnorm.epsilon)}
        enabled = bool(vecnorm.norm_obs)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a VecNormalize.save() file ({exc}); pass the vecnormalize.pkl "
                              "saved with the model") from None
    if enabled and arch.features:
        raise CheckpointError(f"{path}: obs_rms normalises image observations; kd_system imports VecNormalize "
                              "statistics for MlpPolicy models only")
    if enabled and mean.size != int(np.prod(arch.obs_shape)):
        raise CheckpointError(f"{path}: obs_rms.mean has {mean.size} values but the model takes "
                              f"{list(arch.obs_shape)} observations; pass the statistics saved with this model")
    return vecnorm, (norm | {"mean": mean, "var": var}) if enabled else None


def _build(arch: Architecture, obs_norm: dict[str, Any] | None, source: Path) -> tuple[dict[str, Any], bytes, int]:
    head, quantiles = _fold_quantiles(arch.head, arch.num_actions) if arch.family == "qrdqn" else (arch.head, 0)
    spec = _network_spec(arch, {k: v for k, v in obs_norm.items() if k in ("clip", "epsilon")} if obs_norm else None)
    module = build_network(spec, arch.obs_shape, arch.num_actions)
    _fill(module, [*arch.features, *arch.hidden, head], source)
    if obs_norm:
        module.obs_mean.copy_(torch.as_tensor(obs_norm["mean"], dtype=torch.float32).flatten())
        module.obs_var.copy_(torch.as_tensor(obs_norm["var"], dtype=torch.float32).flatten())
    return spec, module_to_bytes(module), quantiles


def _library_policy(model: SB3Zip, arch: Architecture, quantiles: int) -> tuple[torch.nn.Module, str, str]:
    """SB3's own policy class, built from what was read (no unpickling), loaded with the zip's state dict."""
    import gymnasium
    from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN
    low, high = arch.bounds
    if np.issubdtype(np.dtype(arch.obs_dtype), np.integer):  # an integer Box cannot hold infinite bounds
        info = np.iinfo(np.dtype(arch.obs_dtype))
        low, high = max(low, info.min), min(high, info.max)
    obs_space = gymnasium.spaces.Box(low, high, arch.obs_shape, np.dtype(arch.obs_dtype))
    kwargs: dict[str, Any] = {
        "observation_space": obs_space, "action_space": gymnasium.spaces.Discrete(arch.num_actions),
        "lr_schedule": lambda _: 0.0, "activation_fn": getattr(torch.nn, _TORCH_NAMES[arch.activation]),
        "features_extractor_class": NatureCNN if arch.features else FlattenExtractor,
        "normalize_images": bool(arch.kwargs.get("normalize_images", True))}
    if arch.features:
        kwargs["features_extractor_kwargs"] = {"features_dim": int(arch.features[3][1].shape[0])}
    hidden = [int(w.shape[0]) for _, w, _ in arch.hidden]
    if arch.family == "ac":
        from stable_baselines3.common.policies import ActorCriticPolicy as cls
        vf = [int(w.shape[0]) for _, w, _ in sequential(model, "mlp_extractor.value_net.")]
        kwargs |= {"net_arch": {"pi": hidden, "vf": vf}, "ortho_init": False,
                   "share_features_extractor": bool(arch.kwargs.get("share_features_extractor", True))}
        forward, package = "get_distribution(obs).distribution.logits", "stable_baselines3"
    elif arch.family == "dqn":
        from stable_baselines3.dqn.policies import DQNPolicy as cls
        kwargs["net_arch"], forward, package = hidden, "q_net", "stable_baselines3"
    else:
        from sb3_contrib.qrdqn.policies import QRDQNPolicy as cls
        kwargs |= {"net_arch": hidden, "n_quantiles": quantiles}
        forward, package = "quantile_net (mean over quantiles)", "sb3_contrib"
    policy = cls(**kwargs)
    try:
        policy.load_state_dict(model.state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{model.path}: {cls.__name__} built from the zip's fields does not take its "
                              f"policy.pth ({str(exc).splitlines()[0][:200]}); please report it") from None
    version = importlib.import_module(package).__version__
    return policy.eval(), f"{package.replace('_', '-')} {version} {cls.__name__}.{forward}", arch.family


def _reference(model: SB3Zip, arch: Architecture, quantiles: int, vecnorm: Any) -> tuple[Reference | None, str]:
    package = "sb3_contrib" if arch.family == "qrdqn" else "stable_baselines3"
    try:
        importlib.import_module(package)
    except ImportError:
        return None, f"not measured: {package.replace('_', '-')} is not installed"
    policy, name, family = _library_policy(model, arch, quantiles)

    def forward(obs: np.ndarray) -> np.ndarray:
        batch = vecnorm.normalize_obs(np.asarray(obs)) if vecnorm is not None else np.asarray(obs)
        with torch.no_grad():
            tensor, _ = policy.obs_to_tensor(batch)  # SB3's own preprocessing (/255 for images) runs inside
            if family == "dqn":
                out = policy.q_net(tensor)
            elif family == "qrdqn":
                out = policy.quantile_net(tensor).mean(dim=1)
            else:
                out = policy.get_distribution(tensor).distribution.logits
        return out.cpu().numpy()
    return forward, name


def convert(source: Path, spaces: EnvSpaces, options: ImportOptions) -> Converted:
    source = Path(source)
    model = open_zip(source)
    arch = read_architecture(model, spaces, options.env_id)
    vecnorm, obs_norm = _vecnormalize(options, arch)
    spec, weights, quantiles = _build(arch, obs_norm, source)
    reference, reference_name = _reference(model, arch, quantiles, vecnorm)
    contrib = arch.algorithm in ("QR-DQN", "TRPO")
    notes = [f"activation {arch.activation}: {arch.activation_origin}"]
    if quantiles:
        notes.append(f"Q-values are the mean over the {quantiles} quantiles, folded exactly into the last layer "
                     "(its weight rows and biases averaged per action)")
    if arch.family == "ac":
        notes.append("outputs are the policy's action logits; the value path is not imported")
    if obs_norm:
        notes.append(f"VecNormalize observation statistics from {options.vecnormalize} are inside the network "
                     f"(clip {obs_norm['clip']:g}, epsilon {obs_norm['epsilon']:g})")
    elif vecnorm is not None:
        notes.append(f"{options.vecnormalize} has norm_obs off: observations go to the network unnormalised")
    if contrib:
        notes.append("sb3-contrib records no version of its own; the zip was saved with stable-baselines3 "
                     f"{model.version}")
    scaling = "inside the network (/255)" if arch.pixel_scale != 1 else "none (normalize_images=False)"
    return Converted(
        network=spec, weights=weights, obs_shape=arch.obs_shape, num_actions=arch.num_actions,
        output_kind="q" if arch.family != "ac" else "logits",
        library="sb3-contrib" if contrib else "stable-baselines3",
        library_version="unknown" if contrib else model.version, algorithm=arch.algorithm,
        source_params=arch.source_params, reference=reference, reference_name=reference_name,
        compare=COMPARE_LOG_PROBS if arch.family == "ac" else COMPARE_OUTPUTS,
        protocol=atari_protocol("Stable-Baselines3 AtariWrapper", "chw (VecTransposeImage)", options.trained_env,
                                scaling)
        if spaces.pixels else {},
        notes=tuple(notes))
