"""The head's recovery of components that die (a spot VM taken back, an OOM kill, a crash): a
replacement collector with fresh env seeds, a replacement learner restored from the latest
snapshot, a replacement evaluator that re-runs the evaluation it lost; and giving up, with a
summary, on a component that keeps dying. Why the head and not Ray's max_restarts:
launch/supervision.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from kd_system.checkpoints.run_dir import load_snapshot
from kd_system.launch.calls import LEARNER_CALLS, BaselinesCall, Call, CollectCall, EvalCall, RestoreCall
from kd_system.launch.supervision import death_of
from kd_system.launch.topology import make_collector, make_evaluator, make_learner
from kd_system.metrics import say

ACTOR_CALL_S = 1.0  # each remote call runs this long, so the head reacts within about a second


class Recovery:
    """Mixed into the Head: it owns the state these methods change (see head.py)."""

    def _died(self, call: Call, exc: Exception) -> None:
        """Replace the component that answered ``call`` with a dead actor, unless it keeps dying."""
        name = {CollectCall: lambda c: f"collector {c.actor_index}", BaselinesCall: lambda c: f"evaluator {c.task_index}",
                EvalCall: lambda c: f"evaluator {c.task_index}"}.get(type(call), lambda c: "learner")(call)
        death = death_of(name, exc)
        if self.deaths.record(name):
            self._give_up(f"{name} died {self.config.head.max_deaths} times within {self.config.head.death_window_s:g} s; "
                          f"{death.where()}", learner_dead=name == "learner")
            return
        match call:
            case CollectCall(actor_index=index):
                self._replace_collector(index, death.where())
            case BaselinesCall(task_index=index) | EvalCall(task_index=index):
                self._replace_evaluator(index, call, death.where())
            case _:
                self._replace_learner(death.where())

    def _replace_collector(self, index: int, where: str) -> None:
        self.replacements[index] = self.replacements.get(index, 0) + 1
        say(f"actor {index} died ({where}); starting replacement #{self.replacements[index]} with fresh env seeds")
        self.components.collectors[index] = make_collector(
            self.config, index, self.components.collector_tasks[index], self.prepared, self.stores.addresses,
            incarnation=self.replacements[index])
        self.pending[self.components.collectors[index].collect.remote(ACTOR_CALL_S)] = CollectCall(index)

    def _replace_evaluator(self, index: int, call: Call, where: str) -> None:
        """A fresh evaluator replays the baselines (its held-out states), then the evaluation it lost."""
        say(f"evaluator {index} died ({where}); starting a replacement"
            + (f" and re-queueing the evaluation of {Path(call.snapshot).name}" if isinstance(call, EvalCall) else ""))
        _kill(self.components.evaluators[index])
        evaluator = self.components.evaluators[index] = make_evaluator(self.config, self.prepared, index)
        cfg = self.config.head
        self.pending[evaluator.baselines.remote(cfg.eval_episodes, cfg.seed)] = BaselinesCall(index)
        if isinstance(call, EvalCall):
            bundle = load_snapshot(call.snapshot)[0][index]
            self.pending[evaluator.evaluate.remote(bundle, cfg.eval_episodes, cfg.seed)] = call

    def _replace_learner(self, where: str) -> None:
        """A fresh learner restored from the latest snapshot: the updates since it are lost, at most
        one snapshot interval (head.snapshot_every_s)."""
        for ref in [ref for ref, call in self.pending.items() if isinstance(call, LEARNER_CALLS)]:
            del self.pending[ref]  # calls to the dead learner: they only fail
        _kill(self.components.learner)
        learner = self.components.learner = make_learner(self.config, self.prepared, self.stores.addresses,
                                                         self.components.learner_num_gpus)
        snapshots = self.progress.run.snapshots()
        lost = self.counters.updates
        if snapshots:
            bundles, optimizer, saved = load_snapshot(snapshots[-1])
            ref = learner.load_state.remote([b.weights for b in bundles], optimizer, saved["updates"], saved["samples"])
            self.counters.updates = saved["updates"]
        else:
            ref, self.counters.updates = learner.node_id.remote(), 0
        say(f"learner died ({where}); restarting it from "
            + (f"{snapshots[-1].name} (update {self.counters.updates}; {lost - self.counters.updates} updates lost)"
               if snapshots else "scratch (no snapshot yet)"))
        self.pending[ref] = RestoreCall(snapshots[-1] if snapshots else None)
        self.snapshot_in_flight, self.learner_idle = False, False
        self.last_snapshot = (self.progress.elapsed(), self.counters.updates)

    def _give_up(self, why: str, learner_dead: bool = False) -> None:
        say(f"giving up: {why}")
        self.failure, self.stop_reason = why, f"failed: {why}"
        if learner_dead:
            self.learner_alive = False

def _kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # already dead: nothing to stop
        pass
