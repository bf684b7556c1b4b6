"""Import RLlib new-API-stack checkpoints (ray 2.x ``algo.save()`` or an RLModule directory in it):
RLlib's default DQN (dueling folded exactly, see rllib_fold.py) and PPO modules, MLP or CNN.

What ``algo.save(path)`` writes (ray 2.60): ``rllib_checkpoint.json``, ``algorithm_state.pkl`` and
``class_and_ctor_args.pkl`` (the Algorithm class and its config), and the learner's modules under
``learner_group/learner/rl_module/<module id>/`` (``class_and_ctor_args.pkl``, ``module_state.pkl``,
``metadata.json``). The pickles can run code when loaded, so nothing is unpickled without
``options.trust_pickle``; finding the module directory reads file names and JSON only.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from kd_system.envs.make import EnvSpaces
from kd_system.errors import CheckpointError
from kd_system.policies.files import module_to_bytes
from kd_system.teachers.imports.protocol import atari_protocol
from kd_system.teachers.imports.records import COMPARE_OUTPUTS, Converted, ImportOptions
from kd_system.teachers.imports.rllib_fold import fold_dueling, to_network
from kd_system.teachers.rllib_cnn import _cnn_layers, to_rllib_obs
from kd_system.teachers.rllib_export import _sequential, rllib_outputs

CTOR_FILE = "class_and_ctor_args.pkl"
MODULE_DIRS = ("learner_group/learner/rl_module", "env_runner/rl_module")  # learner's first: it always has them
# A pixel module's observation_space bounds -> (our ConvNet's input_scale, offset folded into the first
# conv's bias, what the card says). [-1, 1] is RLlib's own Atari wrapper (NormalizedImageEnv: x/128 - 1).
PIXEL_SCALINGS = {(0.0, 1.0): (1 / 255, 0.0, "obs/255: floats in [0, 1]"),
                  (-1.0, 1.0): (1 / 128, -1.0, "obs/128 - 1: floats in [-1, 1] (RLlib's NormalizedImageEnv)"),
                  (0.0, 255.0): (1.0, 0.0, "raw pixels 0..255 as floats")}
REFERENCE_BATCH = 256  # states per RLlib forward: bounds memory on 1000 Atari stacks


def _is_module_dir(path: Path) -> bool:
    return (path / CTOR_FILE).is_file() and any(path.glob("module_state.*"))


def locate(source: Path) -> tuple[Path, Path | None]:
    """(the RLModule directory to load, the Algorithm directory if ``source`` is one); unpickles nothing."""
    if not source.is_dir():
        raise CheckpointError(f"{source} is not a directory; pass the directory RLlib's algo.save() wrote or its "
                              "learner_group/learner/rl_module/<module id> subdirectory")
    is_algo = (source / "rllib_checkpoint.json").is_file() or any(source.glob("algorithm_state.*"))
    multi = next((source / sub for sub in MODULE_DIRS if (source / sub).is_dir()), source) if is_algo else source
    modules = sorted(d for d in multi.iterdir() if d.is_dir() and _is_module_dir(d))
    if modules:  # a MultiRLModule directory: take the single-agent default, or the only module
        chosen = [d for d in modules if d.name == "default_policy"] or modules
        if len(chosen) > 1:
            raise CheckpointError(f"{multi} holds RLModules {', '.join(d.name for d in modules)}; pass the "
                                  "directory of the one to import")
        return chosen[0], source if is_algo else None
    if _is_module_dir(source) and not is_algo:
        return source, None
    raise CheckpointError(f"{source} is not an RLlib checkpoint (no {MODULE_DIRS[0]}/<module id> with {CTOR_FILE} and "
                          "module_state); pass the directory algo.save() wrote or an RLModule directory inside it")


def _require_trust(source: Path, options: ImportOptions) -> None:
    if not options.trust_pickle:
        raise CheckpointError(f"{source} is an RLlib checkpoint: its {CTOR_FILE} and module_state files are "
                              "cloudpickles, which can run arbitrary code when loaded; pass --trust-pickle only if "
                              "you trust where it came from")


def _algorithm_config(algo_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """The Algorithm's class name and config dict (env, env_config) from its ctor pickle (trusted)."""
    try:
        with open(algo_dir / CTOR_FILE, "rb") as file:
            info = pickle.load(file)
        args = info["ctor_args_and_kwargs"][0]
        config = args[0] if args else {}
        config = config if isinstance(config, dict) else config.to_dict()
        return str(info["class"].__name__), dict(config)
    except Exception:  # metadata only: the module itself is what must load
        return None, {}


