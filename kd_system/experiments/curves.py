"""Read a run's ``metrics.jsonl`` into a score-vs-env-steps curve and find the first crossing.

An eval record is written when its evaluation *finishes*, and the actors keep stepping while the
evaluator plays, so the record's own ``env_steps`` overstates what the evaluated snapshot cost.
The snapshot is identified by its learner ``updates``; progress records pair updates with env
steps and elapsed seconds every ``head.progress_every_s``, so interpolating them at the snapshot's
update count gives the env steps and wall time that produced that student.

Wall time is counted from the first env step, not from the command's start: Ray's start-up took
from 5 s to over 100 s on the shared 2-core machine and says nothing about the method.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CurvePoint:
    updates: int
    env_steps: int
    wall_s: float
    normalized_score: float


def read_records(metrics_path: Path) -> list[dict]:
    records = []
    for line in Path(metrics_path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write leaves a partial last line
                continue
    return records


def eval_curve(records: list[dict]) -> list[CurvePoint]:
    progress = [r for r in records if r.get("kind") == "progress"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not evals:
        return []
    if progress:
        # the run's clock: a progress record knows its elapsed seconds and its wall-clock time
        t0 = progress[0]["time"] - progress[0]["elapsed_s"]
        stepping = [r for r in progress if r["env_steps"] > 0]
        t_first_step = stepping[0]["elapsed_s"] if stepping else 0.0
        t0 += t_first_step
        # (0 updates, 0 steps, 0 s) anchors interpolation before the first progress record
        updates = np.array([0] + [r["step"] for r in progress], float)
        steps = np.array([0] + [r["env_steps"] for r in progress], float)
        elapsed = np.maximum(0.0, np.array([t_first_step] + [r["elapsed_s"] for r in progress], float) - t_first_step)
        order = np.argsort(updates, kind="stable")
        updates, steps, elapsed = updates[order], steps[order], elapsed[order]
    points = []
    for r in evals:
        if progress and r["updates"] <= updates[-1]:
            # several progress records can share an update count (learner waiting): take the first
            first = int(np.searchsorted(updates, r["updates"], side="left"))
            if first < len(updates) and updates[first] == r["updates"]:
                env_steps, wall_s = steps[first], elapsed[first]
            else:
                env_steps = np.interp(r["updates"], updates, steps)
                wall_s = np.interp(r["updates"], updates, elapsed)
        else:  # no progress record after the snapshot: the eval record's own figures are the best we have
            env_steps = r["env_steps"]
            wall_s = r["time"] - t0 if progress else float("nan")
        points.append(CurvePoint(int(r["updates"]), int(round(float(env_steps))), float(wall_s),
                                 float(r["normalized_score"])))
    return sorted(points, key=lambda p: p.updates)


def first_reaching(curve: list[CurvePoint], threshold: float) -> CurvePoint | None:
    """The earliest evaluated snapshot whose normalized score is at least ``threshold``."""
    for point in curve:
        if point.normalized_score >= threshold:
            return point
    return None
