"""The teacher training's curve from its progress log: the training's own games and the periodic
evaluations against env steps, with the score the teacher must reach.

    python -m kd_system.experiments.teacher_curve runs/pong-sb3/progress.jsonl curve.png --target 18

The two series differ in more than the games they sample: the training plays at its schedule's
epsilon (the Zoo's 0.01 once annealed, unless ``--final-epsilon`` changed it) and the evaluation
at the protocol's (0.05), so a policy that a random action in twenty hurts shows as a gap.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

ROLLING_GAMES = 20


def read_progress(path: Path) -> tuple[list[dict], list[dict]]:
    """(training games, evaluations) from a progress.jsonl that sb3_teacher writes. A part killed
    between saves is replayed from its last save, so its log goes back in steps there: the records
    of the lost stretch are dropped, the replay's kept. A last line cut short (a writer killed
    mid-line, or read while training) is left out."""
    lines = path.read_text().splitlines()
    games, evals = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number} is not a JSON record; pass the training's progress.jsonl") from None
        kind = record.get("kind") if isinstance(record, dict) else None
        if kind in ("episode", "eval"):
            step = record["env_steps"]
            if (games and games[-1]["env_steps"] > step) or (evals and evals[-1]["env_steps"] > step):
                games = [g for g in games if g["env_steps"] <= step]  # the lost stretch, replayed from here on
                evals = [e for e in evals if e["env_steps"] <= step]
            (games if kind == "episode" else evals).append(record)
    if not games and not evals:
        raise ValueError(f"{path} holds no episode or eval records; pass the training's progress.jsonl")
    return games, evals


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, len(values) + 1) - window, 0)]) / counts


def plot_teacher_curve(progress: Path, out: Path, target: float | None = None, title: str = "") -> Path:
    games, evals = read_progress(progress)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=90)
    if games:
        steps = np.array([g["env_steps"] for g in games], dtype=float)
        returns = np.array([g["return"] for g in games], dtype=float)
        ax.scatter(steps, returns, s=4, color="tab:blue", alpha=0.25, linewidths=0)
        ax.plot(steps, _rolling_mean(returns, ROLLING_GAMES), color="tab:blue", linewidth=1.2,
                label=f"training games (its epsilon), mean of the last {ROLLING_GAMES}")
    if evals:
        steps = np.array([e["env_steps"] for e in evals], dtype=float)
        means = np.array([e["mean"] for e in evals], dtype=float)
        # standard errors where the games are logged; one game's score has none
        errors = np.array([np.std(e["returns"], ddof=1) / np.sqrt(len(e["returns"])) if len(e.get("returns", [])) > 1
                           else 0.0 for e in evals])
        count = len(evals[-1].get("returns", [])) or "?"
        ax.errorbar(steps, means, yerr=errors, color="tab:orange", marker="o", markersize=3, linewidth=1,
                    capsize=2, label=f"evaluation ({count} games, protocol epsilon), ± 1 s.e.")
    if target is not None:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:+g}")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e6:g}M"))
    ax.set(xlabel="env steps", ylabel="score per game", title=title or progress.parent.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("progress", type=Path, help="the training's progress.jsonl")
    p.add_argument("out", type=Path, help="the PNG to write")
    p.add_argument("--target", type=float, default=None, help="draw the score the teacher must reach")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    try:
        path = plot_teacher_curve(args.progress, args.out, args.target, args.title)
    except (OSError, ValueError) as exc:
        print(f"teacher_curve: {exc}", file=sys.stderr)
        return 2
    print(f"teacher_curve: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