def _load_module(module_dir: Path) -> nn.Module:
    import logging

    from ray.rllib.core.rl_module.rl_module import RLModule
    rllib_log = logging.getLogger("ray.rllib")
    level = rllib_log.level
    rllib_log.setLevel(logging.ERROR)  # RLlib warns about its own deprecated constructor on every load
    try:
        module = RLModule.from_checkpoint(module_dir)  # reads local files; no Ray cluster needed
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"RLlib could not load the RLModule in {module_dir} ({type(exc).__name__}: {reason}); "
                              "load it with the ray version that saved it (see its metadata.json)") from None
    finally:
        rllib_log.setLevel(level)
    return module.eval()


def _kind(module: nn.Module) -> str:
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
    if isinstance(module, DefaultDQNTorchRLModule):
        return "dqn"
    if isinstance(module, DefaultPPOTorchRLModule):  # APPO's module too
        return "ppo"
    raise CheckpointError(f"RLModule class {type(module).__name__} is not RLlib's default DQN or PPO module; export "
                          "its greedy forward with torch.onnx.export and import the .onnx file")


def _check_spaces(module: nn.Module, spaces: EnvSpaces, env_id: str) -> tuple[float, float, str]:
    """Refuses a module for another env; returns (input_scale, offset, scaling) for pixel modules."""
    obs_space, act_space = module.observation_space, module.action_space
    if getattr(act_space, "n", None) is None or getattr(act_space, "shape", None) != ():
        raise CheckpointError(f"the RLlib module's action_space {act_space} is not Discrete; kd_system distils "
                              "discrete-action teachers")
    if int(act_space.n) != spaces.num_actions:
        raise CheckpointError(f"the RLlib module's action_space {act_space} has {int(act_space.n)} actions but "
                              f"{env_id} has {spaces.num_actions}; pass the --env it was trained on")
    shape = spaces.obs_shape
    want = (shape[1], shape[2], shape[0]) if spaces.pixels else shape  # RLlib's CNNs take channels last
    if tuple(getattr(obs_space, "shape", None) or ()) != tuple(want):
        raise CheckpointError(f"the RLlib module's observation_space {obs_space} does not take {env_id}'s "
                              f"observations (shape {tuple(want)} in RLlib's layout); pass the --env it was trained on")
    if not spaces.pixels:
        return 1.0, 0.0, ""
    bounds = (float(np.min(obs_space.low)), float(np.max(obs_space.high)))
    if bounds not in PIXEL_SCALINGS:
        raise CheckpointError(f"the RLlib module's observation_space {obs_space} has bounds {bounds}; kd_system maps "
                              f"pixel stacks to {sorted(PIXEL_SCALINGS)} only")
    return PIXEL_SCALINGS[bounds]


Layers = list[nn.Module]


def _greedy_path(module: nn.Module, kind: str, pixels: bool) -> tuple[Layers, Layers, Layers, list[str]]:
    """(conv layers, dense layers) from observation to Q-values or logits, the source parts on that
    path (for the parameter count) and notes on folds."""
    notes: list[str] = []
    if kind == "dqn":
        if int(getattr(module, "num_atoms", 1) or 1) > 1:
            raise CheckpointError(f"the RLlib DQN module is distributional (num_atoms={module.num_atoms}); kd_system "
                                  "imports expected-value DQN (num_atoms=1) only")
        encoder = module.encoder
        heads = [module.af, module.vf] if module.uses_dueling else [module.af]
        if module.uses_dueling:  # RLlib's default (with double_q, which only changes training)
            head = fold_dueling(_sequential(module.af, "DQN advantage head (af)"),
                                _sequential(module.vf, "DQN value head (vf)"))
            hidden = sum(1 for layer in head if isinstance(layer, nn.Linear)) > 1
            notes.append("dueling head folded exactly into " + ("block-diagonal hidden layers (advantage and value "
                         "streams side by side) and one output Linear summing V + A - mean(A)" if hidden else
                         "one Linear: W = W_a - mean_a(W_a) + w_v, b = b_a - mean(b_a) + b_v"))
        else:
            head = _sequential(module.af, "DQN Q head (af)")
    else:
        wrapper = module.encoder  # vf_share_layers=True (the default): one shared trunk in .encoder
        encoder = getattr(wrapper, "actor_encoder", None) or getattr(wrapper, "encoder", None)
        if encoder is None:
            raise CheckpointError(f"cannot read the PPO module's encoder {type(wrapper).__name__}: "
                                  "it has no actor_encoder or encoder")
        heads, head = [module.pi], _sequential(module.pi, "PPO policy head (pi)")
    for name, layer in encoder.named_modules():  # _cnn_layers drops ZeroPad2d: padding must be refused first
        if isinstance(layer, nn.ZeroPad2d) and any(int(p) for p in layer.padding):
            raise CheckpointError(f"RLlib layer encoder.{name} pads its input ('same' padding, RLlib's default in "
                                  "conv_filters); kd_system's ConvNet has valid padding only: train with "
                                  "[channels, kernel, stride, 'valid'] filters, or export to ONNX and import that")
    if pixels:
        return _cnn_layers(encoder, f"{kind.upper()} encoder"), head, [encoder, *heads], notes
    return [], _sequential(encoder, f"{kind.upper()} encoder") + head, [encoder, *heads], notes


