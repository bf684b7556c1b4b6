"""What a run keeps on disk as it goes: its counters, snapshots (the best one never pruned),
evaluations, the pick of the best snapshot, and run_state.json, from which a resumed run counts on.
Ray-free: the head hands in what the components reported."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_system.checkpoints.run_dir import RunDirectory, load_snapshot
from kd_system.checkpoints.selection import NAN, BestSnapshot, SnapshotSelection
from kd_system.checkpoints.summary import SessionFacts, run_summary
from kd_system.types import CollectReport, LearnerState

PERSISTENT = ("env_steps", "states_labelled", "rollout_steps")


@dataclass
class RunCounters:
    env_steps: int = 0
    states_labelled: int = 0
    rollout_steps: int = 0  # env steps the lookahead labeller simulated (kd_system/actors/lookahead.py)
    updates: int = 0
    wall_s_before: float = 0.0  # wall time of earlier sessions of a resumed run
    per_actor: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def add_collect(self, report: CollectReport) -> None:
        """Collectors report cumulative counters; count what is new since an actor's last report."""
        last_steps, last_states, last_rollouts = self.per_actor.get(report.actor_id, (0, 0, 0))
        steps, states, rollouts = report.env_steps, report.states_written, report.rollout_steps
        if steps < last_steps:  # the actor was restarted and its counters began again
            last_steps, last_states, last_rollouts = 0, 0, 0
        self.env_steps += steps - last_steps
        self.states_labelled += states - last_states
        self.rollout_steps += rollouts - last_rollouts
        self.per_actor[report.actor_id] = (steps, states, rollouts)

    def persistent(self) -> dict[str, int]:
        """What snapshots and run_state.json keep, so a resumed run counts on."""
        return {name: getattr(self, name) for name in PERSISTENT}


@dataclass(frozen=True)
class ResumePoint:
    """The latest snapshot of a stopped run and the run state beside it."""
    snapshot: Path
    student_weights: list[bytes]  # one per task
    optimizer: bytes | None
    updates: int
    samples: int
    counters: RunCounters
    best: BestSnapshot | None


def resume_point(run: RunDirectory) -> ResumePoint | None:
    """Where a resumed run continues: the latest whole snapshot; None if it stopped before its first."""
    snapshots = run.snapshots()
    if not snapshots:
        return None
    bundles, optimizer, saved = load_snapshot(snapshots[-1])
    state = run.read_state()
    # run_state.json names this snapshot and is written after it and after every evaluation, so its
    # counters and wall time are the fresher; a head killed between writing the snapshot and the
    # state leaves the snapshot's own the fresher. Both only grow over a run: take the larger.
    counters = RunCounters(**{name: max(int(state.get(name, 0)), int(saved.get(name, 0))) for name in PERSISTENT},
                           updates=saved["updates"],
                           wall_s_before=max(float(state.get("wall_s", 0.0)), float(saved.get("wall_s", 0.0))))
    return ResumePoint(snapshots[-1], [bundle.weights for bundle in bundles], optimizer, saved["updates"],
                       saved["samples"], counters, BestSnapshot.from_json(state.get("best")))


class RunProgress:
    def __init__(self, run: RunDirectory, task_names: list[str], keep_snapshots: int,
                 selection: SnapshotSelection, counters: RunCounters, started: float,
                 resumed_from: Path | None = None):
        """``started``: the session's perf_counter start, so its wall time covers Ray's start-up too.
        ``resumed_from``: the snapshot a resumed run continues (``counters.updates`` are its)."""
        self.run, self.task_names, self.keep_snapshots = run, task_names, keep_snapshots
        self.selection, self.counters, self.started = selection, counters, started
        # the latest snapshot and its updates: run_state.json names them, not the learner's live count
        self.latest: tuple[Path, int] | None = (resumed_from, counters.updates) if resumed_from else None

    def elapsed(self) -> float:
        """Seconds since this session started."""
        return time.perf_counter() - self.started

    def wall_s(self) -> float:
        """Seconds over all sessions of the run."""
        return self.counters.wall_s_before + self.elapsed()

    def snapshot(self, state: LearnerState) -> Path:
        self.counters.updates = state.updates
        path = self.run.write_snapshot(state, {**self.counters.persistent(), "wall_s": self.wall_s()},
                                       self.task_names)
        self.latest = (path, state.updates)
        best = self.selection.best
        self.run.prune(self.keep_snapshots, {Path(best.path)} if best else set())
        self.write_state()
        return path

    def write_state(self) -> None:
        """run_state.json: the latest snapshot and its updates (where a resume continues), the
        counters that outlive it, the wall time so far (a resumed run's budget counts on from it)
        and the best snapshot. Written at every snapshot and evaluation, so a head killed at any
        moment loses at most a snapshot interval of wall time from the record."""
        if self.latest is None:  # nothing to resume from yet
            return
        path, updates = self.latest
        best = self.selection.best
        self.run.write_state({"snapshot": path.name, "updates": updates, **self.counters.persistent(),
                              "wall_s": self.wall_s(), "best": best.to_json() if best else None})

    def evaluated(self, snapshot: Path, updates: int, env_steps: int, report: dict[str, Any]) -> dict[str, Any]:
        """Record an evaluation of ``snapshot`` (a report from ``combine_reports``); returns it as
        eval.json and the metrics log keep it."""
        record = {**report, "updates": updates, "env_steps": env_steps, "snapshot": str(snapshot)}
        self.run.write_eval(snapshot, record)
        # a single task's report lacks the agreement when the evaluator had no held-out states
        self.selection.record(snapshot, updates, record["normalized_score"],
                              record.get("agreement_teacher_states", 0.0), record.get("normalized_score_ci95_high", NAN))
        self.write_state()  # the best may have changed, and the wall time moved on
        return record

    def write_summary(self, scores: dict[str, Any], session: SessionFacts) -> dict[str, Any]:
        summary = run_summary(scores, self, session)
        self.run.write_summary(summary)
        return summary

    def final_pick(self) -> BestSnapshot:
        """The snapshot the final evaluation scores: the best, else the latest."""
        return self.selection.best_or_latest(self.run.snapshots()[-1], self.counters.updates)
