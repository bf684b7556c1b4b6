"""The head's supervision loop: one remote call in flight per component, snapshots and
evaluations without pausing training, a stop on the target score or a budget, and at the end a
final evaluation of the best snapshot on fresh episodes. What the run keeps on disk is
checkpoints.progress's job; launch.run starts everything the head is handed, and stops it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from kd_system.checkpoints.progress import RunProgress
from kd_system.checkpoints.run_dir import load_snapshot
from kd_system.checkpoints.summary import SessionFacts
from kd_system.config import RunConfig
from kd_system.errors import KDError
from kd_system.launch.calls import BaselinesCall, Call, CollectCall, EvalCall, SnapshotCall, TrainCall
from kd_system.launch.final import final_scores
from kd_system.launch.monitor import RunMonitor
from kd_system.launch.preparation import Prepared
from kd_system.launch.stores import RunStores
from kd_system.launch.topology import Components, make_collector
from kd_system.metrics import MetricsLog, say

ACTOR_CALL_S = 1.0  # each remote call runs this long, so the head reacts within about a second
FINAL_EVAL_SEED = 1_000_000  # fresh seeds: the final score is not the one the best snapshot was picked on
EVAL_DRAIN_S = 600.0  # an evaluation running at the stop is one round of eval_episodes: worth its wait


def _unwrap(exc: Exception) -> Exception:
    """A component's own error (a KDError) rather than Ray's wrapper, so the user reads one line."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, KDError) else exc