def _reference(module: nn.Module, kind: str, scale: float, offset: float,
               pixels: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The module's own forward on our pipeline's observations, mapped to the module's layout."""
    def to_module(obs: np.ndarray) -> np.ndarray:
        if not pixels:
            return np.asarray(obs, dtype=np.float32)
        if scale == 1 / 255:
            return to_rllib_obs(obs)  # the same float32 division our ConvNet does
        return np.moveaxis(np.asarray(obs, dtype=np.float32) * np.float32(scale) + np.float32(offset), -3, -1)

    def reference(obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        chunks = [rllib_outputs(module, kind, to_module(obs[i:i + REFERENCE_BATCH]))
                  for i in range(0, len(obs), REFERENCE_BATCH)]
        return np.concatenate(chunks) if chunks else np.zeros((0, int(module.action_space.n)), np.float32)
    return reference


def _protocol(spaces: EnvSpaces, options: ImportOptions, config: dict[str, Any], scaling: str) -> dict[str, Any]:
    """Pixel envs: the training env from --trained-env or the Algorithm's config, else assumed to be --env (v5)."""
    if not spaces.pixels:
        return {}
    env_config = dict(config.get("env_config") or {})
    env = config.get("env")
    named = env.split(":")[-1] if isinstance(env, str) and "ALE/" in env else None  # "ale_py:ALE/Pong-v5"
    trained = options.trained_env or env_config.get("env_id") or named
    protocol = atari_protocol("ray[rllib]", "hwc", trained or options.env_id, scaling)
    protocol["assumed"] = trained is None
    if "repeat_action_probability" in env_config:  # RLlib's Atari examples set it to 0.0
        protocol["sticky_actions"] = float(env_config["repeat_action_probability"])
    return protocol


def _ray_version(module_dir: Path) -> str:
    try:
        return str(json.loads((module_dir / "metadata.json").read_text())["ray_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def convert(source: Path, spaces: EnvSpaces, options: ImportOptions) -> Converted:
    source = Path(source).resolve()  # RLlib reads through pyarrow, which wants absolute paths
    module_dir, algo_dir = locate(source)
    _require_trust(source, options)  # before any pickle is opened
    try:
        import ray
    except ImportError:
        raise CheckpointError(f"{source} is an RLlib checkpoint; reading it needs ray[rllib]: "
                              "pip install 'ray[rllib]'") from None
    algo_class, config = _algorithm_config(algo_dir) if algo_dir else (None, {})
    module = _load_module(module_dir)
    kind = _kind(module)
    scale, offset, scaling = _check_spaces(module, spaces, options.env_id)
    convs, dense, parts, notes = _greedy_path(module, kind, spaces.pixels)
    names = {id(layer): path for path, layer in module.named_modules()}
    spec, ours = to_network(convs, dense, spaces, scale, offset,
                            lambda layer: names.get(id(layer), "(folded dueling head)"))
    match = re.fullmatch(r"Default(\w+?)TorchRLModule", type(module).__name__)
    version = _ray_version(module_dir)
    if offset:
        notes.append(f"observation_space [-1, 1] read as {scaling}; the -1 is folded into the first convolution's bias")
    if algo_dir is None:
        notes.append("converted from the RLModule alone: env-to-module connectors (observation filters, frame "
                     "stacking) are not in it and must match kd_system's observations")
    elif config.get("_env_to_module_connector") is not None:
        notes.append("the Algorithm had a custom env-to-module connector; it is not part of the converted network")
    if version not in ("unknown", ray.__version__):
        notes.append(f"saved with ray {version}, loaded with ray {ray.__version__}")
    forward = "compute_q_values (qf_preds)" if kind == "dqn" else "forward_inference (action_dist_inputs)"
    return Converted(
        network=spec, weights=module_to_bytes(ours), obs_shape=tuple(spaces.obs_shape),
        num_actions=spaces.num_actions,
        output_kind="q" if kind == "dqn" else "logits", library="ray[rllib]", library_version=version,
        algorithm=algo_class or (match.group(1) if match else kind.upper()),
        source_params=sum(p.numel() for p in {id(p): p for part in parts for p in part.parameters()}.values()),
        reference=_reference(module, kind, scale, offset, spaces.pixels),
        reference_name=f"ray[rllib] {ray.__version__} {type(module).__name__}.{forward}",
        compare=COMPARE_OUTPUTS, protocol=_protocol(spaces, options, config, scaling), notes=tuple(notes))
