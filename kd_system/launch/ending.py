"""How a run ends: the calls in flight counted, the collectors stopped, a last snapshot taken and
scored (so an interrupted run's latest work counts), the pick scored on fresh episodes, and
summary.json written, also for a run that gave up."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from kd_system.checkpoints.run_dir import load_snapshot
from kd_system.checkpoints.summary import SessionFacts, unscored_summary
from kd_system.errors import RunFailed, StoreError
from kd_system.launch.calls import CollectCall, EvalCall, TrainCall
from kd_system.launch.final import final_scores
from kd_system.launch.recovery import ACTOR_CALL_S, _kill
from kd_system.launch.supervision import death_of
from kd_system.launch.teacher_engine import run_engine_record
from kd_system.launch.topology import make_evaluator
from kd_system.metrics import say

FINAL_EVAL_SEED = 1_000_000  # fresh seeds: the final score is not the one the best snapshot was picked on
EVAL_DRAIN_S = 600.0  # an evaluation running at the stop is one round of eval_episodes: worth its wait


class Ending:
    """Mixed into the Head: it owns the state these methods read (see head.py)."""

    def finish(self) -> dict[str, Any]:
        """End the components' work, take a last snapshot and score it, score the best snapshot on
        fresh episodes and write summary.json; returns the summary. A run that gave up raises
        RunFailed once the summary is written."""
        self._count_last_calls()
        for collector in self.components.collectors:
            _kill(collector)
        self._finish_evaluations()
        self.monitor.report_progress()
        last_scored = self._last_snapshot()
        if not self.progress.run.snapshots():  # gave up before the first snapshot: nothing to score
            summary = unscored_summary(self.progress, self.stop_reason, self.failure)
            summary |= run_engine_record(self.prepared)
            self.progress.run.write_summary(summary)
        else:
            summary = self._final_summary(last_scored)
        if self.failure is not None:
            raise RunFailed(f"{self.failure}; summary in {self.progress.run.summary_path}")
        return summary

    def _last_snapshot(self) -> bool | None:
        """Snapshot the live learner and score that snapshot like any other, unless the target was
        already met (the pick is made). Returns whether the last snapshot was scored; None: no
        snapshot was taken (the learner is dead)."""
        if not self.learner_alive:
            return None
        try:
            state = ray.get(self.components.learner.get_state.remote())
        except ray.exceptions.RayError:
            return None  # it died at the very end, or fails: the latest snapshot on disk stands
        _kill(self.components.learner)
        latest = self.progress.latest
        if latest is not None and latest[1] == state.updates and Path(latest[0]).is_dir():
            # no update since the latest snapshot: rewriting it would delete its evaluation (maybe the best)
            return (Path(latest[0]) / "eval.json").is_file()
        path = self.progress.snapshot(state)
        if self.progress.selection.target_reached or not self.monitor.have_baselines:
            return False
        cfg = self.config.head
        bundles = load_snapshot(path)[0]
        calls = {evaluator.evaluate.remote(bundle, cfg.eval_episodes, cfg.seed): EvalCall(
            path, state.updates, self.counters.env_steps, index)
            for index, (evaluator, bundle) in enumerate(zip(self.components.evaluators, bundles))}
        say(f"scoring the last snapshot {path.name} (update {state.updates}) before the final evaluation")
        try:
            for ref, call in calls.items():
                self.monitor.task_evaluated(call, ray.get(ref, timeout=EVAL_DRAIN_S))
        except (ray.exceptions.RayError, KeyboardInterrupt):  # a second Ctrl-C, or a dead evaluator
            say(f"the last snapshot {path.name} was not scored: the summary says so")
            return False
        return True

    def _final_summary(self, last_scored: bool | None) -> dict[str, Any]:
        episodes = self.config.head.final_eval_episodes
        try:
            scores = final_scores(self.prepared, self.components.evaluators, self.progress, self.metrics,
                                  episodes, FINAL_EVAL_SEED)
        except ray.exceptions.RayActorError as exc:  # an evaluator died now: one more try on fresh ones
            say(f"an evaluator died during the final evaluation ({death_of('evaluator', exc).where()}); retrying")
            for index, evaluator in enumerate(self.components.evaluators):
                _kill(evaluator)
                self.components.evaluators[index] = make_evaluator(self.config, self.prepared, index)
            scores = final_scores(self.prepared, self.components.evaluators, self.progress, self.metrics,
                                  episodes, FINAL_EVAL_SEED)
        session = SessionFacts(episodes, FINAL_EVAL_SEED, self.stop_reason, self.config.learner.loss,
                               self.config.actors.acting, self.monitor.learner_device, self._bytes_per_state(),
                               self.resumed, self.placement, self.monitor.corrupt_chunks,
                               last_snapshot_scored=last_scored, failure=self.failure,
                               component_deaths=self.deaths.total)
        summary = self.progress.write_summary(scores, session)
        self.metrics.log("summary", self.counters.updates, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        return summary

    def _bytes_per_state(self) -> float | None:
        try:
            return self.stores.bytes_per_state()
        except StoreError:  # the store is gone (that may be why the run ended): the figure is unknown
            return None

    def _count_last_calls(self) -> None:
        """Let the collect and train calls in flight end cleanly, and count their work too."""
        in_flight = [ref for ref, call in self.pending.items() if isinstance(call, (CollectCall, TrainCall))]
        ended, _ = ray.wait(in_flight, num_returns=len(in_flight), timeout=3 * ACTOR_CALL_S)
        for ref in ended:
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            if isinstance(self.pending[ref], CollectCall):
                self.counters.add_collect(result)
            else:
                self.counters.updates = max(self.counters.updates, result.updates)

    def _finish_evaluations(self) -> None:
        """Let evaluations already running end and count them: the snapshot they score may be the
        best one, and a short run (max_updates reached within a few learner calls) would otherwise
        stop with none on record."""
        running = [ref for ref, call in self.pending.items() if isinstance(call, EvalCall)]
        if not running:
            return
        ended, _ = ray.wait(running, num_returns=len(running), timeout=EVAL_DRAIN_S)
        for ref in ended:
            try:
                report = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            self.monitor.task_evaluated(self.pending[ref], report)  # a target reached now does not rename the stop
