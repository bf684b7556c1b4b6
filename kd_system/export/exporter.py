"""``export_checkpoint``: every check first (request, checkpoint, --out, calibration source), then
each network exported, quantized and measured in memory, then all files written at once."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kd_system.errors import ConfigError
from kd_system.metrics import say

from kd_system.export.calibration import STORE_REFUSAL, plan_calibration, teacher_states
from kd_system.export.onnx_file import to_onnx
from kd_system.export.outputs import check_outputs, output_paths, sidecar_path, write_outputs
from kd_system.export.parity import check_fp32, measure
from kd_system.export.quantize import quantize_cnn, quantize_mlp
from kd_system.export.records import (CALIBRATIONS, FORMATS, CalibrationPlan, Exported, ExportRequest,
                                      ExportResult, Parity, Source)
from kd_system.export.sidecar import build_sidecar
from kd_system.export.sources import resolve_sources
from kd_system.export.torchscript_file import to_torchscript


def check_request(request: ExportRequest) -> None:
    if request.fmt not in FORMATS:
        raise ConfigError(f"--format {request.fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    if request.int8 and request.fmt != "onnx":
        raise ConfigError("--int8 applies to ONNX only (onnxruntime quantizes the file); use --format onnx --int8, "
                          "or drop --int8 for TorchScript")
    if request.calibration is not None and request.calibration not in CALIBRATIONS:
        raise ConfigError(f"--calibration {request.calibration!r} is unknown; use teacher")
    if request.calibration == "store":
        raise ConfigError(STORE_REFUSAL)
    if request.calibration_states < 1:
        raise ConfigError(f"--calibration-states {request.calibration_states} must be at least 1")


def _export(source: Source, request: ExportRequest, plan: CalibrationPlan | None) -> tuple[Exported, Parity]:
    name = str(source.path)
    module = source.bundle.module()
    exported = (to_onnx if request.fmt == "onnx" else to_torchscript)(module, source.spec, name)
    if not request.int8:
        parity = measure(source.spec, module, exported, name)
        check_fp32(parity, request.fmt, name)
        return exported, parity
    if plan is None:
        quantized = quantize_mlp(exported)
    else:
        say(f"calibrating on {plan.count} states of {plan.teacher} playing {plan.env_id}")
        states: np.ndarray = teacher_states(plan, source.spec.obs_shape)
        quantized = quantize_cnn(exported, states)
    return quantized, measure(source.spec, module, quantized, name)


def export_checkpoint(request: ExportRequest) -> list[ExportResult]:
    """One file and sidecar per network of ``request.checkpoint``; all or nothing is written."""
    check_request(request)
    sources = resolve_sources(request.checkpoint)
    paths = output_paths(request.out.expanduser(), sources)
    check_outputs(paths, request.force)
    plans = [plan_calibration(source, request) for source in sources]
    files: list[tuple[Path, bytes]] = []
    results = []
    for source, path, plan in zip(sources, paths, plans):
        exported, parity = _export(source, request, plan)
        sidecar = build_sidecar(source, exported, parity, plan, path.name)
        files += [(path, exported.data), (sidecar_path(path), json.dumps(sidecar, indent=2).encode() + b"\n")]
        results.append(ExportResult(path, sidecar_path(path), parity, sidecar["precision"]))
    write_outputs(files)
    return results
