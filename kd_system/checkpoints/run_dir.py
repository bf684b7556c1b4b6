"""A run's directory: resolved config, metrics, snapshots, run state and summary.

Snapshots are ordinary policy checkpoints (spec.json + model.safetensors) with the optimizer
state and counters beside them, so ``kd-system eval`` reads a snapshot like a teacher. A
multi-task snapshot holds one such checkpoint per task, in a folder named after the task.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from kd_system.config import RunConfig, load_config, save_config
from kd_system.errors import CheckpointError, ConfigError
from kd_system.policies.files import PolicyBundle, load_bundle, save_bundle
from kd_system.types import LearnerState

CONFIG_FILE = "config.yaml"
STATE_FILE = "run_state.json"
OPTIMIZER_FILE = "optimizer.pt"
COUNTERS_FILE = "counters.json"
EVAL_FILE = "eval.json"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class RunDirectory:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.snapshots_dir = self.root / "checkpoints"
        self.metrics_path = self.root / "metrics.jsonl"
        self.tensorboard_dir = self.root / "tensorboard"
        self.summary_path = self.root / "summary.json"
        self.config_path = self.root / CONFIG_FILE
        self.state_path = self.root / STATE_FILE

    @classmethod
    def create(cls, runs_dir: str, name: str, config: RunConfig) -> "RunDirectory":
        base = Path(runs_dir).expanduser()
        if base.exists() and not base.is_dir():
            raise ConfigError(f"head.runs_dir {base} is a file; point it at a directory (created if missing)")
        root = base / name
        if root.exists():
            raise ConfigError(f"run directory {root} already exists; pick another head.run_name or resume it with --resume {root}")
        try:
            root.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"head.runs_dir: cannot create {root} ({exc.strerror}); pick a directory you can write to") from None
        run = cls(root)
        run.snapshots_dir.mkdir()
        save_config(config, run.config_path)
        return run

    def remove_if_unused(self) -> None:
        """Remove a new run's directory that holds nothing but what ``create`` wrote (a run refused
        once Ray was up, e.g. more actors than the cluster holds): no stub is left behind. Anything
        more (a snapshot, metrics, a summary) and it stays."""
        made = {self.config_path, self.snapshots_dir}
        if all(path in made for path in self.root.iterdir()) and not any(self.snapshots_dir.iterdir()):
            shutil.rmtree(self.root)

    @classmethod
    def open_existing(cls, path: str, overrides: list[str]) -> tuple["RunDirectory", RunConfig]:
        root = Path(path).expanduser()
        if not (root / CONFIG_FILE).is_file():
            raise CheckpointError(f"{root} is not a kd_system run directory (no {CONFIG_FILE}); pass the directory a run created")
        config = load_config(str(root / CONFIG_FILE), overrides)
        run = cls(root)
        if overrides:
            save_config(config, run.config_path)
        return run, config

    def read_state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {}
        try:
            return json.loads(self.state_path.read_text())
        except json.JSONDecodeError:
            raise CheckpointError(f"{self.state_path} is corrupt; delete it to resume from the latest snapshot's counters") from None

    def write_state(self, state: dict[str, Any]) -> None:
        _write_json(self.state_path, state)

    def write_snapshot(self, learner_state: LearnerState, counters: dict[str, Any], task_names: list[str]) -> Path:
        path = self.snapshots_dir / f"update-{learner_state.updates:09d}"
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        students = learner_state.students
        if len(students) == 1:
            save_bundle(tmp, students[0])
        else:
            for name, bundle in zip(task_names, students):
                save_bundle(tmp / name, bundle)
        (tmp / OPTIMIZER_FILE).write_bytes(learner_state.optimizer)
        _write_json(tmp / COUNTERS_FILE, {**counters, "updates": learner_state.updates, "tasks": task_names,
                                          "samples": learner_state.samples, "written_at": time.time()})
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)  # a snapshot appears whole or not at all
        return path

    def snapshots(self) -> list[Path]:
        if not self.snapshots_dir.is_dir():
            return []
        return sorted(p for p in self.snapshots_dir.iterdir() if p.is_dir() and p.name.startswith("update-")
                      and not p.name.endswith(".partial"))

    def prune(self, keep: int, protect: set[Path]) -> None:
        for path in self.snapshots()[:-keep]:
            if path not in protect:
                shutil.rmtree(path, ignore_errors=True)

    def write_eval(self, snapshot: Path, report: dict[str, Any]) -> None:
        if snapshot.is_dir():
            _write_json(snapshot / EVAL_FILE, report)

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.summary_path, summary)


def load_snapshot(path: Path) -> tuple[list[PolicyBundle], bytes | None, dict[str, Any]]:
    """The student of every task (one for single-task runs), optimizer bytes and counters."""
    counters_path = path / COUNTERS_FILE
    try:
        counters = json.loads(counters_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"{counters_path} is missing or corrupt; resume from an earlier snapshot (delete {path})") from None
    task_names = counters.get("tasks") or []
    bundles = [load_bundle(path / name) for name in task_names] if len(task_names) > 1 else [load_bundle(path)]
    optimizer_path = path / OPTIMIZER_FILE
    optimizer = optimizer_path.read_bytes() if optimizer_path.is_file() else None
    if optimizer is not None:
        try:  # validate now so a corrupt file fails with its path, before Ray starts
            torch.load(optimizer_path, map_location="cpu", weights_only=True)
        except Exception:
            raise CheckpointError(f"{optimizer_path} is corrupt; delete it to resume with a fresh optimizer") from None
    return bundles, optimizer, counters
