"""The soak: one long CartPole run, sampling the memory of every process it started (resident set
size from /proc) and Redis's ``used_memory`` every ``--every`` seconds, then judging whether memory
is flat after a warm-up. A run that grows steadily (a leak in the learner, the collectors, the head
or the store) fails it.

``python -m kd_system.experiments.soak --wall 1800 --warmup 300 --out results/soak``

Writes ``soak.csv`` (one row per sample), ``soak.png`` and ``soak.json`` (the verdict), and prints
the growth of each series between the end of the warm-up and the end of the run.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from kd_system.processes import descendants
from kd_system.replay.redis_server import LocalRedisServer

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE / 2**20
    except (OSError, ValueError, IndexError):  # it ended meanwhile
        return 0.0


def _growth(rows: list[dict], key: str, warmup_s: float, wall_s: float) -> float:
    """Relative change of ``key`` from the first sample after the warm-up to the last one."""
    # while the run trains: its wall budget counts from its own start, a moment after the sampler's
    after = [row[key] for row in rows if warmup_s <= row["elapsed_s"] <= wall_s]
    return (after[-1] - after[0]) / after[0] if len(after) >= 2 and after[0] else float("nan")


def soak(wall_s: float, warmup_s: float, every_s: float, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    # the test's own server: its password is known here, so used_memory can be read
    with LocalRedisServer() as server:
        client = redis.Redis.from_url(server.url)
        command = [sys.executable, "-m", "kd_system.cli", "run", "--set", f"head.runs_dir={out / 'runs'}",
                   "--set", "head.target_score=null", "--set", f"head.max_wall_s={wall_s}",
                   "--set", "store.redis_url=env:KD_SOAK_REDIS_URL"]
        with open(out / "console.log", "w") as log:
            run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "KD_SOAK_REDIS_URL": server.url})
        start = time.monotonic()
        try:
            while run.poll() is None:
                family = descendants(run.pid) | {run.pid}
                row = {"elapsed_s": round(time.monotonic() - start, 1), "processes": len(family),
                       "rss_mb": round(sum(_rss_mb(pid) for pid in family), 1),
                       "head_rss_mb": round(_rss_mb(run.pid), 1),
                       "redis_used_mb": round(client.info("memory")["used_memory"] / 2**20, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                try:
                    run.wait(timeout=every_s)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if run.poll() is None:
                run.terminate()
                run.wait(timeout=120)
        client.close()
    with open(out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    growth = {key: _growth(rows, key, warmup_s, wall_s) for key in ("rss_mb", "head_rss_mb", "redis_used_mb")}
    verdict = {"wall_s": wall_s, "warmup_s": warmup_s, "samples": len(rows), "exit_status": run.returncode,
               "growth_after_warmup": growth, "flat": all(abs(g) < 0.05 for g in growth.values()),
               "command": " ".join(command)}
    (out / "soak.json").write_text(json.dumps(verdict, indent=2) + "\n")
    _plot(rows, warmup_s, out / "soak.png")
    return verdict


def _plot(rows: list[dict], warmup_s: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row["elapsed_s"] / 60 for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(minutes, [row["rss_mb"] for row in rows], label="all processes of the run")
    left.plot(minutes, [row["head_rss_mb"] for row in rows], label="head (kd-system run)")
    right.plot(minutes, [row["redis_used_mb"] for row in rows], color="tab:red")
    for axis, title in ((left, "resident memory, MiB"), (right, "Redis used_memory, MiB")):
        axis.axvline(warmup_s / 60, color="grey", linestyle=":")
        axis.set_xlabel("minutes")
        axis.set_title(title)
        axis.set_ylim(bottom=0)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wall", type=float, default=1800.0, help="the run's head.max_wall_s")
    parser.add_argument("--warmup", type=float, default=300.0, help="seconds before memory must be flat")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path("results/soak"))
    args = parser.parse_args()
    verdict = soak(args.wall, args.warmup, args.every, args.out)
    print(json.dumps(verdict, indent=2))
    sys.exit(0 if verdict["flat"] and verdict["exit_status"] == 0 else 1)


if __name__ == "__main__":
    main()
