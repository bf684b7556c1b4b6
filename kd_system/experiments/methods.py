"""The methods table (issue 19): every loss, the ensemble and the shrinking student, each under
three seeds, against KL on the same tasks.

``python -m kd_system.experiments.methods --out runs/methods --results kd_system/experiments/results/methods``

The cells are the ``methods`` grid's (kd_system/experiments/methods.yaml: losses at 7%, KL as the
student shrinks), plus a linear student (``student.hidden=[]``) and, where its two extra teachers
exist (``--teachers DIR`` holding ``<env>-seed1`` and ``<env>-seed2``, trained with ``kd-system
teacher train --seed``), an ensemble of the shipped teacher and those two. Each cell is a
``kd-system repeat`` (one real run per seed, resumable: finished seeds are kept), so rerunning the
command after an interruption continues where it stopped. ``--envs`` limits the tasks.

Per cell: the mean final normalized score over seeds with a 95% t-interval over the seeds, each
seed's score, greedy agreement on held-out teacher states, env steps to a 0.95 evaluation (median
over the seeds that got there), and wall time.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from kd_system.experiments.curves import eval_curve, first_reaching, read_records
from kd_system.experiments.grid import env_slug, load_grid, shipped_config_name, student_shape
from kd_system.experiments.repeats import run_seeds, seed_rows, seed_run_dir

THRESHOLD = 0.95


@dataclass(frozen=True)
class MethodCell:
    env_id: str
    method: str  # the row's name: the loss, "kl, N%" for sizes, "linear", "ensemble of 3"
    share: str  # the student's share of the teacher, as the table prints it
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        method = self.method.replace(", ", "-").replace(" ", "-").replace("+", "_plus_").replace("*", "x")
        return f"{env_slug(self.env_id)}-{method.replace('%', 'pct')}"


def cells(envs: list[str] | None, teachers: Path | None) -> list[MethodCell]:
    grid = load_grid("methods")
    found = []
    for cell in grid.cells:
        if envs and cell.env_id not in envs:
            continue
        shape = student_shape(cell.env_id, cell.size)
        method = cell.loss if cell.size == 0.07 else f"kl, {cell.size * 100:g}%"
        found.append(MethodCell(cell.env_id, method, f"{shape.params / shape.teacher_params:.2%}",
                                (*shape.overrides(), f"learner.loss={cell.loss}", f"actors.acting={cell.acting}",
                                 *grid.overrides(cell))))
    for env_id in dict.fromkeys(c.env_id for c in grid.cells):
        if envs and env_id not in envs:
            continue
        base = ("actors.acting=teacher", "learner.loss=kl", *grid.settings, *grid.env_settings.get(env_id, ()))
        teacher_params = student_shape(env_id, 0.07).teacher_params
        linear_params = (_obs_dim(env_id) + 1) * _actions(env_id)
        found.append(MethodCell(env_id, "linear", f"{linear_params / teacher_params:.2%}", ("student.hidden=[]", *base)))
        members = [teachers / f"{env_slug(env_id)}-seed{s}" for s in (1, 2)] if teachers else []
        if members and all((m / "spec.json").is_file() for m in members):
            shape = student_shape(env_id, 0.07)
            share = f"{shape.params / shape.teacher_params:.2%}"
            listed = ",".join([f"shipped:{env_slug(env_id)}", *map(str, members)])
            found.append(MethodCell(env_id, "ensemble of 3", share,
                                    (*shape.overrides(), f"teacher.checkpoint=[{listed}]", *base)))
            # each extra member alone, as the kl row is for the shipped one: the ensemble's rival
            found += [MethodCell(env_id, f"member {member.name.rsplit('-', 1)[-1]} alone", share,
                                 (*shape.overrides(), f"teacher.checkpoint={member}", *base)) for member in members]
    return found


def _spec(env_id: str) -> dict:
    from kd_system.config import load_config, resolve_teacher_path
    config = load_config(shipped_config_name(env_id))
    return json.loads((resolve_teacher_path(config.teacher.checkpoint) / "spec.json").read_text())


def _obs_dim(env_id: str) -> int:
    return math.prod(_spec(env_id)["obs_shape"])


def _actions(env_id: str) -> int:
    return _spec(env_id)["num_actions"]


def steps_to(run_dir: Path, threshold: float = THRESHOLD) -> tuple[int, bool] | None:
    """Env steps at the first evaluation scoring at least ``threshold``, read as the grid reads them
    (experiments/curves.py: placed by the progress records), and whether that was the run's first
    evaluation (the true crossing may then be earlier); None if no evaluation got there."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    curve = eval_curve(read_records(path))
    reached = first_reaching(curve, threshold)
    return (reached.env_steps, reached is curve[0]) if reached else None


