"""The JSON sidecar beside every exported file: what it was made from, what it takes and gives,
how closely it matches its source, and the software that made it."""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from typing import Any

import onnxruntime
import torch

from kd_system.policies.files import PolicySpec

from kd_system.export.records import (INPUT_NAME, SIDECAR_FORMAT, SIDECAR_VERSION, CalibrationPlan, Exported,
                                      Parity, Source, input_dtype)


def preprocessing(spec: PolicySpec) -> str:
    """What the file does to its input before the first layer, in words."""
    network = spec.network
    if network.get("kind") == "cnn":
        scale = float(network.get("input_scale", 1 / 255))
        return "x/255 inside the graph" if scale == 1 / 255 else f"x*{scale:g} inside the graph"
    norm = network.get("obs_norm")
    if norm:
        return (f"(x - obs_mean) / sqrt(obs_var + {norm['epsilon']:g}), clipped to +-{norm['clip']:g}, "
                "inside the graph")
    return "none"


def _versions() -> dict[str, str]:
    import onnx

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def build_sidecar(source: Source, exported: Exported, parity: Parity, plan: CalibrationPlan | None,
                  file_name: str) -> dict[str, Any]:
    spec = source.spec
    return {
        "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
        "file": file_name, "file_format": exported.fmt, "sha256": hashlib.sha256(exported.data).hexdigest(),
        "precision": "int8" if exported.quantization else "fp32",
        "exporter": exported.exporter, "opset": exported.opset, "quantization": exported.quantization,
        "source_checkpoint": str(source.path.resolve()), "task": source.task,
        "teacher": spec.model_card.get("distilled_from"),
        "input": {"name": INPUT_NAME, "dtype": input_dtype(spec), "shape": [-1, *spec.obs_shape],
                  "layout": "chw, oldest frame first" if len(spec.obs_shape) == 3 else "vector",
                  "preprocessing": preprocessing(spec)},
        "output": {"name": spec.output_kind, "kind": spec.output_kind, "shape": [-1, spec.num_actions]},
        "parity": {**asdict(parity), "reference": "source checkpoint, PyTorch fp32",
                   "states_from": f"env_states({spec.env_id!r}, {parity.states}, seed={parity.seed}): random policy",
                   "kl": "mean KL(softmax(source) || softmax(file)), tau=1" if parity.kl_mean is not None else None},
        "calibration": plan.to_json() if plan is not None else None,
        "spec": spec.to_json(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
