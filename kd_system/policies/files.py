"""The project's policy checkpoint format: ``model.safetensors`` plus ``spec.json``.

Teachers and student snapshots share it. Loading parses JSON and raw tensors only, so a
checkpoint can never run code. The spec carries what is needed to rebuild the network and to
check it against an environment: spaces, output kind (``q`` or ``logits``) and a model card.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from kd_system.errors import CheckpointError
from kd_system.policies.networks import build_network, count_parameters
from kd_system.policies.opaque import OPAQUE_FILES, is_opaque, load_opaque

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_NAME = "kd_system.policy"
FORMAT_VERSION = 1
OUTPUT_KINDS = ("q", "logits")


@dataclass(frozen=True)
class PolicySpec:
    role: str  # "teacher" or "student"
    env_id: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int
    output_kind: str
    network: dict[str, Any]
    num_params: int = 0
    model_card: dict[str, Any] = field(default_factory=dict)
    # What an imported teacher was trained on (teachers/imports/protocol.py); empty: kd_system's own pipeline.
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["obs_shape"] = list(self.obs_shape)
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: Any, source: str) -> "PolicySpec":
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{source} is not a kd_system policy spec (missing format={FORMAT_NAME!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has format_version {data.get('format_version')!r}; this kd_system reads "
                f"version {FORMAT_VERSION}: re-export the checkpoint with this version"
            )
        known = {"format", "format_version", *(f.name for f in fields(cls))}
        unknown = sorted(set(data) - known)
        if unknown:  # a misspelt or newer field would otherwise be dropped without a word
            raise CheckpointError(f"{source} has unknown field {unknown[0]!r}; the fields are {', '.join(sorted(known))} "
                                  "(remove it, or upgrade kd_system if a newer version wrote the file)")
        try:
            spec = cls(
                role=str(data["role"]),
                env_id=str(data["env_id"]),
                obs_shape=tuple(int(d) for d in data["obs_shape"]),
                obs_dtype=str(data["obs_dtype"]),
                num_actions=int(data["num_actions"]),
                output_kind=str(data["output_kind"]),
                network=dict(data["network"]),
                num_params=int(data.get("num_params", 0)),
                model_card=dict(data.get("model_card", {})),
                protocol=dict(data.get("protocol", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} is missing or has a bad field: {exc}") from None
        if spec.output_kind not in OUTPUT_KINDS:
            raise CheckpointError(f"{source}: output_kind {spec.output_kind!r} must be one of {OUTPUT_KINDS}")
        return spec


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def weights_file(spec: PolicySpec) -> str:
    """model.safetensors for our network kinds; the file's own name for opaque teachers."""
    return OPAQUE_FILES.get(spec.network.get("kind"), WEIGHTS_FILE)


def module_to_bytes(module: torch.nn.Module) -> bytes:
    return save_bytes({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})


