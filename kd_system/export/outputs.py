"""Where an export goes: ``--out`` (or one ``--out`` per task), checked before any work and written
through temporary names in the same folder, so a refusal or a crash leaves no partial file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kd_system.errors import ConfigError

from kd_system.export.records import Source

SIDECAR_SUFFIX = ".json"


def sidecar_path(path: str | os.PathLike) -> Path:
    """``student.onnx`` -> ``student.onnx.json``: the name says which file it describes."""
    return Path(str(path) + SIDECAR_SUFFIX)


def _safe(task: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in task)


def output_paths(out: Path, sources: list[Source]) -> list[Path]:
    """``--out student.onnx`` for one network; ``student.<task>.onnx`` per task of a multi-task snapshot."""
    if len(sources) == 1:
        return [out]
    stem, suffix = (out.name[: -len(out.suffix)], out.suffix) if out.suffix else (out.name, "")
    return [out.with_name(f"{stem}.{_safe(str(source.task))}{suffix}") for source in sources]


def _check_folder(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(f"--out {path}: the folder {folder} does not exist (or is a file); create it or pick "
                          "another --out")
    try:  # os.access says yes to root on a read-only mount; creating a file is the real test
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot write in {folder} ({exc.strerror}); pick another --out") from None


def check_outputs(paths: list[Path], force: bool) -> None:
    for path in paths:
        if path.is_dir():
            raise ConfigError(f"--out {path} is a directory; pass a file name, e.g. {path / 'student.onnx'}")
        _check_folder(path)
        held = [p for p in (path, sidecar_path(path)) if p.exists()]
        if held and not force:
            raise ConfigError(f"--out {path}: {held[0]} already exists; pass --force to replace it, or another --out")


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_outputs(files: list[tuple[Path, bytes]]) -> None:
    """All temporaries first, then renames: a failed write leaves the old files (or none)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            temp = _temp_name(path)
            staged.append((temp, path))
            temp.write_bytes(data)
        for temp, path in staged:
            os.replace(temp, path)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
