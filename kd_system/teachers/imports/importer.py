"""The import driver: tell the format, convert, check the result against the env, measure parity
with the source library's own forward on 1,000 of the env's states, evaluate, and hand back a
teacher in the project's format with its model card. Nothing is written here (writing.py does),
so a failed import leaves ``--out`` untouched.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib
import math
import zipfile
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_system.envs.make import EnvSpaces, check_env_id, env_spaces
from kd_system.envs.protocol import eval_epsilon
from kd_system.errors import CheckpointError, ConfigError
from kd_system.evaluation.episodes import random_act_fn, run_episodes
from kd_system.evaluation.scores import t_interval95
from kd_system.policies.files import SPEC_FILE, FrozenPolicy, PolicyBundle, PolicySpec, module_from_bytes
from kd_system.policies.networks import count_parameters
from kd_system.teachers.imports.protocol import differences
from kd_system.teachers.imports.records import COMPARE_LOG_PROBS, FORMATS, Converted, ImportOptions
from kd_system.teachers.imports.states import PARITY_STATES, env_states

_CONVERTERS = {"sb3": ("sb3", "convert"), "cleanrl": ("cleanrl", "convert"), "rllib": ("rllib", "convert"),
               "torchscript": ("opaque", "convert_torchscript"), "onnx": ("opaque", "convert_onnx")}
# Files that mark an RLlib checkpoint directory: an Algorithm's, or an RLModule's inside it.
_RLLIB_MARKERS = ("rllib_checkpoint.json", "algorithm_state.pkl", "algorithm_state.msgpack",
                  "class_and_ctor_args.pkl", "learner_group", "module_state.pkl", "module_state.pt")
# Refuse an import whose outputs differ from the source's by more than this, relative to the
# outputs' scale: a misread architecture (an activation, a layer order) is far above it, float
# rounding of folded heads far below.
PARITY_REFUSE = 1e-4


def is_project_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / SPEC_FILE).is_file()


def detect_format(source: Path) -> str:
    """sb3, cleanrl, rllib, torchscript or onnx, from the file's contents (its name only for .onnx)."""
    if source.is_dir():
        if is_project_checkpoint(source):
            raise CheckpointError(f"{source} is already a kd_system checkpoint; use it as teacher.checkpoint directly")
        if any((source / marker).exists() for marker in _RLLIB_MARKERS):
            return "rllib"
        raise CheckpointError(f"{source} is a directory with neither spec.json (kd_system) nor an RLlib checkpoint's "
                              "files; pass the checkpoint directory that `algo.save()` wrote, or --from (teacher.format)")
    if not source.is_file():
        raise CheckpointError(f"{source} does not exist; pass the teacher file or directory to import")
    if source.suffix.lower() == ".onnx":
        return "onnx"
    if zipfile.is_zipfile(source):
        try:
            names = zipfile.ZipFile(source).namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if "policy.pth" in names and "data" in names:
            return "sb3"
        if any("/code/" in name for name in names):
            return "torchscript"
        if any(name.endswith("data.pkl") for name in names):
            return "cleanrl"  # a torch.save()d state dict: CleanRL's .cleanrl_model
    raise CheckpointError(f"cannot tell what {source} is (not a Stable-Baselines3 zip, a torch or TorchScript "
                          "archive, an .onnx file nor an RLlib checkpoint directory); pass --from "
                          f"{'|'.join(FORMATS)} (teacher.format in a run config)")


def source_sha256(source: Path) -> str:
    """The file's sha256; for a directory, over its files' relative paths and contents, in order."""
    digest = hashlib.sha256()
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for path in files:
        if source.is_dir():
            digest.update(str(path.relative_to(source)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _convert(fmt: str, source: Path, spaces: EnvSpaces, options: ImportOptions) -> Converted:
    module_name, function = _CONVERTERS[fmt]
    module = importlib.import_module(f"kd_system.teachers.imports.{module_name}")
    return getattr(module, function)(source, spaces, options)


def _check_fits(converted: Converted, spaces: EnvSpaces, source: Path, env_id: str) -> None:
    if tuple(converted.obs_shape) != tuple(spaces.obs_shape):
        raise CheckpointError(f"{source} takes observations {tuple(converted.obs_shape)} but --env {env_id} gives "
                              f"{tuple(spaces.obs_shape)}; pass the env the teacher was trained on")
    if converted.num_actions != spaces.num_actions:
        raise CheckpointError(f"{source} outputs {converted.num_actions} actions but --env {env_id} has "
                              f"{spaces.num_actions}; pass the env the teacher was trained on (kd_system plays "
                              "Atari with the minimal action set)")
    if converted.output_kind not in ("q", "logits"):
        raise CheckpointError(f"{source}: output kind {converted.output_kind!r} must be q or logits")


def _log_softmax(values: np.ndarray) -> np.ndarray:
    return torch.log_softmax(torch.as_tensor(values, dtype=torch.float64), dim=1).numpy()


def measure_parity(policy: FrozenPolicy, converted: Converted, states: np.ndarray, source: Path) -> float | None:
    """Largest absolute difference between our outputs and the source library's, or None if it is absent."""
    if converted.reference is None:
        return None
    ours = policy.outputs(states)
    theirs = np.asarray(converted.reference(states), dtype=np.float32)
    if theirs.shape != ours.shape:
        raise CheckpointError(f"{source}: the source's forward gives shape {theirs.shape}, ours {ours.shape}; "
                              "the file's architecture was misread, please report it")
    if converted.compare == COMPARE_LOG_PROBS:
        ours, theirs = _log_softmax(ours), _log_softmax(theirs)
    diff = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))
    scale = max(1.0, float(np.max(np.abs(theirs))))
    if not diff <= PARITY_REFUSE * scale:
        raise CheckpointError(f"{source}: the converted teacher differs from {converted.reference_name} by {diff:.3g} "
                              f"on {len(states)} states of the env (limit {PARITY_REFUSE * scale:.3g}); the file's "
                              "architecture was misread (e.g. an activation): pass --from or report it")
    return diff


