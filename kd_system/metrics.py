"""Metrics to plain JSONL and TensorBoard, and a live progress line for the console."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, jsonl_path: Path, tensorboard_dir: Path):
        self.jsonl = open(jsonl_path, "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(tensorboard_dir))
        except ImportError:  # tensorboard is a dependency; stay useful if someone removed it
            self.tensorboard = None

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


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
