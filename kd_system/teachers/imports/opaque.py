"""TorchScript and ONNX teachers: files that run as they are, behind ``policies/opaque.py``'s runtime.

Neither format says what its outputs mean nor which observations it was exported for, so the user
says: ``--output-kind`` (q or logits; required), ``--obs-layout`` and ``--obs-scale``. The file is
loaded once through the runtime (a corrupt file fails there), its outputs are checked on a few of
--env's own observations, and the driver's parity check gets a reference forward written apart from
the runtime's adapter: ``torch.jit.load`` or an onnxruntime session on the observations adapted here.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from kd_system.envs.make import EnvSpaces
from kd_system.errors import CheckpointError
from kd_system.policies.networks import count_parameters
from kd_system.policies.opaque import load_opaque
from kd_system.teachers.imports.protocol import V4_DEFAULTS
from kd_system.teachers.imports.records import LAYOUTS, Converted, ImportOptions
from kd_system.teachers.imports.states import env_states

Forward = Callable[[np.ndarray], np.ndarray]
PROBE_STATES = 4  # a batch above 1: a file exported with a fixed batch of 1 fails here, not in the actors


def _check_options(options: ImportOptions) -> None:
    if options.output_kind not in ("q", "logits"):
        given = f" (got {options.output_kind!r})" if options.output_kind is not None else ""
        raise CheckpointError(f"--output-kind is required for TorchScript and ONNX teachers{given}: the file does not "
                              "say what it outputs; pass --output-kind q (Q-values) or --output-kind logits")
    if options.obs_layout not in LAYOUTS:
        raise CheckpointError(f"--obs-layout {options.obs_layout!r} must be chw or hwc (the frame stack axis first "
                              "or last in what the network takes)")
    if not (math.isfinite(options.obs_scale) and options.obs_scale > 0):
        raise CheckpointError(f"--obs-scale {options.obs_scale!r} must be a positive number (1/255 for [0, 1] pixels)")


def _read(source: Path) -> bytes:
    try:
        return source.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{source} cannot be read ({exc.strerror}); pass the teacher file") from None


def _adapt(obs: np.ndarray, network: dict[str, Any]) -> np.ndarray:
    """Our observations as the spec says the file takes them; numpy, apart from the runtime's torch adapter."""
    x = np.asarray(obs)
    if network["input_dtype"] == "uint8":
        x = x.astype(np.uint8)
    else:
        x = x.astype(np.float32) * np.float32(network["input_scale"])
    if network["input_layout"] == "hwc" and x.ndim == 4:  # (batch, stack, h, w) -> (batch, h, w, stack)
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x)


def _torchscript_reference(source: Path, network: dict[str, Any]) -> Forward:
    with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.13, and still works
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(source), map_location="cpu").eval()

    @torch.inference_mode()
    def forward(obs: np.ndarray) -> np.ndarray:
        out = scripted(torch.from_numpy(_adapt(obs, network)))
        if not isinstance(out, torch.Tensor):
            raise CheckpointError(f"{source} returns a {type(out).__name__}, not one tensor; export a module whose "
                                  "forward returns one value per action")
        return out.float().numpy()

    return forward


def _onnx_reference(source: Path, network: dict[str, Any]) -> Forward:
    import onnxruntime as ort

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name

    def forward(obs: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([output_name], {input_name: _adapt(obs, network)})[0], dtype=np.float32)

    return forward


