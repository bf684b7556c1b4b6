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


def normalized_score_ci95(student_returns: np.ndarray, teacher_returns: np.ndarray,
                          random_returns: np.ndarray) -> tuple[float, float]:
    """Paired 95% t-interval of the normalized score; episode i of student and teacher share a seed.

    NaN bounds when it is undefined: one episode, or a teacher no better than random."""
    student, teacher = np.asarray(student_returns, float), np.asarray(teacher_returns, float)
    if student.shape != teacher.shape:
        raise ValueError(f"paired returns need equal episode counts, got {student.shape} and {teacher.shape}")
    gap = teacher.mean() - float(np.mean(random_returns))
    n = len(student)
    if n < 2 or abs(gap) <= 1e-9:
        return float("nan"), float("nan")
    differences = (student - teacher) / gap
    centre = 1.0 + differences.mean()
    half_width = stats.t.ppf(0.975, n - 1) * differences.std(ddof=1) / math.sqrt(n)
    return float(centre - half_width), float(centre + half_width)


def greedy_agreement(student_out: np.ndarray, teacher_out: np.ndarray) -> float:
    """Share of states where the student's greedy action is the teacher's."""
    return float(np.mean(student_out.argmax(axis=1) == teacher_out.argmax(axis=1)))