def row_of(cell: MethodCell, out: Path, seeds: list[int]) -> dict | None:
    rows = seed_rows(out / cell.slug, seeds)
    if not rows:
        return None
    scores = [row["normalized_score"] for row in rows]
    mean = statistics.fmean(scores)
    if len(scores) > 1:
        half = stats.t.ppf(0.975, len(scores) - 1) * statistics.stdev(scores) / math.sqrt(len(scores))
    else:
        half = math.nan
    reached = [s for s in (steps_to(seed_run_dir(out / cell.slug, row["seed"])) for row in rows) if s is not None]
    steps = [n for n, _ in reached]
    return {"env": cell.env_id, "method": cell.method, "student_share": cell.share, "seeds": len(rows),
            "normalized_score": mean, "ci95_low": mean - half, "ci95_high": mean + half,
            "per_seed": " / ".join(f"{s:.3f}" for s in scores),
            "agreement_teacher_states": statistics.fmean(row["agreement_teacher_states"] for row in rows),
            # raw returns: rows with other teachers (the ensemble, its members) compare on these
            "student_return": statistics.fmean(row["student_return_mean"] for row in rows),
            "teacher_return": statistics.fmean(row["teacher_return_mean"] for row in rows),
            "env_steps_to_095": int(statistics.median(steps)) if steps else None,
            "at_first_eval": sum(first for _, first in reached),  # seeds already at 0.95 when first evaluated
            "reached_095": f"{len(steps)}/{len(rows)}",
            "wall_s": statistics.fmean(row["wall_s"] for row in rows)}


def write_table(rows: list[dict], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    with open(results / "methods.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    head = ["task", "method", "student / teacher", "seeds", "normalized score [95% CI over seeds]", "per seed",
            "student return (teacher's)", "agreement", "env steps to 0.95 (median)", "reached 0.95", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ci = "" if math.isnan(row["ci95_low"]) else f" [{row['ci95_low']:.3f}, {row['ci95_high']:.3f}]"
        steps = "never" if row["env_steps_to_095"] is None else (
            # 0: the first evaluation came before the head counted any env step (collectors report each
            # second); its true cost is at least limiter.min_size_to_sample states
            "1st eval" if row["env_steps_to_095"] == 0 else
            ("≤ " if row["at_first_eval"] else "") + f"{row['env_steps_to_095']:,}")
        lines.append("| " + " | ".join([row["env"], row["method"], row["student_share"], str(row["seeds"]),
                                        f"{row['normalized_score']:.3f}{ci}", row["per_seed"],
                                        f"{row['student_return']:.1f} ({row['teacher_return']:.1f})",
                                        f"{100 * row['agreement_teacher_states']:.1f}%", steps, row["reached_095"],
                                        f"{row['wall_s']:.0f}"]) + " |")
    (results / "methods.md").write_text("\n".join(lines) + "\n")


def plot_sizes(rows: list[dict], path: Path) -> None:
    """Score against the student's share of the teacher, KL rows only (7% down to linear), per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 3.8))
    for env in dict.fromkeys(row["env"] for row in rows):
        sized = sorted((float(r["student_share"].rstrip("%")), r) for r in rows
                       if r["env"] == env and (r["method"] == "kl" or r["method"].startswith("kl, ") or r["method"] == "linear"))
        if not sized:
            continue
        shares = [share for share, _ in sized]
        means = [r["normalized_score"] for _, r in sized]
        errors = [[0 if math.isnan(r["ci95_low"]) else r["normalized_score"] - r["ci95_low"] for _, r in sized],
                  [0 if math.isnan(r["ci95_high"]) else r["ci95_high"] - r["normalized_score"] for _, r in sized]]
        axis.errorbar(shares, means, yerr=errors, marker="o", capsize=3, label=env)
    axis.axhline(THRESHOLD, color="grey", linestyle=":", label="0.95")
    axis.set_xscale("log")
    axis.set_xlabel("student parameters, % of the teacher's (the leftmost point is a linear student)")
    axis.set_ylabel("normalized score (3 seeds, 95% CI)")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/methods"), help="where the runs go (resumable)")
    parser.add_argument("--results", type=Path, default=Path("kd_system/experiments/results/methods"))
    parser.add_argument("--envs", nargs="*", help="only these tasks (default: all three)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--teachers", type=Path, default=None, help="holds <env>-seed1 and <env>-seed2 teachers")
    parser.add_argument("--table-only", action="store_true", help="write the table from the runs there are")
    args = parser.parse_args()
    todo = [] if args.table_only else cells(args.envs, args.teachers)
    every = cells(None, args.teachers)  # the table holds every task run so far, whichever --envs ran now
    tasks = list(dict.fromkeys(cell.env_id for cell in every))
    every.sort(key=lambda cell: tasks.index(cell.env_id))  # stable: each task's rows in the grid's order
    for index, cell in enumerate([*todo, None], 1):
        if cell is not None:
            print(f"[{index}/{len(todo)}] {cell.env_id} {cell.method}", flush=True)
            run_seeds(shipped_config_name(cell.env_id), args.seeds, args.out / cell.slug, list(cell.overrides))
        rows = [row for row in (row_of(c, args.out, args.seeds) for c in every) if row is not None]
        if rows:
            write_table(rows, args.results)  # after every cell: an interrupted sweep still leaves its table
            plot_sizes(rows, args.results / "sizes.png")


if __name__ == "__main__":
    main()
