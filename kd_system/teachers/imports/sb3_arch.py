"""What network a Stable-Baselines3 zip holds, from its plain JSON fields, its pickles' opcodes
(``sb3_zip``) and the tensor shapes in ``policy.pth``: the algorithm, the spaces, the activation and
the policy path's layers in forward order. Layer widths always come from the tensors."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from kd_system.envs.make import EnvSpaces
from kd_system.errors import CheckpointError
from kd_system.teachers.imports.sb3_zip import Global, SB3Zip

# The policy classes model.save() names for the supported algorithms, and the family each belongs to.
_CLASSES = {
    Global("stable_baselines3.dqn.policies", "DQNPolicy"): "dqn",
    Global("stable_baselines3.dqn.policies", "CnnPolicy"): "dqn",
    Global("sb3_contrib.qrdqn.policies", "QRDQNPolicy"): "qrdqn",
    Global("sb3_contrib.qrdqn.policies", "CnnPolicy"): "qrdqn",
    Global("stable_baselines3.common.policies", "ActorCriticPolicy"): "ac",
    Global("stable_baselines3.common.policies", "ActorCriticCnnPolicy"): "ac",
}
_SUPPORTED = "DQN, QR-DQN, PPO, A2C or TRPO with MlpPolicy or CnnPolicy on a Box observation space and Discrete actions"
# Where each family keeps its policy path in policy.pth: (network prefix, features extractor, Sequential MLP, head).
_PATHS = {"dqn": ("q_net.", "q_net.features_extractor.", "q_net.q_net.", None),
          "qrdqn": ("quantile_net.", "quantile_net.features_extractor.", "quantile_net.quantile_net.", None),
          "ac": ("", "features_extractor.", "mlp_extractor.policy_net.", "action_net.")}
_DEFAULT_ACTIVATION = {"dqn": "relu", "qrdqn": "relu", "ac": "tanh"}  # the policies' activation_fn defaults
ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "ELU": "elu", "GELU": "gelu", "SiLU": "silu"}
NATURE_KERNELS, NATURE_STRIDES = [8, 4, 3], [4, 2, 1]  # NatureCNN's convs; the strides are not in the tensors
_NATURE_KEYS = ("cnn.0", "cnn.2", "cnn.4", "linear.0")

Layer = tuple[str, torch.Tensor, torch.Tensor]  # source key prefix, weight, bias


@dataclass(frozen=True)
class Architecture:
    family: str  # "dqn", "qrdqn" or "ac"
    algorithm: str  # "DQN", "QR-DQN", "PPO", "A2C", "TRPO"
    obs_shape: tuple[int, ...]
    obs_dtype: str
    bounds: tuple[float, float]  # the saved observation space's low and high where uniform, else (-inf, inf)
    num_actions: int
    activation: str  # our name, e.g. "relu"
    activation_origin: str
    pixel_scale: float  # what SB3's preprocess_obs multiplies observations by: 1/255 for images it normalises
    features: list[Layer]  # NatureCNN's three convs and its linear layer; [] for MlpPolicy
    hidden: list[Layer]  # the policy path's hidden Linear layers
    head: Layer
    source_params: int
    kwargs: dict[str, Any]  # policy_kwargs' plain fields


def _fail(model: SB3Zip, field: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{model.path}: {field} {problem}; supported: {_SUPPORTED}")


def _family(model: SB3Zip) -> str:
    """The family from policy_class (by its pickled name) and from the state dict's keys; both must agree."""
    names = model.blob("policy_class").globals
    by_keys = next((family for family, key in (("qrdqn", "quantile_net."), ("dqn", "q_net."), ("ac", "action_net."))
                    if any(name.startswith(key) for name in model.state)), None)
    if names and _CLASSES.get(names[0]) is None:
        raise _fail(model, "data.policy_class", f"is {names[0]}")
    by_class = _CLASSES[names[0]] if names else by_keys
    if by_keys is None or by_class != by_keys:
        raise _fail(model, "policy.pth", f"keys ({', '.join(list(model.state)[:3])}, ...) do not match a "
                    f"{by_class or 'known'} policy")
    if any(name.startswith(("mlp_extractor.shared_net.", "lstm")) for name in model.state):
        raise _fail(model, "policy.pth", "has shared or recurrent layers (SB3 < 1.8 net_arch, or RecurrentPPO)")
    return by_keys


