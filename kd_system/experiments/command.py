"""``kd-system experiment``: run a grid of distillation cells and the from-scratch baselines, then
write the results table (markdown + CSV) and plots. Rerunning continues where it stopped."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from kd_system.errors import ConfigError
from kd_system.experiments.grid import Grid, cross, load_grid
from kd_system.experiments.runner import THRESHOLD, run_cells, run_scratch

PHASES = ("cells", "scratch", "report")


def _grid_from_args(args: argparse.Namespace) -> Grid:
    axes = {"envs": args.envs, "sizes": args.sizes, "losses": args.losses, "acting": args.acting}
    given = {k for k, v in axes.items() if v}
    if args.grid:
        grid = load_grid(args.grid)
        # with a grid file, axes on the command line pick a subset of its cells (same settings)
        keep = [c for c in grid.cells if (not args.envs or c.env_id in args.envs) and (not args.sizes or c.size in args.sizes)
                and (not args.losses or c.loss in args.losses) and (not args.acting or c.acting in args.acting)]
        if given and not keep:
            raise ConfigError(f"{args.grid}: no cell matches the --{' --'.join(sorted(given))} given on the command line")
        grid = Grid(tuple(keep), grid.settings, grid.env_settings,
                    tuple(s for s in grid.scratch_sizes if not args.sizes or s in args.sizes),
                    tuple(e for e in grid.scratch_envs if not args.envs or e in args.envs), grid.scratch_budget)
    else:
        missing = [k for k in axes if not axes[k]]
        if missing:
            raise ConfigError(f"give --grid FILE, or all of --envs --sizes --losses --acting (missing --{missing[0]})")
        cells = cross(args.envs, args.sizes, args.losses, args.acting, "command line")
        grid = Grid(tuple(dict.fromkeys(cells)), scratch_sizes=tuple(args.scratch_sizes or ()),
                    scratch_envs=tuple(dict.fromkeys(args.envs)))
    return dataclasses.replace(grid, command_line_settings=tuple(args.set))


def _experiment(args: argparse.Namespace) -> int:
    from kd_system.experiments.plots import plot_curves, plot_steps_bars
    from kd_system.experiments.table import collect_rows, write_csv, write_markdown

    grid = _grid_from_args(args)
    out_dir = Path(args.out)
    phases = args.only or list(PHASES)
    print(f"experiment: {len(grid.cells)} cells, {len(grid.scratch_sizes) * len(grid.scratch_envs)} "
          f"from-scratch baselines, results in {out_dir}", flush=True)
    if "cells" in phases:
        run_cells(grid, out_dir, log=lambda line: print(line, flush=True))
    if "scratch" in phases:
        run_scratch(grid, out_dir, log=lambda line: print(line, flush=True))
    if "report" in phases:
        rows = collect_rows(grid, out_dir, THRESHOLD)
        report_dir = Path(args.report_dir) if args.report_dir else out_dir
        report_dir.mkdir(parents=True, exist_ok=True)
        write_markdown(rows, report_dir / "results.md")
        write_csv(rows, report_dir / "results.csv")
        plots = plot_curves(grid, out_dir, report_dir) + plot_steps_bars(rows, report_dir, THRESHOLD)
        print(f"experiment: {len(rows)} rows in {report_dir / 'results.md'} and results.csv; "
              f"plots: {', '.join(p.name for p in plots)}", flush=True)
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="run a grid env × student size × loss × who-acts and write the results table")
    p.add_argument("--grid", help="grid YAML (see kd_system/experiments/grid.py), or a shipped one: classic_control")
    p.add_argument("--envs", nargs="+", help="env ids, e.g. CartPole-v1 (with --grid: only its cells on these envs; same for the other axes)")
    p.add_argument("--sizes", nargs="+", type=float, help="student sizes as shares of the teacher, e.g. 0.07 0.04")
    p.add_argument("--losses", nargs="+", help="losses, e.g. kl mse")
    p.add_argument("--acting", nargs="+", help="who acts: teacher student mixed")
    p.add_argument("--scratch-sizes", nargs="+", type=float, help="without --grid: sizes to train from scratch with RLlib DQN")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a run setting in every cell, after the grid file's settings (repeatable)")
    p.add_argument("--out", required=True, help="directory for runs, baselines, logs and (by default) the report")
    p.add_argument("--report-dir", help="write results.md, results.csv and the plots here instead of --out")
    p.add_argument("--only", nargs="+", choices=PHASES, help="run only these phases (default: all, in order)")
    p.set_defaults(func=_experiment)