def _state_mismatch(spec: PolicySpec, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str | None:
    """The first difference between the weights and the spec's network, naming the layer and the spec field."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    fields = (f"network {spec.network.get('kind')} {json.dumps({k: v for k, v in spec.network.items() if k != 'kind'})}, "
              f"obs_shape {list(spec.obs_shape)}, num_actions {spec.num_actions}")
    if missing:
        return f"layer {missing[0]} is missing ({len(missing)} missing in all) for the spec's {fields}"
    if unexpected:
        return f"layer {unexpected[0]} is not in the spec's network ({len(unexpected)} unknown in all; spec: {fields})"
    weight_keys = [key for key in expected if key.endswith("weight")]
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            head = key.rsplit(".", 1)[0] == weight_keys[-1].rsplit(".", 1)[0]
            hint = ("num_actions" if head and got.shape[0] != want.shape[0] else
                    "obs_shape" if key == weight_keys[0] and got.dim() == want.dim() == 2 and got.shape[1] != want.shape[1]
                    else "network")
            return (f"layer {key} has shape {list(got.shape)} but the spec's {hint} gives {list(want.shape)} "
                    f"(spec: {fields}); fix {hint} in spec.json or re-export the weights")
        if not got.dtype.is_floating_point:
            return f"layer {key} holds {got.dtype} values; weights must be floating point (re-export as float32)"
    return None


def module_from_bytes(spec: PolicySpec, weights: bytes, source: str) -> torch.nn.Module:
    if is_opaque(spec.network):
        return load_opaque(spec.network, spec.num_actions, weights, source)
    try:
        state = load_bytes(weights)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source} cannot be read ({exc}); the checkpoint is corrupt") from None
    module = build_network(spec.network, spec.obs_shape, spec.num_actions)
    problem = _state_mismatch(spec, module.state_dict(), state)
    if problem is not None:
        raise CheckpointError(f"{source} does not match the network in its spec: {problem}")
    module.load_state_dict(state, strict=True)
    return module.eval()


@dataclass(frozen=True)
class PolicyBundle:
    """A policy as plain data (spec + safetensors bytes): what crosses processes and nodes."""
    spec: PolicySpec
    weights: bytes

    @classmethod
    def from_module(cls, spec: PolicySpec, module: torch.nn.Module) -> "PolicyBundle":
        return cls(spec, module_to_bytes(module))

    def module(self) -> torch.nn.Module:
        return module_from_bytes(self.spec, self.weights, f"weights of {self.spec.role} for {self.spec.env_id}")


def save_bundle(directory: str | os.PathLike, bundle: PolicyBundle) -> Path:
    """Weights first, spec last, each by atomic rename: a half-written checkpoint has no spec."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(out / weights_file(bundle.spec), bundle.weights)
    _atomic_write_bytes(out / SPEC_FILE, json.dumps(bundle.spec.to_json(), indent=2).encode() + b"\n")
    return out


def save_policy(directory: str | os.PathLike, spec: PolicySpec, module: torch.nn.Module) -> Path:
    return save_bundle(directory, PolicyBundle.from_module(spec, module))


def read_spec(directory: str | os.PathLike) -> PolicySpec:
    path = Path(directory) / SPEC_FILE
    if Path(directory).is_file():
        raise CheckpointError(f"checkpoint {directory} is a file, not a kd_system checkpoint directory; convert it with "
                              f"`kd-system teacher import {directory} --env ENV_ID --out DIR` (Stable-Baselines3 .zip, "
                              "CleanRL .cleanrl_model, TorchScript, ONNX), or give it to `kd-system run` as "
                              "teacher.checkpoint, which imports it on the fly")
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint {directory} does not exist; pass a checkpoint directory (spec.json + "
                              "model.safetensors) or a file to import")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {directory} is not a kd_system checkpoint; if it is an RLlib "
                              f"checkpoint, import it with `kd-system teacher import {directory} --env ENV_ID "
                              "--out DIR --trust-pickle`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the checkpoint is corrupt") from None
    return PolicySpec.from_json(data, str(path))


def load_bundle(directory: str | os.PathLike) -> PolicyBundle:
    spec = read_spec(directory)
    weights_path = Path(directory) / weights_file(spec)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing; the checkpoint is incomplete")
    bundle = PolicyBundle(spec, weights_path.read_bytes())
    module_from_bytes(spec, bundle.weights, str(weights_path))  # fail here, with the path, if corrupt
    return bundle


def load_policy(directory: str | os.PathLike) -> tuple[PolicySpec, torch.nn.Module]:
    bundle = load_bundle(directory)
    return bundle.spec, bundle.module()


class FrozenPolicy:
    """A loaded policy for batched, gradient-free inference on numpy observations."""

    def __init__(self, spec: PolicySpec, module: torch.nn.Module, device: str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.num_params = count_parameters(self.module)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "cpu") -> "FrozenPolicy":
        spec, module = load_policy(directory)
        return cls(spec, module, device)

    @classmethod
    def from_bundle(cls, bundle: PolicyBundle, device: str = "cpu") -> "FrozenPolicy":
        return cls(bundle.spec, bundle.module(), device)

    @torch.inference_mode()
    def outputs(self, obs: np.ndarray) -> np.ndarray:
        """Q-values or logits, float32, shape (batch, num_actions)."""
        tensor = torch.as_tensor(np.asarray(obs), device=self.device)
        return self.module(tensor).float().cpu().numpy()

    def greedy_actions(self, obs: np.ndarray) -> np.ndarray:
        return self.outputs(obs).argmax(axis=1)
