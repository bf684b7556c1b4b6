"""``kd-system repeat``: run one config under several seeds and report how much its result moves.

One seed per grid cell says what a method can do; a few seeds of the same config say whether it
does so reliably. Seed s sets ``head.seed`` (actors' env seeds and the selection evaluations'
episodes) and ``learner.seed`` (student initialisation and sampling). The final evaluation's
episodes are the same for every seed (``launch.ending.FINAL_EVAL_SEED``), so the rows compare students on
identical games. Each seed is a real ``kd-system run`` subprocess; rerunning skips seeds whose
``summary.json`` exists and restarts unfinished ones.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from kd_system.experiments.runner import run_resumable


def seed_run_name(seed: int) -> str:
    return f"seed-{seed}"


def seed_run_dir(out_dir: Path, seed: int) -> Path:
    """Where seed ``seed``'s run of a repeat writes its snapshots, metrics and summary."""
    return out_dir / "runs" / seed_run_name(seed)


def seed_command(config: str, seed: int, runs_dir: Path, overrides: list[str]) -> list[str]:
    sets = [f"head.runs_dir={runs_dir}", f"head.run_name={seed_run_name(seed)}", f"head.seed={seed}",
            f"learner.seed={seed}", *overrides]
    command = [sys.executable, "-m", "kd_system.cli", "run", "--config", config]
    for item in sets:
        command += ["--set", item]
    return command


def run_seeds(config: str, seeds: list[int], out_dir: Path, overrides: list[str], log=print) -> None:
    runs_dir, logs_dir = out_dir / "runs", out_dir / "logs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(seeds, 1):
        name = seed_run_name(seed)
        run_resumable(seed_command(config, seed, runs_dir, overrides), runs_dir / name, logs_dir / f"{name}.log",
                      f"[seed {index}/{len(seeds)}] {config} seed {seed}", log)


def seed_rows(out_dir: Path, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        path = seed_run_dir(out_dir, seed) / "summary.json"
        if path.is_file():
            rows.append({"seed": seed, **json.loads(path.read_text())})
    return rows


def _score(value: float, ci: list[float] | None = None) -> str:
    text = f"{value:.4f}"
    if ci and not any(math.isnan(b) for b in ci):
        text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return text


def _margin(task: dict) -> str:
    value = task.get("disagreement_margin_teacher_states")
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _tasks(row: dict) -> list[dict]:
    return row.get("tasks", [row])


def write_seed_table(rows: list[dict], markdown_path: Path, csv_path: Path) -> None:
    """One row per seed: the (mean) score with its CI, every task's score, agreement, cost; then a
    line over seeds. Scores have four decimals: at a teacher's level the seeds differ in the third.
    The disagreement margin (scores.disagreement_margin, on held-out teacher states) says whether
    the states the student still gets wrong matter to the teacher."""
    if not rows:
        markdown_path.write_text("No finished seeds.\n")
        csv_path.write_text("")
        return
    envs = [task["env_id"] for task in _tasks(rows[0])]
    multi = len(envs) > 1
    rollouts = any(row.get("rollout_steps") for row in rows)  # lookahead labels: their simulated steps too
    headers = ["seed", "mean normalized score [95% CI]" if multi else "normalized score [95% CI]",
               *[f"{env} [95% CI]" for env in envs] * multi, "agreement (teacher states)", "agreement (student states)",
               "disagreement margin" + (" per task" if multi else ""), "env steps", *["rollout steps"] * rollouts,
               "learner updates", "wall s", "stop"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [str(row["seed"]), _score(row["normalized_score"], row.get("normalized_score_ci95"))]
        if multi:
            cells += [_score(task["normalized_score"], task["normalized_score_ci95"]) for task in _tasks(row)]
        cells += [f"{100 * row['agreement_teacher_states']:.2f}%", f"{100 * row['agreement_student_states']:.2f}%",
                  " / ".join(_margin(task) for task in _tasks(row)), f"{row['env_steps']:,}",
                  *[f"{row.get('rollout_steps', 0):,}"] * rollouts, f"{row['learner_updates']:,}",
                  f"{row['wall_s']:.0f}", row["stop_reason"]]
        lines.append("| " + " | ".join(cells) + " |")
    scores = [row["normalized_score"] for row in rows]
    worst = [min(task["normalized_score"] for task in _tasks(row)) for row in rows]
    lines += ["", f"Over {len(rows)} seeds: mean {sum(scores) / len(scores):.4f}, lowest {min(scores):.4f}, "
              f"highest {max(scores):.4f}; {sum(s >= 1.0 for s in scores)} of {len(rows)} at or above 1.0000 "
              f"and {sum(round(s, 2) >= 1.0 for s in scores)} of {len(rows)} at 1.00 to two decimals; "
              f"lowest single task {min(worst):.4f}."]
    markdown_path.write_text("\n".join(lines) + "\n")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seed", "env", "normalized_score", "ci95_low", "ci95_high", "agreement_teacher_states",
                         "agreement_student_states", "env_steps", "learner_updates", "wall_s"])
        for row in rows:
            parts = ([{**row, "env_id": "mean"}] if multi else []) + _tasks(row)
            for part in parts:
                low, high = part.get("normalized_score_ci95") or (math.nan, math.nan)
                writer.writerow([row["seed"], part["env_id"], f"{part['normalized_score']:.5f}", f"{low:.5f}",
                                 f"{high:.5f}", f"{part['agreement_teacher_states']:.4f}",
                                 f"{part['agreement_student_states']:.4f}", row["env_steps"], row["learner_updates"],
                                 f"{row['wall_s']:.1f}"])


def _repeat(args: argparse.Namespace) -> int:
    from kd_system.experiments.plots import plot_seed_curves

    out_dir = Path(args.out)
    phases = args.only or ["runs", "report"]
    print(f"repeat: {args.config} under seeds {', '.join(map(str, args.seeds))}, results in {out_dir}", flush=True)
    if "runs" in phases:
        run_seeds(args.config, args.seeds, out_dir, list(args.set), log=lambda line: print(line, flush=True))
    if "report" in phases:
        report_dir = Path(args.report_dir) if args.report_dir else out_dir
        report_dir.mkdir(parents=True, exist_ok=True)
        rows = seed_rows(out_dir, args.seeds)
        write_seed_table(rows, report_dir / "results.md", report_dir / "results.csv")
        plots = plot_seed_curves({seed: seed_run_dir(out_dir, seed) for seed in args.seeds}, report_dir)
        print(f"repeat: {len(rows)} seeds in {report_dir / 'results.md'} and results.csv; "
              f"plots: {', '.join(p.name for p in plots) or 'none'}", flush=True)
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("repeat", help="run one config under several seeds and tabulate how much the result moves")
    p.add_argument("--config", required=True, help="YAML run config, or a shipped config name, e.g. multitask-classic")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds to run (default: 0 1 2)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a run setting in every seed's run (repeatable)")
    p.add_argument("--out", required=True, help="directory for the runs, their logs and (by default) the report")
    p.add_argument("--report-dir", help="write results.md, results.csv and the plot here instead of --out")
    p.add_argument("--only", nargs="+", choices=("runs", "report"), help="run only these phases (default: both)")
    p.set_defaults(func=_repeat)