def import_teacher(source: str | Path, options: ImportOptions, fmt: str | None = None, episodes: int = 20,
                   seed: int = 0, command: str | None = None, training: dict[str, Any] | None = None) -> PolicyBundle:
    """The teacher in the project's format; ``episodes`` 0 skips the evaluation (imports on the fly).
    ``training``: how the source was trained (training_record.card_fields), kept on its card."""
    source = Path(source).expanduser()
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"--from {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    fmt = fmt or detect_format(source)
    check_env_id(options.env_id, "--env")
    spaces = env_spaces(options.env_id)
    converted = _convert(fmt, source, spaces, options)
    _check_fits(converted, spaces, source, options.env_id)
    spec = PolicySpec(role="teacher", env_id=options.env_id, obs_shape=spaces.obs_shape, obs_dtype=spaces.obs_dtype,
                      num_actions=spaces.num_actions, output_kind=converted.output_kind, network=converted.network,
                      protocol=dict(converted.protocol))
    policy = FrozenPolicy(spec, module_from_bytes(spec, converted.weights, str(source)))
    parity = measure_parity(policy, converted, env_states(options.env_id, PARITY_STATES, seed), source)
    num_params = count_parameters(policy.module)
    card = _card(source, fmt, converted, parity, num_params, options, command)
    if training:
        card["training"] = training
    if episodes > 0:
        card |= _evaluate(options.env_id, policy, episodes, seed)
    return PolicyBundle(replace(spec, num_params=num_params, model_card=card), converted.weights)


@lru_cache(maxsize=8)
def _cached_import(key: tuple, source: Path, options: ImportOptions, fmt: str | None) -> PolicyBundle:
    return import_teacher(source, options, fmt, episodes=0)


def import_on_the_fly(source: Path, options: ImportOptions, fmt: str | None = None) -> PolicyBundle:
    """``teacher.checkpoint=FILE`` in a run: imported without evaluation (the run's evaluator scores
    it), once per process for an unchanged file (the CLI checks the config before the run starts)."""
    stat = source.stat()
    return _cached_import((str(source.resolve()), stat.st_mtime_ns, stat.st_size), source, options, fmt)


def _card(source: Path, fmt: str, converted: Converted, parity: float | None, num_params: int,
          options: ImportOptions, command: str | None) -> dict[str, Any]:
    return {
        "imported_from": str(source), "source_format": fmt, "source_sha256": source_sha256(source),
        "library": converted.library, "library_version": converted.library_version,
        "algorithm": converted.algorithm, "source_params": converted.source_params, "num_params": num_params,
        "parity_max_abs_diff": parity, "parity_states": PARITY_STATES, "parity_reference": converted.reference_name,
        "parity_compared": converted.compare, "network": converted.network,
        "protocol_differences": differences(converted.protocol, options.env_id),
        "notes": list(converted.notes), "torch_version": torch.__version__,
        **({"command": command} if command else {}), "created": datetime.date.today().isoformat(),
    }


def _evaluate(env_id: str, policy: FrozenPolicy, episodes: int, seed: int) -> dict[str, Any]:
    # One state at a time: a second intra-op thread only waits on the first, and on a busy 2-core
    # machine a Nature-CNN forward took 84 ms with torch's default 2 threads against 5 ms with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stats = run_episodes(env_id, policy.greedy_actions, episodes, seed)
        rand = run_episodes(env_id, random_act_fn(policy.spec.num_actions, seed), episodes, seed)
    finally:
        torch.set_num_threads(threads)
    # the mean's 95% t-interval over the episodes (sample std; NaN bounds for a single episode)
    low, high = t_interval95(stats.mean, float(np.std(stats.returns, ddof=1)) / math.sqrt(episodes)
                             if episodes > 1 else float("nan"), episodes - 1)
    return {"eval_return_mean": round(stats.mean, 3), "eval_return_std": round(stats.std, 3),
            "eval_return_ci95": [round(low, 3), round(high, 3)] if math.isfinite(low) else None,
            "eval_episodes": episodes, "eval_seed": seed, "eval_epsilon": eval_epsilon(env_id),
            "random_return_mean": round(rand.mean, 3), "random_return_std": round(rand.std, 3)}
