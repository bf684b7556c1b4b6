"""The head's supervision loop: one remote call in flight per component, snapshots and
evaluations without pausing training, dead components replaced and, with actors.num_actors=auto,
collectors that follow the cluster's nodes (launch/recovery.py, launch/elastic.py), a stop on
the target score or a budget, and at the end a last snapshot and a final evaluation of the best
snapshot on fresh episodes (launch/ending.py). What the run keeps on disk is
checkpoints.progress's job; launch.run starts everything the head is handed, and stops it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from kd_system.checkpoints.progress import RunProgress
from kd_system.checkpoints.run_dir import load_snapshot
from kd_system.config import RunConfig
from kd_system.errors import KDError, StoreError
from kd_system.launch.calls import BaselinesCall, Call, CollectCall, EvalCall, RestoreCall, SnapshotCall, TrainCall
from kd_system.launch.cluster_info import AUTO
from kd_system.launch.elastic import FOLLOW_EVERY_S, Roster
from kd_system.launch.ending import Ending
from kd_system.launch.monitor import RunMonitor
from kd_system.launch.preparation import Prepared
from kd_system.launch.recovery import ACTOR_CALL_S, Recovery
from kd_system.launch.stores import RunStores
from kd_system.launch.supervision import DeathLog
from kd_system.launch.topology import Components
from kd_system.metrics import MetricsLog, say


def _unwrap(exc: Exception) -> Exception:
    """A component's own error (a KDError) rather than Ray's wrapper, so the user reads one line."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, KDError) else exc


class Head(Recovery, Ending):
    def __init__(self, config: RunConfig, prepared: Prepared, components: Components, stores: RunStores,
                 progress: RunProgress, metrics: MetricsLog, placement: dict[str, Any] | None, resumed: bool):
        self.config, self.prepared, self.components, self.stores = config, prepared, components, stores
        self.progress, self.metrics, self.placement, self.resumed = progress, metrics, placement, resumed
        self.counters = progress.counters
        self.roster = Roster.of(components.collector_tasks)  # which collectors work, wait or are gone
        self.auto = config.actors.num_actors == AUTO  # the collectors follow the cluster (launch/elastic.py)
        self.next_follow_s = time.monotonic() + FOLLOW_EVERY_S
        self.monitor = RunMonitor(prepared, progress, metrics, self.roster)
        self.stop_reason: str | None = None
        self.pending: dict[Any, Call] = {}
        self.snapshot_in_flight = self.eval_in_flight = False
        self.queued_eval: tuple[Path, int, int] | None = None  # (snapshot, updates, env_steps)
        self.learner_idle = True
        self.last_snapshot = (0.0, 0)  # (elapsed s, updates)
        self.deaths = DeathLog(config.head.max_deaths, config.head.death_window_s)
        self.failure: str | None = None  # why the run gave up, for the summary and the exit status
        self.learner_alive = True  # False while a replacement waits for a node or loads its snapshot

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
            self._check_store()
            self._follow_cluster()

    def _handle(self, call: Call, ref: Any) -> None:
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._died(call, exc)
            return
        except ray.exceptions.RayTaskError as exc:
            error = _unwrap(exc)
            if isinstance(error, StoreError) and self.stop_reason is None:
                # the store is gone past store.reconnect_s: end with a last snapshot and a summary
                self._give_up(f"the replay store failed ({error})")
                return
            if isinstance(error, KDError):
                raise error from None  # the user's input (a teacher file, a setting): one line, exit 2
            if self.stop_reason is None:  # a bug or a crash inside a component (a CUDA OOM): end cleanly,
                self._failed(call, exc)  # its traceback kept in the run directory
            return
        match call:
            case CollectCall(actor_index=index):
                self.monitor.collected(result)
                self.roster.answered(index)
                self.pending[self.components.collectors[index].collect.remote(ACTOR_CALL_S)] = call
            case TrainCall():
                self.monitor.trained(result)
                self.learner_idle = True
            case RestoreCall():
                self.learner_idle = self.learner_alive = True
            case BaselinesCall(task_index=index):
                if index not in self.monitor.baselines:  # a replacement evaluator's repeat is not news
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

    def _check_store(self) -> None:
        """A private redis-server that died is restarted on its port (replay/redis_server.py);
        the components reconnect by themselves within store.reconnect_s."""
        try:
            note = self.stores.check()
        except StoreError as exc:
            self._give_up(f"the replay store failed ({exc})")
            return
        if note:
            say(note)

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
        if cfg.max_wall_s is not None and self.progress.wall_s() >= cfg.max_wall_s:  # over every session of the run
            self.stop_reason = f"max_wall_s {cfg.max_wall_s} reached"
        if self.learner_idle and self.stop_reason is None:  # after any get_state above: the learner runs calls in order
            every = cfg.snapshot_every_updates
            next_snapshot = self.last_snapshot[1] + every if every else None
            stops = [n for n in (cfg.max_updates, next_snapshot) if n is not None and n > self.counters.updates]
            self.pending[self.components.learner.train.remote(ACTOR_CALL_S, min(stops, default=None))] = TrainCall()
            self.learner_idle = False
