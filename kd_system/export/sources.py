"""What CHECKPOINT names: a single-task checkpoint (a teacher, a student snapshot, a run's best
checkpoint) or a multi-task snapshot, whose tasks are exported one file each."""
from __future__ import annotations

import json
from pathlib import Path

from kd_system.errors import CheckpointError
from kd_system.policies.files import SPEC_FILE, load_bundle
from kd_system.policies.opaque import OPAQUE_FILES, is_opaque

from kd_system.export.records import Source

COUNTERS_FILE = "counters.json"  # checkpoints/run_dir.py: a snapshot's counters name its tasks


def _task_names(path: Path) -> list[str]:
    """The tasks of a multi-task snapshot, or [] where ``path`` is no such snapshot."""
    counters = path / COUNTERS_FILE
    if (path / SPEC_FILE).is_file() or not counters.is_file():
        return []
    try:
        tasks = json.loads(counters.read_text()).get("tasks") or []
    except (OSError, json.JSONDecodeError, AttributeError):
        raise CheckpointError(f"{counters} is corrupt; export another snapshot of the run") from None
    return [str(name) for name in tasks] if len(tasks) > 1 else []


def _refuse_run_directory(path: Path) -> None:
    if not (path / SPEC_FILE).is_file() and (path / "checkpoints").is_dir():
        raise CheckpointError(f"{path} is a run directory, not a checkpoint; pass one of its snapshots "
                              f"({path}/checkpoints/update-…) or summary.json's best_checkpoint")


def _refuse_opaque(source: Source) -> None:
    kind = source.spec.network.get("kind")
    if is_opaque(source.spec.network):
        raise CheckpointError(f"{source.path} is an opaque {kind} teacher: it already is a {kind} file "
                              f"({source.path / OPAQUE_FILES[kind]}); use that file, there is nothing to export")


def resolve_sources(checkpoint: Path) -> list[Source]:
    """One Source per network to export; a missing or corrupt checkpoint fails here, naming its file."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        _refuse_run_directory(path)
    tasks = _task_names(path) if path.is_dir() else []
    if tasks:
        sources = [Source(load_bundle(path / name), path / name, name) for name in tasks]
    else:
        sources = [Source(load_bundle(path), path)]  # load_bundle's errors name the missing file
    for source in sources:
        _refuse_opaque(source)
    return sources
