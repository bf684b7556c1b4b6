"""Collect one row per finished cell (plus its from-scratch comparison) and write markdown and CSV."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from kd_system.experiments.curves import eval_curve, first_reaching, read_records
from kd_system.experiments.grid import Cell, Grid

COLUMNS = [  # (key, markdown header)
    ("env", "env"), ("student_params", "student params"), ("teacher_pct", "% of teacher"), ("loss", "loss"),
    ("acting", "who acts"), ("final_score", "final score"), ("final_ci95", "95% CI"),
    ("steps_to_095", "env steps to 0.95"), ("wall_s_to_095", "wall s to 0.95 (from 1st env step)"), ("env_steps_end", "env steps (end)"),
    ("wall_s_end", "wall s (end, with start-up)"), ("scratch_steps_to_095", "DQN from scratch: env steps to 0.95"),
    ("scratch_ratio", "scratch / distillation"), ("scratch_best", "DQN from scratch: best score"),
]


def cell_row(cell: Cell, run_dir: Path, scratch: dict | None, threshold: float) -> dict | None:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    curve = eval_curve(read_records(run_dir / "metrics.jsonl"))
    reached = first_reaching(curve, threshold)
    row = {"env": cell.env_id, "student_params": summary["student_params"],
           "teacher_pct": 100 * summary["student_param_fraction"], "loss": cell.loss, "acting": cell.acting,
           "final_score": summary["normalized_score"], "final_ci95": summary["normalized_score_ci95"],
           "steps_to_095": reached.env_steps if reached else None, "wall_s_to_095": reached.wall_s if reached else None,
           "env_steps_end": summary["env_steps"], "wall_s_end": summary["wall_s"],
           "scratch_steps_to_095": None, "scratch_best": None, "scratch_ratio": None, "scratch_note": "",
           # already at the threshold on the first evaluation: the true crossing may be earlier
           "reached_at_first_eval": bool(reached and reached is curve[0])}
    if scratch is not None:
        steps = scratch["env_steps_to_threshold"]
        scores = [p["normalized_score"] for p in scratch.get("curve", []) if not math.isnan(p["normalized_score"])]
        row["scratch_best"] = max(scores) if scores else None  # within its budget: Pong's DQN may not get far
        row["scratch_steps_to_095"] = steps
        if steps is None:
            row["scratch_note"] = f"not reached within {scratch['env_steps_end']} steps"
            if reached:  # a lower bound on the ratio is still a measured fact
                row["scratch_ratio"] = f">{scratch['env_steps_end'] / reached.env_steps:.1f}"
        elif reached:
            row["scratch_ratio"] = f"{steps / reached.env_steps:.1f}"
    return row


def collect_rows(grid: Grid, out_dir: Path, threshold: float) -> list[dict]:
    from kd_system.experiments.runner import scratch_path

    rows = []
    for cell in grid.cells:
        path = scratch_path(out_dir, cell.env_id, cell.size)
        scratch = json.loads(path.read_text()) if path.is_file() else None
        row = cell_row(cell, out_dir / "runs" / cell.name, scratch, threshold)
        if row is not None:
            rows.append(row)
    return rows


def _text(key: str, row: dict) -> str:
    value = row.get(key)
    if key == "final_ci95":
        low, high = value
        return "–" if any(math.isnan(v) for v in (low, high)) else f"[{low:.3f}, {high:.3f}]"
    if key == "scratch_steps_to_095" and value is None:
        return row.get("scratch_note") or "not run"
    if value is None:
        return "not reached" if key in ("steps_to_095", "wall_s_to_095") else "–"
    if key in ("steps_to_095", "wall_s_to_095") and row.get("reached_at_first_eval"):
        return "≤ " + (f"{value:,}" if key == "steps_to_095" else f"{value:.1f}")
    if key in ("final_score", "scratch_best"):
        return f"{value:.3f}"
    if key == "teacher_pct":
        return f"{value:.2f}%"
    if key == "wall_s_to_095":
        return f"{value:.1f}"
    if key == "wall_s_end":
        return f"{value:.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = ["| " + " | ".join(header for _, header in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_text(key, row) for key, _ in COLUMNS) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")


def write_csv(rows: list[dict], path: Path) -> None:
    keys = [key for key, _ in COLUMNS] + ["scratch_note", "reached_at_first_eval"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for row in rows:
            values = []
            for key in keys:
                value = row.get(key)
                if key == "final_ci95":
                    value = f"{value[0]:.4f};{value[1]:.4f}"
                elif isinstance(value, float):
                    value = f"{value:.4f}"
                values.append("" if value is None else value)
            writer.writerow(values)