def _algorithm(model: SB3Zip, family: str) -> str:
    if family != "ac":
        return {"dqn": "DQN", "qrdqn": "QR-DQN"}[family]
    if "cg_max_steps" in model.data:  # sb3-contrib TRPO saves its conjugate-gradient settings
        return "TRPO"
    return "PPO" if "clip_range" in model.data or "n_epochs" in model.data else "A2C"


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _bound(fields: dict[str, Any], name: str) -> float | None:
    """A uniform bound of the saved Box: the scalar ``low_repr``, else one repeated value in ``str(low)``."""
    value = _number(fields.get(f"{name}_repr"))
    if value is not None:
        return value
    tokens = set(re.findall(r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf)", str(fields.get(name, ""))))
    return _number(tokens.pop()) if len(tokens) == 1 else None


def _spaces(model: SB3Zip, spaces: EnvSpaces, env_id: str) -> tuple[tuple[int, ...], str, tuple[float, float], int]:
    obs, act = model.fields("observation_space"), model.fields("action_space")
    if "Box" not in model.type_name("observation_space"):
        raise _fail(model, "data.observation_space", f"is {model.type_name('observation_space') or 'missing'}")
    if "Discrete" not in model.type_name("action_space") or "MultiDiscrete" in model.type_name("action_space"):
        raise _fail(model, "data.action_space", f"is {model.type_name('action_space') or 'missing'}")
    shape = tuple(int(d) for d in obs.get("_shape", obs.get("shape", [])))
    num_actions, start = int(_number(act.get("n")) or 0), int(_number(act.get("start")) or 0)
    if shape != tuple(spaces.obs_shape):
        layout = (" (channels last: this network takes (H, W, C) frames, kd_system's pipeline gives channels "
                  "first)" if len(shape) == 3 and shape == tuple(spaces.obs_shape[1:]) + spaces.obs_shape[:1] else "")
        raise CheckpointError(f"{model.path}: data.observation_space.shape is {list(shape)} but --env {env_id} gives "
                              f"{list(spaces.obs_shape)}{layout}; pass the env the model was trained on")
    if num_actions != spaces.num_actions or start != 0:
        raise CheckpointError(f"{model.path}: data.action_space.n is {num_actions} (start {start}) but --env {env_id} "
                              f"has {spaces.num_actions} actions from 0; pass the env the model was trained on")
    low, high = _bound(obs, "low"), _bound(obs, "high")
    bounds = (low if low is not None else float("-inf"), high if high is not None else float("inf"))
    return shape, str(obs.get("dtype", "float32")), bounds, num_actions


def _class_named(model: SB3Zip, key: str, module_prefix: str) -> str | None:
    """The class a policy_kwargs entry names: from the pickle's opcodes, checked against the plain str field."""
    kwargs, blob = model.fields("policy_kwargs"), model.blob("policy_kwargs")
    if key not in kwargs:
        return None
    named = blob.items.get(key)
    if not isinstance(named, Global):
        named = next((g for g in blob.globals if g.module.startswith(module_prefix)), None)
    plain = re.fullmatch(r"<class '([\w.]+)\.(\w+)'>", str(kwargs[key]))
    mismatch = plain is not None and named is not None and plain.group(2) != named.name
    if named is None or not named.module.startswith(module_prefix) or mismatch:
        raise _fail(model, f"data.policy_kwargs.{key}", f"is {kwargs[key]!r}, which is not a library class")
    return named.name


def _activation(model: SB3Zip, family: str) -> tuple[str, str]:
    name = _class_named(model, "activation_fn", "torch.nn")
    if name is None:
        return _DEFAULT_ACTIVATION[family], "the algorithm's default (policy_kwargs sets no activation_fn)"
    if name not in ACTIVATIONS:
        raise CheckpointError(f"{model.path}: data.policy_kwargs.activation_fn is {name}; kd_system networks take "
                              f"{', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name], f"policy_kwargs.activation_fn ({name})"


def sequential(model: SB3Zip, prefix: str) -> list[Layer]:
    """The Linear layers of an nn.Sequential saved under ``prefix``, in forward order."""
    indices = sorted({int(found.group(1)) for key in model.state
                      if (found := re.fullmatch(re.escape(prefix) + r"(\d+)\.weight", key))})
    return [(f"{prefix}{i}", model.state[f"{prefix}{i}.weight"], model.need(f"{prefix}{i}.bias")) for i in indices]


def _features(model: SB3Zip, prefix: str) -> list[Layer]:
    """NatureCNN's layers under ``prefix`` ([] for the parameter-free FlattenExtractor); anything else is refused."""
    extractor = _class_named(model, "features_extractor_class", "stable_baselines3")
    keys = {key[len(prefix):].rsplit(".", 1)[0] for key in model.state if key.startswith(prefix)}
    if extractor not in (None, "NatureCNN", "FlattenExtractor") or (keys and keys != set(_NATURE_KEYS)):
        raise _fail(model, "data.policy_kwargs.features_extractor_class",
                    f"is a custom extractor ({extractor or sorted(keys)})")
    if not keys:
        return []
    layers = [(prefix + name, model.need(f"{prefix}{name}.weight"), model.need(f"{prefix}{name}.bias"))
              for name in _NATURE_KEYS]
    if [int(weight.shape[-1]) for _, weight, _ in layers[:3]] != NATURE_KERNELS:
        raise _fail(model, f"policy.pth {prefix}cnn", "does not have NatureCNN's kernels 8, 4, 3")
    return layers


def read_architecture(model: SB3Zip, spaces: EnvSpaces, env_id: str) -> Architecture:
    family = _family(model)
    shape, dtype, bounds, num_actions = _spaces(model, spaces, env_id)
    activation, origin = _activation(model, family)
    kwargs = model.fields("policy_kwargs")
    net, features_prefix, mlp_prefix, head_prefix = _PATHS[family]
    if family == "ac" and any(key.startswith("pi_features_extractor.") for key in model.state):
        features_prefix = "pi_features_extractor."  # the policy path's own extractor (shared or not)
    features = _features(model, features_prefix)
    layers = sequential(model, mlp_prefix)
    head = (head_prefix, model.need(f"{head_prefix}weight"), model.need(f"{head_prefix}bias")) if head_prefix else None
    hidden, head = (layers, head) if head else (layers[:-1], layers[-1] if layers else None)
    if head is None:
        raise CheckpointError(f"{model.path}: policy.pth has no {mlp_prefix}0.weight; re-save the model")
    is_image = len(shape) == 3 and dtype == "uint8" and bounds == (0.0, 255.0)  # SB3's is_image_space
    pixel_scale = 1 / 255 if is_image and kwargs.get("normalize_images", True) else 1.0
    if pixel_scale != 1.0 and not features:  # our MLP has no input scale to divide by 255
        raise _fail(model, "data.observation_space.shape", f"is {list(shape)} (images) with an MlpPolicy")
    if features and not hidden:  # NatureCNN's own ReLUs are the only activations on the path
        activation, origin = "relu", "NatureCNN's (net_arch is empty, so no activation_fn is on the policy path)"
    if features and hidden and activation != "relu":
        raise _fail(model, "data.policy_kwargs.net_arch", f"adds {activation} layers after NatureCNN (kd_system's cnn "
                    "uses ReLU throughout; CnnPolicy's default net_arch [] or ReLU layers are supported)")
    path = [net] if family != "ac" else [features_prefix, mlp_prefix, head_prefix]
    source_params = sum(t.numel() for key, t in model.state.items() if any(key.startswith(p) for p in path if p))
    return Architecture(family, _algorithm(model, family), shape, dtype, bounds, num_actions, activation, origin,
                        pixel_scale, features, hidden, head, int(source_params), kwargs)
