"""Exported files as policies again: ``load_exported`` reads the sidecar and returns a bundle the
policy runtime (policies/opaque.py) runs, so ``kd-system eval FILE.onnx`` plays the file itself."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from kd_system.errors import CheckpointError
from kd_system.policies.files import PolicyBundle, PolicySpec, module_from_bytes
from kd_system.policies.opaque import INPUT_DTYPES

from kd_system.export.outputs import sidecar_path
from kd_system.export.records import FORMATS, SIDECAR_FORMAT, SIDECAR_VERSION, SUFFIXES, exported_network


def is_exported(path: str | os.PathLike) -> bool:
    """A file (not a checkpoint directory) that is, or claims by its suffix to be, an exported policy."""
    file = Path(path)
    return file.is_file() and (file.suffix in SUFFIXES.values() or sidecar_path(file).is_file())


def sidecar_of(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed sidecar of an exported file: its source checkpoint, teacher, parity and spec."""
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(f"{side} is missing: {path} was not written by `kd-system export` (or its sidecar "
                              "was not copied with it); copy the sidecar, or import a foreign file with "
                              f"`kd-system teacher import {path} --env ENV_ID --out DIR`")
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{side} is not valid JSON ({exc}); re-export the file") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(f"{side} is not a kd_system export sidecar (missing format={SIDECAR_FORMAT!r})")
    if data.get("format_version") != SIDECAR_VERSION:
        raise CheckpointError(f"{side} has format_version {data.get('format_version')!r}; this kd_system reads "
                              f"version {SIDECAR_VERSION}: re-export the file")
    return data


def _checked_fields(data: dict[str, Any], side: Path) -> tuple[str, str, str]:
    try:
        fmt, dtype, digest = str(data["file_format"]), str(data["input"]["dtype"]), str(data["sha256"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{side} is missing field {exc}; re-export the file") from None
    if fmt not in FORMATS or dtype not in INPUT_DTYPES:
        raise CheckpointError(f"{side}: file_format {fmt!r} / input dtype {dtype!r} are not ones kd_system writes "
                              f"({', '.join(FORMATS)} / {', '.join(INPUT_DTYPES)}); re-export the file")
    return fmt, dtype, digest


def load_exported(path: str | os.PathLike) -> PolicyBundle:
    """The file's bytes as the bundle's weights, its spec that of the source with an opaque network."""
    file = Path(path)
    data = sidecar_of(file)
    side = sidecar_path(file)
    fmt, dtype, digest = _checked_fields(data, side)
    try:
        payload = file.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{file} cannot be read ({exc.strerror}); pass an exported .onnx or .pt file") from None
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"{file} does not match the sha256 in {side.name}: the file is corrupt or was replaced; "
                              "re-export it")
    source = PolicySpec.from_json(data.get("spec"), f"{side} (spec)")
    card = {**source.model_card, "exported": {"file": str(file), "file_format": fmt, "precision": data.get("precision"),
                                             "source_checkpoint": data.get("source_checkpoint"),
                                             "source_network": source.network}}
    spec = replace(source, network=exported_network(fmt, dtype), model_card=card)
    module_from_bytes(spec, payload, str(file))  # an unreadable file fails here, naming it
    return PolicyBundle(spec, payload)
