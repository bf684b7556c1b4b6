"""Scores the evaluator reports, as pure functions of per-episode returns and policy outputs.

The teacher-normalized score is (S - R) / (T - R) over mean returns of student, teacher and a
random policy: 0 is random, 1 is the teacher.

Its 95% confidence interval is a paired t-interval. Student and teacher play the same episode
seeds, so episode i gives the paired difference d_i = (S_i - T_i) / (T - R), and the score is
exactly 1 + mean(d). The interval is 1 + mean(d) ± t(0.975, n - 1) · sd(d) / √n, with the
sample standard deviation (n - 1). Pairing cancels what the two policies share through the seed
(an easy or a hard start), which an unpaired interval would count as uncertainty. The scale
T - R is held fixed: its own sampling error is not in the interval, which is second order when
the teacher beats random by a wide margin (CartPole: about 500 against 20).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats


def normalized_score(student: float, teacher: float, random: float) -> float:
    gap = teacher - random
    return float((student - random) / gap) if abs(gap) > 1e-9 else float("nan")


def paired_score_error(student_returns: np.ndarray, teacher_returns: np.ndarray,
                       random_returns: np.ndarray) -> tuple[float, int]:
    """(standard error, degrees of freedom) of the paired normalized score; episode i of student
    and teacher share a seed. NaN error when undefined: one episode, or a teacher no better than random."""
    student, teacher = np.asarray(student_returns, float), np.asarray(teacher_returns, float)
    if student.shape != teacher.shape:
        raise ValueError(f"paired returns need equal episode counts, got {student.shape} and {teacher.shape}")
    gap = teacher.mean() - float(np.mean(random_returns))
    n = len(student)
    if n < 2 or abs(gap) <= 1e-9:
        return float("nan"), max(n - 1, 0)
    differences = (student - teacher) / gap
    return float(differences.std(ddof=1) / math.sqrt(n)), n - 1


def normalized_score_ci95(student_returns: np.ndarray, teacher_returns: np.ndarray,
                          random_returns: np.ndarray) -> tuple[float, float]:
    """Paired 95% t-interval of the normalized score; episode i of student and teacher share a seed.

    NaN bounds when it is undefined: one episode, or a teacher no better than random."""
    error, dof = paired_score_error(student_returns, teacher_returns, random_returns)
    centre = normalized_score(float(np.mean(student_returns)), float(np.mean(teacher_returns)),
                              float(np.mean(random_returns)))
    return t_interval95(centre, error, dof)


def t_interval95(centre: float, error: float, dof: float) -> tuple[float, float]:
    """centre ± t(0.975, dof) · error; NaN bounds when the error is undefined."""
    if not math.isfinite(error) or dof < 1:
        return float("nan"), float("nan")
    half_width = stats.t.ppf(0.975, dof) * error if error > 0 else 0.0
    return float(centre - half_width), float(centre + half_width)


def mean_score_ci95(scores: list[float], errors: list[float], dofs: list[int]) -> tuple[float, float]:
    """95% interval of the mean of independent task scores (a multi-task student's mean).

    The mean's standard error is sqrt(sum(se_k^2)) / K; its degrees of freedom follow
    Welch-Satterthwaite, sum(se_k^2)^2 / sum(se_k^4 / dof_k), as the tasks' spreads differ. A task
    whose paired differences are all zero (CartPole at 500 every episode) adds no width. NaN bounds
    when any task's error is undefined."""
    if not scores or not all(math.isfinite(e) for e in errors) or any(d < 1 for d in dofs):
        return float("nan"), float("nan")
    variances = [e * e for e in errors]
    total = sum(variances)
    welch_dof = total ** 2 / sum(v * v / d for v, d in zip(variances, dofs)) if total > 0 else math.inf
    return t_interval95(sum(scores) / len(scores), math.sqrt(total) / len(scores), welch_dof)


def greedy_agreement(student_out: np.ndarray, teacher_out: np.ndarray) -> float:
    """Share of states where the student's greedy action is the teacher's."""
    return float(np.mean(student_out.argmax(axis=1) == teacher_out.argmax(axis=1)))


def disagreement_margin(student_out: np.ndarray, teacher_out: np.ndarray) -> float:
    """How much the teacher cares about the states where the student's greedy action differs.

    At each such state, the teacher's preference for its own action over the student's
    (teacher_out[a_teacher] - teacher_out[a_student], in the teacher's own units: Q-values or
    logits), as a median over those states, divided by the median over all states of the
    teacher's preference for its best action over its second best. Near 0: the student only
    differs where the teacher is nearly indifferent, so agreement below 100% costs little return
    (on Acrobot-v1 at 0.003-0.011, about 0.1%: experiments/results/multitask/FINDINGS.md). NaN when
    the student agrees everywhere or the teacher is indifferent everywhere."""
    teacher_out = np.asarray(teacher_out, float)
    teacher_best, student_best = teacher_out.argmax(axis=1), np.asarray(student_out).argmax(axis=1)
    differs = teacher_best != student_best
    ranked = np.sort(teacher_out, axis=1)
    typical = float(np.median(ranked[:, -1] - ranked[:, -2]))
    if not differs.any() or typical <= 0.0:
        return float("nan")
    rows = np.flatnonzero(differs)
    lost = teacher_out[rows, teacher_best[rows]] - teacher_out[rows, student_best[rows]]
    return float(np.median(lost) / typical)
