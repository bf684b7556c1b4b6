"""The head: starts Redis and Ray, launches the components, supervises them, snapshots and
evaluates without pausing training, stops on a target / budget, and writes ``summary.json``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from .config import RunConfig
from .errors import KDError
from .metrics import MetricsLog, human, progress_line, say
from .preparation import Prepared, prepare
from .run_dir import RunDirectory, load_snapshot
from .store import LocalRedisServer, ReplayStore, StoreAddress, mask_url
from .topology import Components, connect_ray, make_collector, placement, start_components, stop_components

ACTOR_CALL_S = 1.0  # each remote call runs this long, so the head reacts within about a second
FINAL_EVAL_SEED = 1_000_000  # fresh seeds: the final score is not the one the best snapshot was picked on


@dataclass
class Counters:
    env_steps: int = 0
    states_labelled: int = 0
    updates: int = 0
    wall_s_before: float = 0.0  # wall time of earlier sessions of a resumed run
    per_actor: dict[int, tuple[int, int]] = field(default_factory=dict)

    def add_collect(self, result: dict) -> None:
        last_steps, last_states = self.per_actor.get(result["actor_id"], (0, 0))
        steps, states = result["env_steps"], result["states_written"]
        if steps < last_steps:  # the actor was restarted and its counters began again
            last_steps, last_states = 0, 0
        self.env_steps += steps - last_steps
        self.states_labelled += states - last_states
        self.per_actor[result["actor_id"]] = (steps, states)


def _unwrap(exc: Exception) -> Exception:
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, KDError) else exc


class Head:
    def __init__(self, config: RunConfig, run: RunDirectory, prepared: Prepared, address: str | None, resumed: bool):
        self.config, self.run, self.prepared, self.address, self.resumed = config, run, prepared, address, resumed
        self.counters = Counters()
        self.start = time.perf_counter()
        self.best: dict[str, Any] | None = None
        self.baselines: dict[str, Any] | None = None
        self.latest_score: float | None = None
        self.latest_loss: float | None = None
        self.eval_history: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.redis: LocalRedisServer | None = None
        self.started_ray = False
        self.learner_device = "cpu"
        self.pending: dict[Any, tuple] = {}
        self.last_progress = (0.0, 0, 0)

    # ---- start-up -------------------------------------------------------------------------
    def _start_store(self) -> StoreAddress:
        url = self.config.store.redis_url
        if url is None:
            self.redis = LocalRedisServer()
            url = self.redis.url
            say(f"no store.redis_url set: started a local redis-server at {url} (stopped at exit)")
        address = StoreAddress(url=url, run_id=self.run.root.name, capacity_states=self.config.store.capacity_states,
                               chunk_states=self.config.store.chunk_states)
        self.store = ReplayStore.from_address(address)
        if self.config.store.clear_on_start and not self.resumed:
            self.store.clear()
        self.store.set_meta({"env_id": self.config.env.id, "teacher": self.prepared.teacher_path,
                             "student_network": self.prepared.student_spec.network})
        say(f"replay store: {mask_url(url)} namespace kd:{address.run_id}: capacity {human(address.capacity_states)} states")
        return address

    def _restore(self, components: Components) -> None:
        snapshots = self.run.snapshots()
        if not snapshots:
            say("resume: no snapshot yet, starting the student from scratch")
            return
        bundle, optimizer, counters = load_snapshot(snapshots[-1])
        ray.get(components.learner.load_state.remote(bundle.weights, optimizer, counters["updates"], counters["samples"]))
        state = self.run.read_state()
        self.counters.env_steps = int(state.get("env_steps", counters.get("env_steps", 0)))
        self.counters.states_labelled = int(state.get("states_labelled", counters.get("states_labelled", 0)))
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
        counters = {"env_steps": self.counters.env_steps, "states_labelled": self.counters.states_labelled}
        path = self.run.write_snapshot(learner_state, counters)
        protect = {Path(self.best["path"])} if self.best else set()
        self.run.prune(self.config.head.keep_snapshots, protect)
        self._write_state()
        return path

    def _write_state(self) -> None:
        self.run.write_state({"env_steps": self.counters.env_steps, "states_labelled": self.counters.states_labelled,
                              "updates": self.counters.updates, "wall_s": self.counters.wall_s_before + self._elapsed(),
                              "best": self.best})

    def _on_eval(self, snapshot: Path, updates: int, report: dict) -> None:
        score = report["normalized_score"]  # the evaluator pairs it with the teacher's episodes
        report = {**report, "updates": updates, "snapshot": str(snapshot)}
        self.latest_score = score
        self.eval_history.append(report)
        self.run.write_eval(snapshot, report)
        self.metrics.log("eval", updates, {k: v for k, v in report.items() if k != "student_returns"}
                         | {"env_steps": self.counters.env_steps})
        key = (score, report.get("agreement_teacher_states", 0.0))
        if snapshot.is_dir() and (self.best is None or key >= (self.best["score"], self.best.get("agreement", 0.0))):
            self.best = {"path": str(snapshot), "score": score, "updates": updates,
                         "agreement": report.get("agreement_teacher_states", 0.0)}
            self._write_state()
        target = self.config.head.target_score
        if target is not None and score >= target:
            self.stop_reason = f"target score {target} reached (score {score:.3f} at update {updates})"

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
    def supervise(self, components: Components, store: StoreAddress) -> None:
        cfg = self.config.head
        self.pending = pending = {}
        for index, collector in enumerate(components.collectors):
            pending[collector.collect.remote(ACTOR_CALL_S)] = ("collect", index)
        pending[components.learner.train.remote(ACTOR_CALL_S)] = ("train",)
        pending[components.evaluator.baselines.remote(cfg.eval_episodes, cfg.seed)] = ("baselines",)
        snapshot_in_flight = eval_in_flight = False
        queued_eval: tuple[Path, int] | None = None
        last_snapshot_t, last_snapshot_updates = self._elapsed(), self.counters.updates
        self.last_progress = (self._elapsed(), self.counters.states_labelled, self.counters.updates)
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
                    components.collectors[kind[1]] = make_collector(self.config, kind[1], store, self.prepared.teacher,
                                                                   self.prepared.student_spec)
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
                    pending[components.learner.train.remote(ACTOR_CALL_S)] = kind
                elif kind[0] == "baselines":
                    self.baselines = result
                    self.metrics.log("baselines", 0, result)
                    say(f"teacher {result['teacher_return_mean']:.1f} ± {result['teacher_return_std']:.1f}, random "
                        f"{result['random_return_mean']:.1f} over {result['episodes']} episodes")
                elif kind[0] == "snapshot":
                    snapshot_in_flight = False
                    queued_eval = (self._snapshot(result), result["updates"])
                elif kind[0] == "eval":
                    eval_in_flight = False
                    self._on_eval(kind[1], kind[2], result)
            if queued_eval and not eval_in_flight and self.baselines is not None:
                snapshot, updates = queued_eval
                bundle = load_snapshot(snapshot)[0]
                pending[components.evaluator.evaluate.remote(bundle, cfg.eval_episodes, cfg.seed)] = ("eval", snapshot, updates)
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

    # ---- shutdown and the summary -------------------------------------------------------------
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
        self._report_progress()
        self._snapshot(ray.get(components.learner.get_state.remote()))
        ray.kill(components.learner, no_restart=True)
        store_stats = self.store.stats()
        if self.best is None:
            latest = self.run.snapshots()[-1]
            self.best = {"path": str(latest), "score": None, "updates": self.counters.updates}
        say(f"final evaluation of {self.best['path']} over {cfg.final_eval_episodes} fresh episodes")
        bundle = load_snapshot(Path(self.best["path"]))[0]
        evaluator = components.evaluator
        baselines = ray.get(evaluator.baselines.remote(cfg.final_eval_episodes, FINAL_EVAL_SEED))
        final = ray.get(evaluator.evaluate.remote(bundle, cfg.final_eval_episodes, FINAL_EVAL_SEED))
        score = final["normalized_score"]
        wall_s = self.counters.wall_s_before + self._elapsed()
        summary = {
            "env_id": self.config.env.id, "teacher_checkpoint": self.prepared.teacher_path,
            "teacher_params": self.prepared.teacher_params, "student_params": self.prepared.student_params,
            "student_param_fraction": self.prepared.student_params / self.prepared.teacher_params,
            "teacher_return_mean": baselines["teacher_return_mean"], "teacher_return_std": baselines["teacher_return_std"],
            "student_return_mean": final["student_return_mean"], "student_return_std": final["student_return_std"],
            "random_return_mean": baselines["random_return_mean"], "normalized_score": score,
            "normalized_score_ci95": final["normalized_score_ci95"],
            "eval_episodes": cfg.final_eval_episodes, "eval_seed": FINAL_EVAL_SEED,
            "agreement_teacher_states": final.get("agreement_teacher_states"),
            "agreement_student_states": final.get("agreement_student_states"),
            "kl_teacher_states": final.get("kl_teacher_states"), "kl_student_states": final.get("kl_student_states"),
            "env_steps": self.counters.env_steps, "states_labelled": self.counters.states_labelled,
            "learner_updates": self.counters.updates, "wall_s": wall_s, "session_wall_s": self._elapsed(),
            "best_checkpoint": self.best["path"], "best_checkpoint_selection_score": self.best.get("score"),
            "stop_reason": self.stop_reason, "loss": self.config.learner.loss, "learner_device": self.learner_device,
            "store_bytes_per_state": store_stats["bytes_stored"] / max(1, store_stats["states_stored"]), "evaluations": len(self.eval_history),
            "resumed": self.resumed, "placement": getattr(self, "placement", None),
        }
        self.run.write_summary(summary)
        self.metrics.log("summary", self.counters.updates, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        return summary


def run(config: RunConfig, run: RunDirectory, address: str | None = None, resumed: bool = False) -> dict:
    prepared = prepare(config)
    head = Head(config, run, prepared, address, resumed)
    say(f"run directory {run.root}; student {prepared.student_params} params = "
        f"{prepared.student_params / prepared.teacher_params:.1%} of the teacher's {prepared.teacher_params}")
    components = None
    try:
        store_address = head._start_store()
        head.started_ray = connect_ray(address)
        components = start_components(config, store_address, prepared.teacher, prepared.student_spec)
        head.metrics = MetricsLog(run.metrics_path, run.tensorboard_dir)
        head.placement = placement(components)
        say(f"placement: learner on node {head.placement['learner'][:8]}, actors on "
            f"{sorted({node[:8] for node in head.placement['actors']})}")
        if resumed:
            head._restore(components)
        try:
            head.supervise(components, store_address)
        except KeyboardInterrupt:
            head.stop_reason = "interrupted"
            say("interrupted: taking a last snapshot before stopping")
        summary = head.finish(components)
        say(f"done ({head.stop_reason}): student {summary['student_return_mean']:.1f} vs teacher "
            f"{summary['teacher_return_mean']:.1f} (random {summary['random_return_mean']:.1f}) -> normalized "
            f"{summary['normalized_score']:.3f} (95% CI [{summary['normalized_score_ci95'][0]:.3f}, "
            f"{summary['normalized_score_ci95'][1]:.3f}]); summary in {run.summary_path}")
        return summary
    finally:
        if components is not None:
            stop_components(components)
        if getattr(head, "metrics", None) is not None:
            head.metrics.close()
        if head.started_ray:
            ray.shutdown()
        if getattr(head, "store", None) is not None:
            head.store.close()
        if head.redis is not None:
            head.redis.stop()
