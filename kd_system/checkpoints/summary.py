"""Per-task evaluation reports and their combination for multi-task runs.

A single-task run reports exactly what its evaluator measured. A multi-task run reports the
mean teacher-normalized score over tasks (Rusu et al. 2015 compare multi-task students on the
geometric and arithmetic mean; we use the arithmetic mean) with its 95% CI and the worst task's
score, plus every task's own figures under ``<task>.<key>`` so they reach the metrics logs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kd_system.evaluation.scores import mean_score_ci95
from kd_system.policies.files import PolicySpec
from kd_system.types import Baselines, EvalReport

if TYPE_CHECKING:
    from kd_system.checkpoints.progress import RunProgress

_MEANED = ("normalized_score", "agreement_teacher_states", "agreement_student_states",
           "kl_teacher_states", "kl_student_states")


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


class TaskFacts(Protocol):
    """What the summary says about a task's set-up (launch.preparation.PreparedTask has it): a
    protocol, so checkpoints/ need not import the launch stage."""
    @property
    def env_id(self) -> str: ...
    @property
    def teacher_path(self) -> str: ...
    @property
    def teacher_params(self) -> int: ...
    @property
    def student_spec(self) -> PolicySpec: ...


def combine_reports(names: list[str], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """``reports``: each task's evaluation as the metrics log keeps it (``EvalReport.record()``)."""
    if len(reports) == 1:
        return dict(reports[0])
    combined: dict[str, Any] = {key: _mean([r.get(key) for r in reports]) for key in _MEANED}
    combined["normalized_score_min"] = min(r["normalized_score"] for r in reports)
    low, high = mean_score_ci95([r["normalized_score"] for r in reports],
                                [_or_nan(r.get("normalized_score_se")) for r in reports],
                                [r.get("normalized_score_dof", 0) for r in reports])
    # the bounds as scalars too, like a single task's: the head's snapshot pick reads the upper one
    combined.update(normalized_score_ci95=[low, high], normalized_score_ci95_low=low, normalized_score_ci95_high=high)
    for name, report in zip(names, reports):
        for key, value in report.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                combined[f"{name}.{key}"] = value
    return combined


def task_summary(task: TaskFacts, baselines: Baselines, final: EvalReport) -> dict[str, Any]:
    """What summary.json says about one task's student after the final evaluation."""
    return {
        "env_id": task.env_id, "teacher_checkpoint": task.teacher_path,
        "labels": task.student_spec.model_card.get("labels", "teacher"),
        "teacher_params": task.teacher_params, "student_params": task.student_spec.num_params,
        "student_param_fraction": task.student_spec.num_params / task.teacher_params,
        "teacher_return_mean": baselines.teacher_return_mean, "teacher_return_std": baselines.teacher_return_std,
        "student_return_mean": final.student_return_mean, "student_return_std": final.student_return_std,
        "random_return_mean": baselines.random_return_mean, "normalized_score": final.normalized_score,
        "normalized_score_ci95": final.normalized_score_ci95,
        "agreement_teacher_states": final.agreement_teacher_states,
        "agreement_student_states": final.agreement_student_states,
        "kl_teacher_states": final.kl_teacher_states, "kl_student_states": final.kl_student_states,
        "disagreement_margin_teacher_states": final.disagreement_margin_teacher_states,
        "disagreement_margin_student_states": final.disagreement_margin_student_states,
    }


def run_scores(tasks: list[dict[str, Any]], teacher_params: int, student_params: int,
               combined: dict[str, Any]) -> dict[str, Any]:
    """The top-level figures of summary.json: a single task's own, or the multi-task aggregate
    (its CI from ``combined``, the final reports joined by ``combine_reports``)."""
    if len(tasks) == 1:
        return dict(tasks[0])
    scores = [t["normalized_score"] for t in tasks]
    return {
        "env_id": "+".join(t["env_id"] for t in tasks), "teacher_params": teacher_params,
        "student_params": student_params, "student_param_fraction": student_params / teacher_params,
        "normalized_score": _mean(scores), "normalized_score_ci95": combined["normalized_score_ci95"],
        "normalized_score_min": min(scores),
        "agreement_teacher_states": _mean([t["agreement_teacher_states"] for t in tasks]),
        "agreement_student_states": _mean([t["agreement_student_states"] for t in tasks]),
        "tasks": tasks,
    }


@dataclass(frozen=True)
class SessionFacts:
    """How this session ran and ended, as the head knows it."""
    eval_episodes: int  # of the final evaluation
    eval_seed: int
    stop_reason: str | None
    loss: str
    acting: str
    learner_device: str
    store_bytes_per_state: float | None  # None: the store was gone at the end
    resumed: bool
    placement: dict[str, Any] | None  # node ids of the components (launch.topology.placement)
    corrupt_chunks: int = 0  # replay chunks the learner skipped because they failed to decode
    last_snapshot_scored: bool | None = None  # None: no last snapshot (the learner was dead at the end)
    failure: str | None = None  # why the run gave up (launch/supervision.py), else None
    component_deaths: int = 0  # components the head replaced or gave up on


def run_summary(scores: dict[str, Any], progress: "RunProgress", session: SessionFacts) -> dict[str, Any]:
    """summary.json: the final scores (``run_scores``), the run's counters and the snapshot scored."""
    counters, best = progress.counters, progress.selection.best
    return {
        **scores, "eval_episodes": session.eval_episodes, "eval_seed": session.eval_seed,
        **counters.persistent(), "learner_updates": counters.updates,
        "wall_s": progress.wall_s(), "session_wall_s": progress.elapsed(),
        "best_checkpoint": best.path, "best_checkpoint_selection_score": best.score,
        "stop_reason": session.stop_reason, "loss": session.loss, "acting": session.acting,
        "learner_device": session.learner_device, "store_bytes_per_state": session.store_bytes_per_state,
        "evaluations": progress.selection.evaluations, "resumed": session.resumed, "placement": session.placement,
        "corrupt_chunks_skipped": session.corrupt_chunks, "last_snapshot_scored": session.last_snapshot_scored,
        "failure": session.failure, "component_deaths": session.component_deaths,
    }


def unscored_summary(progress: "RunProgress", stop_reason: str | None, failure: str | None) -> dict[str, Any]:
    """summary.json of a run that ended before its first snapshot: its counters and why, no scores."""
    counters = progress.counters
    return {"normalized_score": None, **counters.persistent(), "learner_updates": counters.updates,
            "wall_s": progress.wall_s(), "session_wall_s": progress.elapsed(), "best_checkpoint": None,
            "stop_reason": stop_reason, "failure": failure, "evaluations": progress.selection.evaluations}