def _onnx_facts(data: bytes, source: Path) -> tuple[str, str]:
    """The input type the model declares (float32 or uint8) and the producer it records."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and others for bytes that are not a model
        raise CheckpointError(f"{source} is not an ONNX model ({type(exc).__name__}: the file is truncated or "
                              "corrupt); re-export it with torch.onnx.export or copy it again") from None
    weights = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]  # old exports list weights as inputs
    elem = inputs[0].type.tensor_type.elem_type if inputs else onnx.TensorProto.FLOAT
    if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8):
        raise CheckpointError(f"{source}: input {inputs[0].name} is {onnx.TensorProto.DataType.Name(elem).lower()}; "
                              "kd_system feeds float32 or uint8: re-export the model with one of them")
    producer = f"{model.producer_name} {model.producer_version}".strip()
    return ("uint8" if elem == onnx.TensorProto.UINT8 else "float32"), producer or "unknown"


def _probe(reference: Forward, source: Path, spaces: EnvSpaces, options: ImportOptions) -> np.ndarray:
    """A few of --env's observations, on which the file's outputs are checked to be (batch, the env's actions)."""
    obs = env_states(options.env_id, PROBE_STATES, seed=0, num_envs=2)
    try:
        out = reference(obs)
    except CheckpointError:
        raise
    except Exception as exc:  # the file's own runtime raises its own types for inputs it does not take
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        text = lines[-1] if "Traceback" in str(exc) else " ".join(lines)  # TorchScript: its error is the last line
        raise CheckpointError(f"{source} does not run on --env {options.env_id}'s observations {spaces.obs_shape} "
                              f"given as --obs-layout {options.obs_layout} ({text[:240]}); check --env and "
                              "--obs-layout, and export with a dynamic batch axis") from None
    if out.shape != (len(obs), spaces.num_actions):
        raise CheckpointError(f"{source}: its output has shape {tuple(out.shape)} for {len(obs)} observations, not "
                              f"({len(obs)}, {spaces.num_actions}) for --env {options.env_id}'s {spaces.num_actions} "
                              "actions; pass the env it was trained on, or export one output of one value per action")
    return obs


def _protocol(spaces: EnvSpaces, options: ImportOptions, dtype: str) -> dict[str, Any]:
    """What is known of the training env: only what the user said; nothing is assumed."""
    if not spaces.pixels:
        return {}
    scaling = ("raw uint8 pixels (the model's input type)" if dtype == "uint8"
               else f"pixels times {options.obs_scale:.6g} before the network")
    protocol: dict[str, Any] = {"obs_layout": options.obs_layout, "pixel_scaling": scaling,
                                "trained_env": options.trained_env, "assumed": False}
    if options.trained_env is not None and options.trained_env.endswith("-v4"):
        protocol |= V4_DEFAULTS  # a v4 id says its dynamics: no sticky actions (NoFrameskip: skip in a wrapper)
    return protocol


def _convert(kind: str, source: Path, spaces: EnvSpaces, options: ImportOptions) -> Converted:
    _check_options(options)
    data = _read(source)
    dtype, producer = _onnx_facts(data, source) if kind == "onnx" else ("float32", "unknown")
    network = {"kind": kind, "input_layout": options.obs_layout, "input_scale": float(options.obs_scale),
               "input_dtype": dtype}
    module = load_opaque(network, spaces.num_actions, data, str(source))  # a corrupt file fails here
    reference = (_onnx_reference if kind == "onnx" else _torchscript_reference)(source, network)
    obs = _probe(reference, source, spaces, options)
    with torch.inference_mode():
        module(torch.from_numpy(obs))  # the runtime path the actors will take, on the same observations
    notes = [f"runs as the {kind} file itself; output kind {options.output_kind} as --output-kind says (the file "
             "does not record it)"]
    if dtype == "uint8" and options.obs_scale != 1.0:
        notes.append(f"--obs-scale {options.obs_scale:g} not applied: the model takes uint8 pixels")
    if spaces.pixels and options.trained_env is None:
        notes.append("training env unknown (no --trained-env): its sticky actions and no-op starts are not compared")
    return Converted(
        network=network, weights=data, obs_shape=tuple(spaces.obs_shape), num_actions=spaces.num_actions,
        output_kind=str(options.output_kind), library="onnx" if kind == "onnx" else "torch",
        library_version=producer, algorithm="unknown", source_params=count_parameters(module),
        reference=reference, reference_name=_reference_name(kind), protocol=_protocol(spaces, options, dtype),
        notes=tuple(notes))


def _reference_name(kind: str) -> str:
    if kind == "onnx":
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} InferenceSession"
    return f"torch {torch.__version__.split('+')[0]} torch.jit.load"


def convert_torchscript(source: Path, spaces: EnvSpaces, options: ImportOptions) -> Converted:
    return _convert("torchscript", source, spaces, options)


def convert_onnx(source: Path, spaces: EnvSpaces, options: ImportOptions) -> Converted:
    return _convert("onnx", source, spaces, options)
