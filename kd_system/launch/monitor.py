"""What the head makes of the components' results: the run's counters, the metrics records, the
progress line and the scoring of evaluated snapshots. Ray-free; the head decides what to call when."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from kd_system.checkpoints.progress import RunProgress
from kd_system.checkpoints.summary import combine_reports
from kd_system.launch.calls import EvalCall
from kd_system.launch.elastic import Roster
from kd_system.launch.preparation import Prepared
from kd_system.metrics import MetricsLog, progress_line, say
from kd_system.types import Baselines, CollectReport, EvalReport, TrainReport


class RunMonitor:
    def __init__(self, prepared: Prepared, progress: RunProgress, metrics: MetricsLog, roster: Roster | None = None):
        self.prepared, self.progress, self.metrics = prepared, progress, metrics
        self.roster = roster or Roster()  # the head's collectors, counted in each progress record
        self.counters = progress.counters
        self.baselines: dict[int, Baselines] = {}  # per task index
        self.eval_parts: dict[Path, dict[int, EvalReport]] = {}  # per-task reports of a snapshot in evaluation
        self.latest_score: float | None = None
        self.latest_loss: float | None = None
        self.learner_device = "cpu"
        self.corrupt_chunks = 0  # replay chunks the learner skipped, in all (TrainReport) ...
        self.corrupt_before = 0  # ... of which earlier learners of this session (a replacement counts from 0)
        self.last_progress = (0.0, 0, 0)  # (elapsed s, states labelled, updates) at the last progress line

    @property
    def have_baselines(self) -> bool:
        """Every task's teacher and random returns are in, so snapshots can be scored."""
        return len(self.baselines) == len(self.prepared.tasks)

    def collected(self, report: CollectReport) -> None:
        self.counters.add_collect(report)
        returns = report.episode_returns
        self.metrics.log("actor", self.counters.env_steps, {
            "actor_id": report.actor_id, "policy_version": report.policy_version,
            "time_wait_limiter_s": report.time_wait_limiter_s,
            **({"behaviour_return_mean": sum(returns) / len(returns)} if returns else {})})

    def trained(self, report: TrainReport) -> None:
        self.counters.updates = report.updates
        self.learner_device = report.device
        total = self.corrupt_before + report.corrupt_chunks
        if total > self.corrupt_chunks:
            say(f"skipped {total - self.corrupt_chunks} replay chunk(s) that failed to decode "
                f"({total} in all; store.max_corrupt_share bounds the share)")
        self.corrupt_chunks = total
        if report.loss is not None:
            self.latest_loss = report.loss
            self.metrics.log("learner", report.updates, asdict(report))

    def learner_replaced(self) -> None:
        self.corrupt_before = self.corrupt_chunks

    def baselines_in(self, task_index: int, baselines: Baselines) -> None:
        task = self.prepared.tasks[task_index]
        self.baselines[task_index] = baselines
        self.metrics.log("baselines", 0, {"task": task.name, **asdict(baselines)})
        say(f"{task.env_id}: teacher {baselines.teacher_return_mean:.1f} ± {baselines.teacher_return_std:.1f}, "
            f"random {baselines.random_return_mean:.1f} over {baselines.episodes} episodes")

    def task_evaluated(self, call: EvalCall, report: EvalReport) -> tuple[bool, str | None]:
        """Collect one task's report. Returns whether every task of the snapshot is in (and so it
        was scored), and why the run should stop, if the target score says so."""
        parts = self.eval_parts.setdefault(call.snapshot, {})
        parts[call.task_index] = report
        if len(parts) < len(self.prepared.tasks):
            return False, None
        del self.eval_parts[call.snapshot]
        combined = combine_reports(self.progress.task_names, [parts[i].record() for i in range(len(parts))])
        record = self.progress.evaluated(call.snapshot, call.updates, call.env_steps, combined)
        self.latest_score = record["normalized_score"]  # the evaluator pairs it with the teacher's episodes
        self.metrics.log("eval", call.updates, {k: v for k, v in record.items() if k != "student_returns"})
        return True, self.progress.selection.target_stop(self.latest_score, call.updates)

    def count_rates_from_now(self) -> None:
        self.last_progress = (self.progress.elapsed(), self.counters.states_labelled, self.counters.updates)

    def progress_due(self, every_s: float) -> bool:
        return self.progress.elapsed() - self.last_progress[0] >= every_s

    def report_progress(self) -> None:
        """The console's progress line, and the same figures in the metrics log, with the collectors
        at work (those that answered) and those starting or waiting for a node: their number follows
        the cluster with actors.num_actors=auto."""
        now = self.progress.elapsed()
        then, states_then, updates_then = self.last_progress
        dt = max(now - then, 1e-6)
        rates = {"states": (self.counters.states_labelled - states_then) / dt,
                 "updates": (self.counters.updates - updates_then) / dt}
        best = self.progress.selection.best
        working, waiting = self.roster.count("working"), self.roster.count("waiting")
        print(progress_line(now, vars(self.counters), rates, self.latest_loss, self.latest_score,
                            best.score if best else None)
              + f" | collectors {working}" + (f" (+{waiting} starting)" if waiting else ""), flush=True)
        self.metrics.log("progress", self.counters.updates, {"elapsed_s": now, "env_steps": self.counters.env_steps,
                         "states_labelled": self.counters.states_labelled, "states_per_s": rates["states"],
                         "updates_per_s": rates["updates"], "collectors": working, "collectors_waiting": waiting})
        self.last_progress = (now, self.counters.states_labelled, self.counters.updates)
        if self.progress.run.snapshots_dir.is_dir():
            # the wall time a resumed run counts on is the last one written: keep it fresh even when
            # the learner stalls and no snapshot is due
            self.progress.write_state()
