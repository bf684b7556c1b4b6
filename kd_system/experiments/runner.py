"""Run the grid: each cell is a real ``kd-system run`` subprocess, each baseline a scratch subprocess.

Resumable: a cell whose ``summary.json`` exists (or a baseline whose JSON exists) is not rerun.
A cell directory without a summary is a run that was cut off; it is removed and run again from
the start, because a resumed run would mix two sessions' wall clocks into the figures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kd_system

from kd_system.experiments.grid import Cell, Grid, env_slug, shipped_config_name, student_shape

THRESHOLD = 0.95


def child_env() -> dict[str, str]:
    # children import the same kd_system as this process (a worktree or a checkout, not whatever is installed)
    root = str(Path(kd_system.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def cell_command(grid: Grid, cell: Cell, runs_dir: Path) -> list[str]:
    sets = [f"head.runs_dir={runs_dir}", f"head.run_name={cell.name}", *student_shape(cell.env_id, cell.size).overrides(),
            f"learner.loss={cell.loss}", f"actors.acting={cell.acting}", *grid.overrides(cell)]
    command = [sys.executable, "-m", "kd_system.cli", "run", "--config", shipped_config_name(cell.env_id)]
    for item in sets:
        command += ["--set", item]
    return command


def run_resumable(command: list[str], run_dir: Path, log_path: Path, tag: str, log=print) -> dict | None:
    """Run one ``kd-system run`` subprocess into ``run_dir`` unless it finished earlier; its summary, or None."""
    if (run_dir / "summary.json").is_file():
        log(f"{tag}: done earlier, skipped")
        return json.loads((run_dir / "summary.json").read_text())
    if run_dir.exists():
        log(f"{tag}: removing an unfinished run directory and starting it again")
        shutil.rmtree(run_dir)
    log(f"{tag}: start")
    start = time.monotonic()
    with open(log_path, "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())
    wall = time.monotonic() - start
    if code != 0 or not (run_dir / "summary.json").is_file():
        log(f"{tag}: FAILED (exit {code}) after {wall:.0f} s; see {log_path}")
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    log(f"{tag}: finished in {wall:.0f} s: normalized {summary['normalized_score']:.4f} after "
        f"{summary['env_steps']} env steps, {summary['learner_updates']} updates ({summary['stop_reason']})")
    return summary


def run_cells(grid: Grid, out_dir: Path, log=print) -> None:
    runs_dir, logs_dir = out_dir / "runs", out_dir / "logs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    for index, cell in enumerate(grid.cells, 1):
        run_resumable(cell_command(grid, cell, runs_dir), runs_dir / cell.name, logs_dir / f"{cell.name}.log",
                      f"[cell {index}/{len(grid.cells)}] {cell.name}", log)


def scratch_path(out_dir: Path, env_id: str, size: float) -> Path:
    return out_dir / "scratch" / f"{env_slug(env_id)}-{size * 100:g}pct-dqn.json"


def run_scratch(grid: Grid, out_dir: Path, log=print) -> None:
    jobs = [(env_id, size) for env_id in grid.scratch_envs for size in grid.scratch_sizes]
    (out_dir / "scratch").mkdir(parents=True, exist_ok=True)
    budget = grid.scratch_budget
    for index, (env_id, size) in enumerate(jobs, 1):
        path = scratch_path(out_dir, env_id, size)
        tag = f"[scratch {index}/{len(jobs)}] {path.stem}"
        if path.is_file():
            log(f"{tag}: done earlier, skipped")
            continue
        network = student_shape(env_id, size).network
        log(f"{tag}: start (RLlib DQN, {network.get('preset') or network['hidden']}, up to {budget.max_env_steps} env steps / {budget.max_wall_s:g} s)")
        command = [sys.executable, "-m", "kd_system.experiments.scratch_main", "--env", env_id,
                   "--network", json.dumps(network), "--out", str(path),
                   "--budget", json.dumps(budget.__dict__)]
        start = time.monotonic()
        with open(out_dir / "logs" / f"{path.stem}.log", "w") as out:
            code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        if code != 0 or not path.is_file():
            log(f"{tag}: FAILED (exit {code}); see {out_dir / 'logs' / f'{path.stem}.log'}")
            continue
        result = json.loads(path.read_text())
        reached = result["env_steps_to_threshold"]
        log(f"{tag}: finished in {time.monotonic() - start:.0f} s: " + (
            f"{THRESHOLD} reached at {reached} env steps" if reached is not None
            else f"{THRESHOLD} not reached within {result['env_steps_end']} env steps"))
