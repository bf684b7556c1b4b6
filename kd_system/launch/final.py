"""The run's last evaluation: the best snapshot (else the latest) against teacher and random
policy on episodes none of the selection evaluations saw."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from kd_system.checkpoints.progress import RunProgress
from kd_system.checkpoints.run_dir import load_snapshot
from kd_system.checkpoints.summary import combine_reports, run_scores, task_summary
from kd_system.launch.preparation import Prepared
from kd_system.launch.teacher_engine import engine_record, run_engine_record
from kd_system.metrics import MetricsLog, say


def final_scores(prepared: Prepared, evaluators: list[Any], progress: RunProgress, metrics: MetricsLog,
                 episodes: int, seed: int) -> dict[str, Any]:
    """Evaluate the pick of ``progress`` on every task; returns the scores summary.json opens with."""
    best = progress.final_pick()
    say(f"final evaluation of {best.path} over {episodes} fresh episodes")
    bundles = load_snapshot(Path(best.path))[0]
    baselines = ray.get([e.baselines.remote(episodes, seed) for e in evaluators])
    finals = ray.get([e.evaluate.remote(b, episodes, seed) for e, b in zip(evaluators, bundles)])
    tasks = [task_summary(task, base, final) | engine_record(task)
             for task, base, final in zip(prepared.tasks, baselines, finals)]
    final_report = combine_reports(progress.task_names, [final.record() for final in finals])
    metrics.log("final_eval", progress.counters.updates,
                {k: v for k, v in final_report.items() if k != "student_returns"} | {"snapshot": best.path})
    return run_scores(tasks, prepared.teacher_params, prepared.student_params, final_report) | run_engine_record(prepared)
