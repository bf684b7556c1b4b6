"""Plots of the results (matplotlib, Agg backend: files only, no display needed)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from kd_system.experiments.curves import eval_curve, read_records  # noqa: E402
from kd_system.experiments.grid import Grid, env_slug  # noqa: E402
from kd_system.experiments.runner import scratch_path  # noqa: E402

COLOURS = {"teacher": "tab:blue", "student": "tab:orange", "mixed": "tab:green"}
SIZE_STYLES = ["-", "--", ":", "-."]


def plot_curves(grid: Grid, out_dir: Path, report_dir: Path) -> list[Path]:
    """Normalized score vs env steps, one figure per env, one curve per (who acts, size) with the first loss."""
    written = []
    for env_id in dict.fromkeys(c.env_id for c in grid.cells):
        cells = [c for c in grid.cells if c.env_id == env_id]
        main_loss = cells[0].loss
        sizes = sorted({c.size for c in cells}, reverse=True)
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=80)
        for cell in cells:
            metrics = out_dir / "runs" / cell.name / "metrics.jsonl"
            if cell.loss != main_loss or not metrics.is_file():
                continue
            curve = eval_curve(read_records(metrics))
            if curve:
                ax.plot([p.env_steps for p in curve], [p.normalized_score for p in curve],
                        SIZE_STYLES[sizes.index(cell.size) % len(SIZE_STYLES)], color=COLOURS[cell.acting],
                        marker=".", label=f"{cell.acting}-driven, {cell.size * 100:g}%")
        for size in sizes:  # the same students trained from scratch, in the scratch colour
            path = scratch_path(out_dir, env_id, size)
            points = json.loads(path.read_text()).get("curve", []) if path.is_file() else []
            if points:
                ax.plot([p["env_steps"] for p in points], [p["normalized_score"] for p in points],
                        SIZE_STYLES[sizes.index(size) % len(SIZE_STYLES)], color="tab:red", linewidth=0.8,
                        label=f"DQN from scratch, {size * 100:g}%")
        ax.axhline(0.95, color="grey", linewidth=0.8, linestyle=":")
        ax.set(title=f"{env_id}: distillation ({main_loss})", xlabel="env steps", ylabel="teacher-normalized score",
               ylim=(-0.1, 1.1))
        if ax.get_legend_handles_labels()[0]:  # an env whose cells have not run yet gets an empty frame
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = report_dir / f"curves-{env_slug(env_id)}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _pct(pct: float) -> str:
    """1.8, 6.6, 25: a Sun & Fazli 1.7% student is not rounded to 2%."""
    return f"{pct:.2g}" if pct < 10 else f"{pct:.0f}"


def plot_steps_bars(rows: list[dict], report_dir: Path, threshold: float) -> list[Path]:
    """Env steps to the threshold per cell, beside the same student trained from scratch (log scale)."""
    if not rows:
        return []
    labels, values, colours = [], [], []
    for env_id in dict.fromkeys(r["env"] for r in rows):
        env_rows = [r for r in rows if r["env"] == env_id]
        for row in env_rows:
            missed = "" if row["steps_to_095"] else " (not reached)"
            labels.append(f"{env_id.split('-')[0]} {_pct(row['teacher_pct'])}% {row['loss']} {row['acting']}{missed}")
            values.append(row["steps_to_095"] or 0)
            colours.append(COLOURS.get(row["acting"], "tab:gray"))
        # one bar per student size that has a baseline (cells of one size share it)
        scratches = {r["student_params"]: r for r in env_rows if r.get("scratch_steps_to_095") or r.get("scratch_note")}
        for scratch in scratches.values():
            reached = scratch["scratch_steps_to_095"]
            end = int(scratch["scratch_note"].split()[3]) if reached is None else reached
            labels.append(f"{env_id.split('-')[0]} {_pct(scratch['teacher_pct'])}% DQN from scratch"
                          + ("" if reached else " (not reached)"))
            values.append(end)
            colours.append("tab:red" if reached else "mistyrose")
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(labels) + 1.2), dpi=80)
    ax.barh(range(len(labels)), values, color=colours)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # a short log axis needs 1-2-5 ticks
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels on a short log axis overlap
    ax.set(xlabel=f"env steps to normalized score {threshold} (log scale)",
           title="Distillation vs the same student trained with RLlib DQN")
    fig.tight_layout()
    path = report_dir / "steps-to-095.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


def plot_seed_curves(run_dirs: dict[int, Path], report_dir: Path) -> list[Path]:
    """Per task: normalized score (top) and greedy agreement on held-out teacher states (bottom) vs
    learner updates, one line per seed (``run_dirs``: seed -> its run directory; where a repeat puts
    them is repeats.py's business). The axes are zoomed near the teacher (the interesting
    differences between seeds are in the third decimal), widened to show students above it."""
    runs = {seed: run_dir / "metrics.jsonl" for seed, run_dir in run_dirs.items()}
    runs = {seed: [r for r in read_records(path) if r.get("kind") == "eval"] for seed, path in runs.items() if path.is_file()}
    runs = {seed: evals for seed, evals in runs.items() if evals}
    if not runs:
        return []
    first = next(iter(runs.values()))[0]
    tasks = sorted({key.split(".")[0] for key in first if key.endswith(".normalized_score")}) or [""]
    summaries = [run_dirs[seed] / "summary.json" for seed in runs]
    single_title = next((json.loads(p.read_text())["env_id"] for p in summaries if p.is_file()), "score")
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks), 5.2), dpi=80, squeeze=False)
    for column, task in enumerate(tasks):
        prefix = f"{task}." if task else ""
        highest = 1.0
        for seed, evals in runs.items():
            updates = [r["updates"] for r in evals]
            for row, key in enumerate(("normalized_score", "agreement_teacher_states")):
                values = [r.get(prefix + key, float("nan")) for r in evals]
                axes[row][column].plot(updates, values, marker=".", linewidth=1, label=f"seed {seed}")
                if row == 0:
                    highest = max([highest, *(v for v in values if math.isfinite(v))])
        axes[0][column].axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        axes[0][column].set(title=task or single_title, ylabel="teacher-normalized score",
                            ylim=(0.95, max(1.01, highest + 0.005)))
        axes[1][column].set(xlabel="learner updates", ylabel="agreement, teacher states", ylim=(0.85, 1.0))
        for row in (0, 1):
            axes[row][column].xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = report_dir / "curves-seeds.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]
