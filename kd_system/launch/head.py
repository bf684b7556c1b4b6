"""The head: starts Redis and Ray, launches the components, supervises them, snapshots and
evaluates without pausing training, stops on a target / budget, and writes ``summary.json``."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from kd_system.config import RunConfig
from kd_system.errors import KDError
from kd_system.metrics import MetricsLog, human, progress_line, say
from kd_system.launch.preparation import Prepared, prepare
from kd_system.checkpoints.run_dir import RunDirectory, load_snapshot
from kd_system.replay.redis_server import LocalRedisServer
from kd_system.replay.store import ReplayStore, StoreAddress, mask_url
from kd_system.checkpoints.summary import combine_reports, run_scores, task_summary
from kd_system.launch.topology import Components, connect_ray, make_collector, placement, start_components, stop_components

ACTOR_CALL_S = 1.0  # each remote call runs this long, so the head reacts within about a second
FINAL_EVAL_SEED = 1_000_000  # fresh seeds: the final score is not the one the best snapshot was picked on
EVAL_DRAIN_S = 600.0  # an evaluation running at the stop is one round of eval_episodes: worth its wait


@dataclass
class Counters:
    env_steps: int = 0
    states_labelled: int = 0
    rollout_steps: int = 0  # env steps the lookahead labeller simulated (kd_system/lookahead.py)
    updates: int = 0
    wall_s_before: float = 0.0  # wall time of earlier sessions of a resumed run
    per_actor: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def add_collect(self, result: dict) -> None:
        last_steps, last_states, last_rollouts = self.per_actor.get(result["actor_id"], (0, 0, 0))
        steps, states, rollouts = result["env_steps"], result["states_written"], result.get("rollout_steps", 0)
        if steps < last_steps:  # the actor was restarted and its counters began again
            last_steps, last_states, last_rollouts = 0, 0, 0
        self.env_steps += steps - last_steps
        self.states_labelled += states - last_states
        self.rollout_steps += rollouts - last_rollouts
        self.per_actor[result["actor_id"]] = (steps, states, rollouts)

    def persistent(self) -> dict[str, int]:
        """What snapshots and run_state.json keep, so a resumed run counts on."""
        return {"env_steps": self.env_steps, "states_labelled": self.states_labelled,
                "rollout_steps": self.rollout_steps}


def _unwrap(exc: Exception) -> Exception:
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, KDError) else exc


class Head:
    def __init__(self, config: RunConfig, run: RunDirectory, prepared: Prepared, address: str | None, resumed: bool):
        self.config, self.run, self.prepared, self.address, self.resumed = config, run, prepared, address, resumed
        self.counters = Counters()
        self.start = time.perf_counter()
        self.best: dict[str, Any] | None = None
        self.baselines: dict[int, dict[str, Any]] = {}  # per task index
        self.eval_parts: dict[Path, dict[int, dict]] = {}  # per-task reports of a snapshot in evaluation
        self.task_names = [task.name for task in prepared.tasks]
        self.rank_by_agreement = not any(task.lookahead is not None for task in prepared.tasks)  # see _selection_key
        self.latest_score: float | None = None
        self._warned_undefined_score = False
        self.latest_loss: float | None = None
        self.eval_history: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.target_reached: tuple[int, float, int] | None = None  # (evaluations so far, score, updates)
        self.redis: LocalRedisServer | None = None
        self.started_ray = False
        self.learner_device = "cpu"
        self.pending: dict[Any, tuple] = {}
        self.last_progress = (0.0, 0, 0)

    # ---- start-up -------------------------------------------------------------------------
    def _start_stores(self) -> list[StoreAddress]:
        """One namespace per task (the run's name, suffixed with the task in multi-task runs)."""
        url = self.config.store.redis_url
        if url is None:
            self.redis = LocalRedisServer()
            url = self.redis.url
            say(f"no store.redis_url set: started a local redis-server at {url} (stopped at exit)")
        addresses, self.stores = [], []
        for task in self.prepared.tasks:
            run_id = self.run.root.name + (f".{task.name}" if self.prepared.multi_task else "")
            address = StoreAddress(url=url, run_id=run_id, capacity_states=self.config.store.capacity_states,
                                   chunk_states=self.config.store.chunk_states)
            store = ReplayStore.from_address(address)
            if self.config.store.clear_on_start and not self.resumed:
                store.clear()
            store.set_meta({"env_id": task.env_id, "teacher": task.teacher_path,
                            "student_network": task.student_spec.network})
            addresses.append(address)
            self.stores.append(store)
        namespaces = ", ".join(f"kd:{a.run_id}" for a in addresses)
        say(f"replay store: {mask_url(url)} namespace {namespaces}: capacity "
            f"{human(self.config.store.capacity_states)} states each")
        return addresses

    def _restore(self, components: Components) -> None:
        snapshots = self.run.snapshots()
        if not snapshots:
            say("resume: no snapshot yet, starting the student from scratch")
            return
        bundles, optimizer, counters = load_snapshot(snapshots[-1])
        weights = [bundle.weights for bundle in bundles]
        ray.get(components.learner.load_state.remote(weights, optimizer, counters["updates"], counters["samples"]))
        state = self.run.read_state()
        for name in ("env_steps", "states_labelled", "rollout_steps"):
            setattr(self.counters, name, int(state.get(name, counters.get(name, 0))))
        self.counters.updates = counters["updates"]
        self.counters.wall_s_before = float(state.get("wall_s", 0.0))
        best = state.get("best")
        if best and Path(best["path"]).is_dir():
            self.best = best
        say(f"resumed from {snapshots[-1]} at update {counters['updates']}")

    # ---- events ---------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _snapshot(self, learner_state: dict) -> Path:
        self.counters.updates = learner_state["updates"]
        path = self.run.write_snapshot(learner_state, self.counters.persistent(), self.task_names)
        protect = {Path(self.best["path"])} if self.best else set()
        self.run.prune(self.config.head.keep_snapshots, protect)
        self._write_state()
        return path

    def _write_state(self) -> None:
        self.run.write_state({**self.counters.persistent(), "updates": self.counters.updates,
                              "wall_s": self.counters.wall_s_before + self._elapsed(), "best": self.best})

    def _on_task_eval(self, snapshot: Path, updates: int, env_steps: int, task_index: int, report: dict) -> bool:
        """Collect one task's report; True once every task of the snapshot is in."""
        parts = self.eval_parts.setdefault(snapshot, {})
        parts[task_index] = report
        if len(parts) < len(self.prepared.tasks):
            return False
        del self.eval_parts[snapshot]
        combined = combine_reports(self.task_names, [parts[i] for i in range(len(parts))])
        self._on_eval(snapshot, updates, env_steps, combined)
        return True

    def _on_eval(self, snapshot: Path, updates: int, env_steps: int, report: dict) -> None:
        score = report["normalized_score"]  # the evaluator pairs it with the teacher's episodes
        report = {**report, "updates": updates, "env_steps": env_steps, "snapshot": str(snapshot)}
        self.latest_score = score
        self.eval_history.append(report)
        self.run.write_eval(snapshot, report)
        self.metrics.log("eval", updates, {k: v for k, v in report.items() if k != "student_returns"})
        if not math.isfinite(score) and not self._warned_undefined_score:
            self._warned_undefined_score = True
            say("the teacher scored no better than a random policy on the evaluation episodes, so the "
                "teacher-normalized score is undefined (nan); snapshots are ranked by agreement with the teacher")
        agreement = report.get("agreement_teacher_states", 0.0)
        score_high = report.get("normalized_score_ci95_high", float("nan"))
        if snapshot.is_dir() and (self.best is None or self._selection_key(score, agreement, score_high) >=
                                  self._selection_key(self.best["score"], self.best.get("agreement", 0.0),
                                                      self.best.get("score_high", float("nan")))):
            self.best = {"path": str(snapshot), "score": score, "updates": updates, "agreement": agreement,
                         "score_high": score_high}
            self._write_state()
        self._check_target(score, updates)

    def _selection_key(self, score: float, agreement: float, score_high: float = float("nan")) -> tuple:
        """Which snapshot is best. Below the target score: the higher score (a score over a few
        episodes is what tells a weak student from a good one). At the target, meaning the score or
        the upper end of its 95% CI reaches it: the higher agreement with the teacher on held-out
        states. There a few-episode score is mostly noise: ranking by it, a lucky early snapshot
        (Acrobot: 1.010 at 98.8% agreement) beat later ones (0.998 at 99.8%) that play better.
        Students of lookahead labels are ranked by score throughout: they are meant to depart from
        the teacher where rollouts found better actions, so agreement with it is no longer the aim."""
        rank = score if math.isfinite(score) else -math.inf  # NaN compares false with everything
        target = self.config.head.target_score
        if self.rank_by_agreement and target is not None and (rank >= target or score_high >= target):
            return (1, agreement, rank)
        return (0, rank, agreement)

    def _check_target(self, score: float, updates: int) -> None:
        """Stop at the target score, or that many evaluations after it (head.evals_after_target)."""
        target, extra = self.config.head.target_score, self.config.head.evals_after_target
        if target is None:
            return
        if self.target_reached is None:
            if not score >= target:
                return
            self.target_reached = (len(self.eval_history), score, updates)
            if extra:
                say(f"target score {target} reached (score {score:.3f} at update {updates}); "
                    f"training on for {extra} more evaluations to pick the best snapshot")
        at_eval, first_score, first_updates = self.target_reached
        more = len(self.eval_history) - at_eval
        if more >= extra:
            self.stop_reason = (f"target score {target} reached (score {first_score:.3f} at update {first_updates})"
                                + (f", then {more} more evaluations" if more else ""))

    def _report_progress(self) -> None:
        now = self._elapsed()
        then, states_then, updates_then = self.last_progress
        dt = max(now - then, 1e-6)
        rates = {"states": (self.counters.states_labelled - states_then) / dt,
                 "updates": (self.counters.updates - updates_then) / dt}
        print(progress_line(now, vars(self.counters), rates, self.latest_loss, self.latest_score,
                            self.best["score"] if self.best else None), flush=True)
        self.metrics.log("progress", self.counters.updates, {"elapsed_s": now, "env_steps": self.counters.env_steps,
                         "states_labelled": self.counters.states_labelled, "states_per_s": rates["states"],
                         "updates_per_s": rates["updates"]})
        self.last_progress = (now, self.counters.states_labelled, self.counters.updates)

    # ---- the supervision loop ---------------------------------------------------------------
    def supervise(self, components: Components, stores: list[StoreAddress]) -> None:
        cfg = self.config.head
        self.pending = pending = {}
        for index, collector in enumerate(components.collectors):
            pending[collector.collect.remote(ACTOR_CALL_S)] = ("collect", index)
        for task_index, evaluator in enumerate(components.evaluators):
            pending[evaluator.baselines.remote(cfg.eval_episodes, cfg.seed)] = ("baselines", task_index)
        snapshot_in_flight = eval_in_flight = False
        queued_eval: tuple[Path, int, int] | None = None
        last_snapshot_t, last_snapshot_updates = self._elapsed(), self.counters.updates
        self.last_progress = (self._elapsed(), self.counters.states_labelled, self.counters.updates)
        learner_idle = True
        while self.stop_reason is None:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
            for ref in ready:
                kind = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    if kind[0] != "collect":
                        raise
                    say(f"actor {kind[1]} died ({type(exc).__name__}); starting a replacement")
                    components.collectors[kind[1]] = make_collector(
                        self.config, kind[1], components.collector_tasks[kind[1]], self.prepared, stores)
                    result = None
                except ray.exceptions.RayTaskError as exc:
                    raise _unwrap(exc) from None
                if kind[0] == "collect":
                    if result is not None:
                        self.counters.add_collect(result)
                        returns = result["episode_returns"]
                        self.metrics.log("actor", self.counters.env_steps, {
                            "actor_id": result["actor_id"], "policy_version": result["policy_version"],
                            "time_wait_limiter_s": result["time_wait_limiter_s"],
                            **({"behaviour_return_mean": sum(returns) / len(returns)} if returns else {})})
                    pending[components.collectors[kind[1]].collect.remote(ACTOR_CALL_S)] = kind
                elif kind[0] == "train":
                    self.counters.updates = result["updates"]
                    self.learner_device = result["device"]
                    if result["loss"] is not None:
                        self.latest_loss = result["loss"]
                        self.metrics.log("learner", result["updates"], result)
                    learner_idle = True
                elif kind[0] == "baselines":
                    task = self.prepared.tasks[kind[1]]
                    self.baselines[kind[1]] = result
                    self.metrics.log("baselines", 0, {"task": task.name, **result})
                    say(f"{task.env_id}: teacher {result['teacher_return_mean']:.1f} ± {result['teacher_return_std']:.1f}, "
                        f"random {result['random_return_mean']:.1f} over {result['episodes']} episodes")
                elif kind[0] == "snapshot":
                    snapshot_in_flight = False
                    queued_eval = (self._snapshot(result), result["updates"], self.counters.env_steps)
                elif kind[0] == "eval":
                    if self._on_task_eval(*kind[1:], result):
                        eval_in_flight = False
            if queued_eval and not eval_in_flight and len(self.baselines) == len(self.prepared.tasks):
                snapshot, updates, env_steps = queued_eval
                bundles = load_snapshot(snapshot)[0]
                for task_index, (evaluator, bundle) in enumerate(zip(components.evaluators, bundles)):
                    pending[evaluator.evaluate.remote(bundle, cfg.eval_episodes, cfg.seed)] = (
                        "eval", snapshot, updates, env_steps, task_index)
                eval_in_flight, queued_eval = True, None
            now = self._elapsed()
            due_by_updates = cfg.snapshot_every_updates and self.counters.updates - last_snapshot_updates >= cfg.snapshot_every_updates
            if not snapshot_in_flight and self.counters.updates > last_snapshot_updates and (
                    now - last_snapshot_t >= cfg.snapshot_every_s or due_by_updates):
                pending[components.learner.get_state.remote()] = ("snapshot",)
                snapshot_in_flight, last_snapshot_t, last_snapshot_updates = True, now, self.counters.updates
            if now - self.last_progress[0] >= cfg.progress_every_s:
                self._report_progress()
            if cfg.max_updates is not None and self.counters.updates >= cfg.max_updates:
                self.stop_reason = f"max_updates {cfg.max_updates} reached"
            if cfg.max_wall_s is not None and now >= cfg.max_wall_s:
                self.stop_reason = f"max_wall_s {cfg.max_wall_s} reached"
            if learner_idle and self.stop_reason is None:  # after any get_state above: the learner runs calls in order
                next_snapshot = last_snapshot_updates + cfg.snapshot_every_updates if cfg.snapshot_every_updates else None
                stops = [n for n in (cfg.max_updates, next_snapshot) if n is not None and n > self.counters.updates]
                pending[components.learner.train.remote(ACTOR_CALL_S, min(stops, default=None))] = ("train",)
                learner_idle = False

    # ---- shutdown and the summary -------------------------------------------------------------
    def _finish_evaluations(self) -> None:
        """Let evaluations already running end and count them: the snapshot they score may be the
        best one, and a short run (max_updates reached within a few learner calls) would otherwise
        stop with none on record."""
        running = [ref for ref, kind in self.pending.items() if kind[0] == "eval"]
        if not running:
            return
        ended, _ = ray.wait(running, num_returns=len(running), timeout=EVAL_DRAIN_S)
        stop_reason = self.stop_reason
        for ref in ended:
            try:
                report = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            self._on_task_eval(*self.pending[ref][1:], report)
        self.stop_reason = stop_reason  # a target reached now does not rename why the run stopped

    def finish(self, components: Components) -> dict:
        cfg = self.config.head
        in_flight = [ref for ref, kind in self.pending.items() if kind[0] in ("collect", "train")]
        ended, _ = ray.wait(in_flight, num_returns=len(in_flight), timeout=3 * ACTOR_CALL_S)  # let calls end cleanly
        for ref in ended:  # count the work of the last calls too
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            if self.pending[ref][0] == "collect":
                self.counters.add_collect(result)
            else:
                self.counters.updates = max(self.counters.updates, result["updates"])
        for collector in components.collectors:
            ray.kill(collector, no_restart=True)
        self._finish_evaluations()
        self._report_progress()
        self._snapshot(ray.get(components.learner.get_state.remote()))
        ray.kill(components.learner, no_restart=True)
        store_stats = [store.stats() for store in self.stores]
        if self.best is None:
            latest = self.run.snapshots()[-1]
            self.best = {"path": str(latest), "score": None, "updates": self.counters.updates}
        say(f"final evaluation of {self.best['path']} over {cfg.final_eval_episodes} fresh episodes")
        bundles = load_snapshot(Path(self.best["path"]))[0]
        baselines = ray.get([e.baselines.remote(cfg.final_eval_episodes, FINAL_EVAL_SEED) for e in components.evaluators])
        finals = ray.get([e.evaluate.remote(b, cfg.final_eval_episodes, FINAL_EVAL_SEED)
                          for e, b in zip(components.evaluators, bundles)])
        tasks = [task_summary(task, base, final) for task, base, final in zip(self.prepared.tasks, baselines, finals)]
        final_report = combine_reports(self.task_names, finals)
        self.metrics.log("final_eval", self.counters.updates,
                         {k: v for k, v in final_report.items() if k != "student_returns"} | {"snapshot": self.best["path"]})
        bytes_stored = sum(stats["bytes_stored"] for stats in store_stats)
        states_stored = sum(stats["states_stored"] for stats in store_stats)
        summary = {
            **run_scores(tasks, self.prepared.teacher_params, self.prepared.student_params, final_report),
            "eval_episodes": cfg.final_eval_episodes, "eval_seed": FINAL_EVAL_SEED,
            **self.counters.persistent(), "learner_updates": self.counters.updates,
            "wall_s": self.counters.wall_s_before + self._elapsed(),
            "session_wall_s": self._elapsed(),
            "best_checkpoint": self.best["path"], "best_checkpoint_selection_score": self.best.get("score"),
            "stop_reason": self.stop_reason, "loss": self.config.learner.loss, "acting": self.config.actors.acting,
            "learner_device": self.learner_device, "store_bytes_per_state": bytes_stored / max(1, states_stored),
            "evaluations": len(self.eval_history), "resumed": self.resumed, "placement": getattr(self, "placement", None),
        }
        self.run.write_summary(summary)
        self.metrics.log("summary", self.counters.updates, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        return summary


def run(config: RunConfig, run: RunDirectory, address: str | None = None, resumed: bool = False) -> dict:
    prepared = prepare(config)
    head = Head(config, run, prepared, address, resumed)
    whose = "the teacher's" if not prepared.multi_task else f"the {len(prepared.tasks)} teachers' combined"
    say(f"run directory {run.root}; student {prepared.student_params} params = "
        f"{prepared.student_params / prepared.teacher_params:.1%} of {whose} {prepared.teacher_params}")
    components = None
    try:
        store_addresses = head._start_stores()
        head.started_ray = connect_ray(address)
        local = head.started_ray and not (address or os.environ.get("RAY_ADDRESS"))
        components = start_components(config, prepared, store_addresses, fixed_cluster=local)
        head.metrics = MetricsLog(run.metrics_path, run.tensorboard_dir)
        head.placement = placement(components)
        say(f"placement: learner on node {head.placement['learner'][:8]}, actors on "
            f"{sorted({node[:8] for node in head.placement['actors']})}")
        if resumed:
            head._restore(components)
        try:
            head.supervise(components, store_addresses)
        except KeyboardInterrupt:
            head.stop_reason = "interrupted"
            say("interrupted: taking a last snapshot before stopping")
        summary = head.finish(components)
        for task in summary.get("tasks", [summary]):
            low, high = task["normalized_score_ci95"]
            say(f"{task['env_id']}: student {task['student_return_mean']:.1f} vs teacher {task['teacher_return_mean']:.1f} "
                f"(random {task['random_return_mean']:.1f}) -> normalized {task['normalized_score']:.3f} "
                f"(95% CI [{low:.3f}, {high:.3f}])")
        outcome = f"normalized score {summary['normalized_score']:.3f}"
        if prepared.multi_task:
            low, high = summary["normalized_score_ci95"]
            outcome = (f"mean normalized score over tasks {summary['normalized_score']:.3f} (95% CI [{low:.3f}, "
                       f"{high:.3f}]), worst task {summary['normalized_score_min']:.3f}")
        say(f"done ({head.stop_reason}): {outcome}; summary in {run.summary_path}")
        return summary
    finally:
        if components is not None:
            stop_components(components)
        if getattr(head, "metrics", None) is not None:
            head.metrics.close()
        if head.started_ray:
            ray.shutdown()
        for store in getattr(head, "stores", []):
            store.close()
        if head.redis is not None:
            head.redis.stop()
