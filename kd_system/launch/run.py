"""A run's lifetime in this process: check everything, start the stores, Ray and the components,
continue from the latest snapshot when resuming, hand it all to the head to supervise, and stop
everything again, whatever happens."""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import ray

from kd_system.checkpoints.progress import ResumePoint, RunCounters, RunProgress, resume_point
from kd_system.checkpoints.run_dir import RunDirectory
from kd_system.checkpoints.selection import SnapshotSelection
from kd_system.config import RunConfig
from kd_system.launch.head import Head
from kd_system.launch.preparation import Prepared, prepare
from kd_system.launch.stores import RunStores
from kd_system.launch.teacher_engine import with_engines
from kd_system.launch.topology import Components, connect_ray, placement, start_components, stop_components
from kd_system.launch.watchdog import Watchdog
from kd_system.metrics import MetricsLog, ResumedAt, say
from kd_system.teachers.imports.writing import write_imported


def run(config: RunConfig, run_dir: RunDirectory, address: str | None = None, resumed: bool = False) -> dict[str, Any]:
    """Distil until a stop condition holds; returns the summary (also in the run's summary.json)."""
    started = time.perf_counter()  # the run's wall time counts Ray's start-up too
    # engines before the imported teachers are written: a refused engine leaves a new run directory unused
    prepared = _keep_imported_teachers(with_engines(config, prepare(config)), run_dir)
    point = resume_point(run_dir) if resumed else None  # read (and checked) before anything starts
    whose = "the teacher's" if not prepared.multi_task else f"the {len(prepared.tasks)} teachers' combined"
    say(f"run directory {run_dir.root}; student {prepared.student_params} params = "
        f"{prepared.student_params / prepared.teacher_params:.1%} of {whose} {prepared.teacher_params}")
    with ExitStack() as stop:  # stops what was started, in reverse order, each even if another fails
        stores = RunStores(config, run_dir.root.name, prepared, resumed)
        stop.callback(stores.close)
        started_ray = connect_ray(address)
        local = started_ray and not (address or os.environ.get("RAY_ADDRESS"))
        if started_ray:  # a Ray this process started, it stops; a local one has a watchdog if it dies first
            stop.callback(_stop_ray, Watchdog.for_local_ray() if local else None)
        components = start_components(config, prepared, stores.addresses, fixed_cluster=local)
        stop.callback(stop_components, components)
        counters = point.counters if point else RunCounters()
        metrics = MetricsLog(run_dir.metrics_path, run_dir.tensorboard_dir,
                             ResumedAt(counters.updates, counters.env_steps) if resumed else None)
        stop.callback(metrics.close)
        where = placement(components)
        say(f"placement: learner on node {(where['learner'] or 'gone')[:8]}, actors on "
            f"{sorted({(node or 'gone')[:8] for node in where['actors']})}")
        progress = _progress(config, run_dir, prepared, components, resumed, point, counters, started)
        head = Head(config, prepared, components, stores, progress, metrics, where, resumed)
        head.supervise()
        summary = head.finish()
        _say_outcome(summary, prepared, run_dir)
        return summary


def _stop_ray(watchdog: Watchdog | None) -> None:
    """ray.shutdown(); the watchdog of a local Ray ends what is left of it if the shutdown failed."""
    clean = False
    try:
        ray.shutdown()
        clean = True
    finally:
        if watchdog is not None:
            watchdog.close(clean)


def _keep_imported_teachers(prepared: Prepared, run_dir: RunDirectory) -> Prepared:
    """A teacher imported on the fly is written into the run directory, converted and with its card,
    and the student's card points there: the run holds everything ``kd-system eval`` needs."""
    tasks = []
    for task in prepared.tasks:
        if task.imported:
            where = run_dir.root / ("teacher" if not prepared.multi_task else f"teacher-{task.name}")
            write_imported(where, task.teacher, force=True)
            ensemble = task.teacher.spec.network.get("kind") == "ensemble"  # its members are in the card already
            say(f"{'ensemble' if ensemble else 'imported'} teacher {'' if ensemble else task.teacher_path + ' '}"
                f"written to {where}")
            card = {**task.student_spec.model_card, "distilled_from": str(where),
                    **({} if ensemble else {"teacher_imported_from": task.teacher_path})}
            task = replace(task, teacher_path=str(where), student_spec=replace(task.student_spec, model_card=card))
        tasks.append(task)
    return replace(prepared, tasks=tuple(tasks))


def _progress(config: RunConfig, run_dir: RunDirectory, prepared: Prepared, components: Components,
              resumed: bool, point: ResumePoint | None, counters: RunCounters, started: float) -> RunProgress:
    """The run's bookkeeping; a resumed run continues its latest snapshot, learner included."""
    if point is not None:
        ray.get(components.learner.load_state.remote(point.student_weights, point.optimizer, point.updates,
                                                     point.samples))
        say(f"resumed from {point.snapshot} at update {point.updates} ({point.counters.wall_s_before:.0f} s of "
            "wall time before)")
    elif resumed:
        say("resume: no snapshot yet, starting the student from scratch")
    # students of lookahead labels are meant to depart from the teacher: see selection_key
    rank_by_agreement = not any(task.lookahead is not None for task in prepared.tasks)
    selection = SnapshotSelection(config.head.target_score, config.head.evals_after_target, rank_by_agreement,
                                  best=point.best if point else None)
    return RunProgress(run_dir, [task.name for task in prepared.tasks], config.head.keep_snapshots, selection,
                       counters, started, resumed_from=point.snapshot if point else None)


def _say_outcome(summary: dict[str, Any], prepared: Prepared, run_dir: RunDirectory) -> None:
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
    say(f"done ({summary['stop_reason']}): {outcome}; summary in {run_dir.summary_path}")
