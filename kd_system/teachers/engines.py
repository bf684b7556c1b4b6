"""A teacher's inference engines: the network the actors label with, built once from the fp32
checkpoint by the export stage's own exporters and quantizers (kd_system/export), and its
fidelity to fp32 torch on held-out states of the env.

- ``torch``: the checkpoint's own network, the reference every other engine is measured against;
- ``torchscript``: traced and frozen (export/torchscript_file.py), run by torch.jit;
- ``onnxruntime``: the fp32 ONNX file (export/onnx_file.py), run by onnxruntime;
- ``onnxruntime-int8``: that file quantized (export/quantize.py): dynamic for MLPs, static for
  CNNs, whose activation ranges come from calibration states.

An exported engine travels as an ordinary PolicyBundle with an opaque spec (policies/opaque.py):
the file's bytes are its weights. So actors, lookahead and FrozenPolicy run it with no second code
path, and no actor exports or quantizes anything itself.

Held-out and calibration states are both rollouts of the fp32 teacher (greedy, epsilon of its
actions random: what actors that act with the teacher label), from seeds apart, so the int8
ranges are never fitted on the states they are judged on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from kd_system.errors import ConfigError
from kd_system.export.calibration import rollout_states
from kd_system.export.onnx_file import to_onnx
from kd_system.export.quantize import quantize_cnn, quantize_mlp
from kd_system.export.records import (CALIBRATION_EPSILON, CALIBRATION_SEED, DEFAULT_CALIBRATION_STATES, PARITY_SEED,
                                      PARITY_STATES, Exported, exported_network, input_dtype)
from kd_system.export.torchscript_file import to_torchscript
from kd_system.learner.losses import kl_divergence
from kd_system.policies.files import FrozenPolicy, PolicyBundle, PolicySpec
from kd_system.policies.opaque import is_opaque
from kd_system.teachers.config import ENGINES

HELDOUT_STATES = PARITY_STATES  # as many as `kd-system export` checks its files on
HELDOUT_SEED = PARITY_SEED  # calibration rollouts use CALIBRATION_SEED


@dataclass(frozen=True)
class Fidelity:
    """An engine against fp32 torch on the same states."""
    states: int  # 0: not measured, the engine is fp32 torch itself
    greedy_agreement: float  # fraction of states with the same argmax
    kl: float  # mean KL(softmax(torch / tau) || softmax(engine / tau))
    kl_temperature: float  # tau: the kl loss's for the teacher's output kind (losses.resolve_temperature)


@dataclass(frozen=True)
class TeacherEngine:
    """What a run's actors label with, and how closely it follows fp32 torch."""
    name: str
    bundle: PolicyBundle  # what the collectors load
    fidelity: Fidelity
    build_s: float
    calibration_states: int = 0

    def record(self) -> dict[str, Any]:
        """The summary's fields (flat, so they also reach the metrics logs)."""
        f = self.fidelity
        return {"teacher_engine": self.name, "teacher_engine_agreement": f.greedy_agreement,
                "teacher_engine_kl": f.kl, "teacher_engine_kl_temperature": f.kl_temperature,
                "teacher_engine_heldout_states": f.states, "teacher_engine_calibration_states": self.calibration_states}


def needs_calibration(spec: PolicySpec, name: str) -> bool:
    """Static int8 (CNNs) needs activation ranges; dynamic int8 (MLPs) measures them per batch."""
    return name == "onnxruntime-int8" and spec.network.get("kind") == "cnn"


def _as_bundle(spec: PolicySpec, exported: Exported, name: str) -> PolicyBundle:
    # the exported graph scales observations itself, so the opaque spec feeds them as envs give them
    network = {**exported_network(exported.fmt, input_dtype(spec)), "engine": name}
    return PolicyBundle(replace(spec, network=network), exported.data)


def build_engines(bundle: PolicyBundle, names: Sequence[str], source: str,
                  calibration: np.ndarray | None = None) -> dict[str, PolicyBundle]:
    """Each named engine of ``bundle`` (one ONNX export shared by both onnxruntime engines).
    ``calibration``: observations for static int8; needed where ``needs_calibration``."""
    unknown = [name for name in names if name not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine {unknown[0]!r}; the engines are {', '.join(ENGINES)}")
    spec = bundle.spec
    if is_opaque(spec.network) and any(name != "torch" for name in names):
        raise ConfigError(f"{source} is an imported {spec.network['kind']} file, run as it is by its own runtime, "
                          "with no fp32 network to build another engine from; use the engine torch")
    module = bundle.module() if any(name != "torch" for name in names) else None
    onnx: Exported | None = None
    built: dict[str, PolicyBundle] = {}
    for name in names:
        if name == "torch":
            built[name] = bundle
            continue
        if name == "torchscript":
            built[name] = _as_bundle(spec, to_torchscript(module, spec, source), name)
            continue
        onnx = onnx or to_onnx(module, spec, source)
        if name == "onnxruntime":
            built[name] = _as_bundle(spec, onnx, name)
        elif needs_calibration(spec, name):
            if calibration is None:
                raise ValueError("static int8 of a CNN needs calibration states")
            states = np.ascontiguousarray(calibration, dtype=input_dtype(spec))  # what the file's input takes
            built[name] = _as_bundle(spec, quantize_cnn(onnx, states), name)
        else:
            built[name] = _as_bundle(spec, quantize_mlp(onnx), name)
    return built


def fidelity(reference: np.ndarray, outputs: np.ndarray, temperature: float) -> Fidelity:
    """Greedy agreement and KL(tau) of an engine's outputs with fp32 torch's on the same states."""
    agreement = float(np.mean(reference.argmax(axis=1) == outputs.argmax(axis=1)))
    kl = float(kl_divergence(torch.from_numpy(outputs), torch.from_numpy(reference), temperature, temperature))
    return Fidelity(len(reference), agreement, max(kl, 0.0), temperature)  # float rounding can dip below 0


def check_engine(teacher: PolicyBundle, name: str, env_id: str, temperature: float, source: str) -> TeacherEngine:
    """Build the engine ``name`` of ``teacher`` and measure it against the teacher's own fp32 torch
    network on rollouts in ``env_id``. torch is the reference itself: nothing to build or measure."""
    start = time.perf_counter()
    if name == "torch":
        return TeacherEngine(name, teacher, Fidelity(0, 1.0, 0.0, temperature), 0.0)
    reference = FrozenPolicy.from_bundle(teacher)
    calibration = (rollout_states(reference, env_id, DEFAULT_CALIBRATION_STATES, CALIBRATION_SEED, CALIBRATION_EPSILON)
                   if needs_calibration(teacher.spec, name) else None)
    engine = build_engines(teacher, [name], source, calibration)[name]
    heldout = rollout_states(reference, env_id, HELDOUT_STATES, HELDOUT_SEED, CALIBRATION_EPSILON)
    measured = fidelity(reference.outputs(heldout), FrozenPolicy.from_bundle(engine).outputs(heldout), temperature)
    return TeacherEngine(name, engine, measured, time.perf_counter() - start,
                         0 if calibration is None else len(calibration))