class Head:
    def __init__(self, config: RunConfig, prepared: Prepared, components: Components, stores: RunStores,
                 progress: RunProgress, metrics: MetricsLog, placement: dict[str, Any] | None, resumed: bool):
        self.config, self.prepared, self.components, self.stores = config, prepared, components, stores
        self.progress, self.metrics, self.placement, self.resumed = progress, metrics, placement, resumed
        self.counters = progress.counters
        self.monitor = RunMonitor(prepared, progress, metrics)
        self.stop_reason: str | None = None
        self.pending: dict[Any, Call] = {}
        self.replacements: dict[int, int] = {}  # actor index -> collectors started in its place
        self.snapshot_in_flight = self.eval_in_flight = False
        self.queued_eval: tuple[Path, int, int] | None = None  # (snapshot, updates, env_steps)
        self.learner_idle = True
        self.last_snapshot = (0.0, 0)  # (elapsed s, updates)

    # ---- the supervision loop ---------------------------------------------------------------
    def supervise(self) -> None:
        """Until a stop condition holds, or Ctrl-C (SIGTERM too, see topology.connect_ray)."""
        try:
            self._loop()
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
            say("interrupted: taking a last snapshot before stopping")

    def _loop(self) -> None:
        cfg = self.config.head
        for index, collector in enumerate(self.components.collectors):
            self.pending[collector.collect.remote(ACTOR_CALL_S)] = CollectCall(index)
        for task_index, evaluator in enumerate(self.components.evaluators):
            self.pending[evaluator.baselines.remote(cfg.eval_episodes, cfg.seed)] = BaselinesCall(task_index)
        self.last_snapshot = (self.progress.elapsed(), self.counters.updates)
        self.monitor.count_rates_from_now()
        while self.stop_reason is None:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=0.25)
            for ref in ready:
                self._handle(self.pending.pop(ref), ref)
            self._start_queued_eval()
            self._schedule()

    def _handle(self, call: Call, ref: Any) -> None:
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if not isinstance(call, CollectCall):
                raise
            self.replacements[call.actor_index] = self.replacements.get(call.actor_index, 0) + 1
            say(f"actor {call.actor_index} died ({type(exc).__name__}); starting replacement "
                f"#{self.replacements[call.actor_index]} with fresh env seeds")
            self.components.collectors[call.actor_index] = make_collector(
                self.config, call.actor_index, self.components.collector_tasks[call.actor_index], self.prepared,
                self.stores.addresses, incarnation=self.replacements[call.actor_index])
            result = None
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
        match call:
            case CollectCall(actor_index=index):
                if result is not None:  # None: the actor died and was replaced
                    self.monitor.collected(result)
                self.pending[self.components.collectors[index].collect.remote(ACTOR_CALL_S)] = call
            case TrainCall():
                self.monitor.trained(result)
                self.learner_idle = True
            case BaselinesCall(task_index=index):
                self.monitor.baselines_in(index, result)
            case SnapshotCall():
                self.snapshot_in_flight = False
                self.queued_eval = (self.progress.snapshot(result), result.updates, self.counters.env_steps)
            case EvalCall():
                scored, stop_reason = self.monitor.task_evaluated(call, result)
                if scored:
                    self.eval_in_flight = False
                if stop_reason is not None:
                    self.stop_reason = stop_reason

    def _start_queued_eval(self) -> None:
        # a score is normalized by the teacher's and the random policy's returns: wait for them
        if not self.queued_eval or self.eval_in_flight or not self.monitor.have_baselines:
            return
        cfg = self.config.head
        snapshot, updates, env_steps = self.queued_eval
        bundles = load_snapshot(snapshot)[0]
        for task_index, (evaluator, bundle) in enumerate(zip(self.components.evaluators, bundles)):
            self.pending[evaluator.evaluate.remote(bundle, cfg.eval_episodes, cfg.seed)] = EvalCall(
                snapshot, updates, env_steps, task_index)
        self.eval_in_flight, self.queued_eval = True, None

    def _schedule(self) -> None:
        """Snapshot when due, report progress, check the budgets, and keep the learner busy."""
        cfg = self.config.head
        now = self.progress.elapsed()
        last_t, last_updates = self.last_snapshot
        due_by_updates = cfg.snapshot_every_updates and self.counters.updates - last_updates >= cfg.snapshot_every_updates
        if not self.snapshot_in_flight and self.counters.updates > last_updates and (
                now - last_t >= cfg.snapshot_every_s or due_by_updates):
            self.pending[self.components.learner.get_state.remote()] = SnapshotCall()
            self.snapshot_in_flight, self.last_snapshot = True, (now, self.counters.updates)
        if self.monitor.progress_due(cfg.progress_every_s):
            self.monitor.report_progress()
        if cfg.max_updates is not None and self.counters.updates >= cfg.max_updates:
            self.stop_reason = f"max_updates {cfg.max_updates} reached"
        if cfg.max_wall_s is not None and now >= cfg.max_wall_s:
            self.stop_reason = f"max_wall_s {cfg.max_wall_s} reached"
        if self.learner_idle and self.stop_reason is None:  # after any get_state above: the learner runs calls in order
            every = cfg.snapshot_every_updates
            next_snapshot = self.last_snapshot[1] + every if every else None
            stops = [n for n in (cfg.max_updates, next_snapshot) if n is not None and n > self.counters.updates]
            self.pending[self.components.learner.train.remote(ACTOR_CALL_S, min(stops, default=None))] = TrainCall()
            self.learner_idle = False

    # ---- the stop ---------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """End the components' work, take a last snapshot, score the best snapshot on fresh
        episodes and write summary.json; returns the summary."""
        self._count_last_calls()
        for collector in self.components.collectors:
            ray.kill(collector, no_restart=True)
        self._finish_evaluations()
        self.monitor.report_progress()
        self.progress.snapshot(ray.get(self.components.learner.get_state.remote()))
        ray.kill(self.components.learner, no_restart=True)
        bytes_per_state = self.stores.bytes_per_state()
        episodes = self.config.head.final_eval_episodes
        scores = final_scores(self.prepared, self.components.evaluators, self.progress, self.metrics,
                              episodes, FINAL_EVAL_SEED)
        session = SessionFacts(episodes, FINAL_EVAL_SEED, self.stop_reason, self.config.learner.loss,
                               self.config.actors.acting, self.monitor.learner_device, bytes_per_state, self.resumed,
                               self.placement, self.monitor.corrupt_chunks)
        summary = self.progress.write_summary(scores, session)
        self.metrics.log("summary", self.counters.updates, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        return summary

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
