"""Metrics to plain JSONL and TensorBoard, and a live progress line for the console."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Kinds of record stepped by env steps (launch/monitor.py); every other kind is stepped by learner updates.
ENV_STEP_KINDS = frozenset({"actor"})


@dataclass(frozen=True)
class ResumedAt:
    """Where a resumed run's counters continue: the resumed snapshot's updates and the env steps."""
    updates: int
    env_steps: int

    def step_of(self, kind: str) -> int:
        return self.env_steps if kind in ENV_STEP_KINDS else self.updates


class MetricsLog:
    """Records by kind, each with the step of its axis (env steps or learner updates). TensorBoard
    gets one writer per axis: tensorboard/ (updates) and tensorboard/env_steps/, since a purge on
    resume hides every tag of a writer at or above one step, and the axes count differently."""

    def __init__(self, jsonl_path: Path, tensorboard_dir: Path, resumed_at: ResumedAt | None = None):
        if resumed_at is not None:
            _drop_records_beyond(jsonl_path, resumed_at)
        self.jsonl = open(jsonl_path, "a", buffering=1)
        self.tensorboard: dict[bool, Any] = {}  # by_env_steps -> SummaryWriter
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency; stay useful if someone removed it
            return
        for by_env_steps, where in ((False, tensorboard_dir), (True, tensorboard_dir / "env_steps")):
            # purge_step hides the events the killed session logged past the point this one resumes
            # from, so TensorBoard shows no step twice; None: nothing is hidden
            purge = None if resumed_at is None else 1 + (resumed_at.env_steps if by_env_steps else resumed_at.updates)
            self.tensorboard[by_env_steps] = SummaryWriter(str(where), purge_step=purge)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        writer = self.tensorboard.get(kind in ENV_STEP_KINDS)
        if writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.jsonl.close()
        for writer in self.tensorboard.values():
            writer.close()


def _drop_records_beyond(path: Path, resumed_at: ResumedAt) -> None:
    """Rewrite metrics.jsonl without the records a killed session logged past the resumed point
    (the resumed run logs those steps again), and without a line torn by the kill. Atomic: a
    crash now leaves the old file or the new one."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line, cut short when the head was killed mid-write
            continue
        if record.get("step", 0) <= resumed_at.step_of(record.get("kind", "")):
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def human(number: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.1f}{unit}"
    return f"{number:.0f}"


def say(message: str) -> None:
    print(f"kd-system: {message}", file=sys.stderr, flush=True)


def progress_line(elapsed_s: float, counters: dict[str, Any], rates: dict[str, float], loss: float | None,
                  latest_score: float | None, best_score: float | None) -> str:
    parts = [f"[{elapsed_s:6.1f}s]",
             f"states {human(counters['states_labelled'])} ({human(rates['states'])}/s)",
             f"updates {human(counters['updates'])} ({human(rates['updates'])}/s)",
             f"loss {loss:.4f}" if loss is not None else "loss -"]
    if latest_score is not None:
        best = f"{best_score:.3f}" if best_score is not None else "-"
        parts.append(f"score {latest_score:.3f} (best {best})")
    else:
        parts.append("score -")
    return " | ".join(parts)
