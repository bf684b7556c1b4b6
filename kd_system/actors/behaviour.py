"""Who acts while collecting. Every state is labelled by the teacher whatever acted.

* ``teacher``: epsilon-greedy on the teacher (Rusu et al. 2015) — the data covers the states
  the teacher visits, not the ones the student will drift into.
* ``student``: epsilon-greedy on the newest student weights the learner published (Czarnecki et
  al. 2019, "Distilling Policy Distillation": student-driven collection fixes that mismatch).
* ``mixed``: per state the teacher acts with probability beta and the student otherwise; beta
  decays linearly with the learner's weight version, DAgger-style (Ross et al. 2011).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from kd_system.actors.config import ACTING_MODES
from kd_system.policies.files import FrozenPolicy, PolicySpec, module_from_bytes
from kd_system.policies.networks import build_network
from kd_system.replay.channels import WeightsChannel


class ActingPolicy(Protocol):
    name: str

    def version(self) -> int:
        """The weight version that acted (-1 for the frozen teacher)."""

    def describe(self) -> dict:
        """What goes in each chunk's metadata about who acted."""

    def select(self, obs: np.ndarray, teacher_out: np.ndarray) -> np.ndarray:
        """Actions for a batch of observations, given the teacher's outputs on them."""

    def refresh(self) -> None:
        """Pick up newer weights if the policy has any (called between chunks)."""


def _explore(actions: np.ndarray, epsilon: float, num_actions: int, rng: np.random.Generator) -> np.ndarray:
    explore = rng.random(len(actions)) < epsilon
    if explore.any():
        actions[explore] = rng.integers(0, num_actions, size=int(explore.sum()))
    return actions


class EpsilonGreedyTeacher:
    name = "teacher"

    def __init__(self, epsilon: float, num_actions: int, seed: int):
        self.epsilon = epsilon
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def version(self) -> int:
        return -1

    def describe(self) -> dict:
        return {"behaviour": self.name, "policy_version": -1, "teacher_share": 1.0}

    def select(self, obs: np.ndarray, teacher_out: np.ndarray) -> np.ndarray:
        return _explore(teacher_out.argmax(axis=1), self.epsilon, self.num_actions, self.rng)

    def refresh(self) -> None:
        pass


class PublishedStudent:
    """The student as the learner last published it; version 0 is an untrained initialisation."""

    def __init__(self, spec: PolicySpec, weights: WeightsChannel, seed: int):
        import torch
        torch.manual_seed(seed)
        self.spec = spec
        self.weights = weights
        self.version = 0
        self.policy = FrozenPolicy(spec, build_network(spec.network, spec.obs_shape, spec.num_actions))
        self.refresh()

    def refresh(self) -> bool:
        newer = self.weights.fetch(other_than=self.version)  # a restored learner's may be older: still take it
        if newer is None:
            return False
        version, blob = newer
        module = module_from_bytes(self.spec, blob, f"published student weights v{version}")
        self.policy = FrozenPolicy(self.spec, module)
        self.version = version
        return True

    def greedy_actions(self, obs: np.ndarray) -> np.ndarray:
        return self.policy.greedy_actions(obs)


@dataclass(frozen=True)
class TeacherShareSchedule:
    """beta: linear from ``start`` to ``end`` over the first ``decay_updates`` learner updates."""
    start: float = 1.0
    end: float = 0.0
    decay_updates: int = 2_000

    def at(self, updates: int) -> float:
        progress = min(1.0, max(0, updates) / self.decay_updates) if self.decay_updates > 0 else 1.0
        return self.start + (self.end - self.start) * progress


class EpsilonGreedyStudent:
    name = "student"

    def __init__(self, student: PublishedStudent, epsilon: float, num_actions: int, seed: int):
        self.student = student
        self.epsilon = epsilon
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def version(self) -> int:
        return self.student.version

    def describe(self) -> dict:
        return {"behaviour": self.name, "policy_version": self.student.version, "teacher_share": 0.0}

    def select(self, obs: np.ndarray, teacher_out: np.ndarray) -> np.ndarray:
        return _explore(self.student.greedy_actions(obs), self.epsilon, self.num_actions, self.rng)

    def refresh(self) -> None:
        self.student.refresh()


class MixedTeacherStudent:
    name = "mixed"

    def __init__(self, student: PublishedStudent, schedule: TeacherShareSchedule, epsilon: float,
                 num_actions: int, seed: int):
        self.student = student
        self.schedule = schedule
        self.epsilon = epsilon
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def version(self) -> int:
        return self.student.version

    def teacher_share(self) -> float:
        return self.schedule.at(self.student.version)

    def describe(self) -> dict:
        return {"behaviour": self.name, "policy_version": self.student.version, "teacher_share": self.teacher_share()}

    def select(self, obs: np.ndarray, teacher_out: np.ndarray) -> np.ndarray:
        actions = teacher_out.argmax(axis=1)
        by_student = self.rng.random(len(actions)) >= self.teacher_share()
        if by_student.any():
            actions[by_student] = self.student.greedy_actions(obs[by_student])
        return _explore(actions, self.epsilon, self.num_actions, self.rng)

    def refresh(self) -> None:
        self.student.refresh()


def make_acting_policy(mode: str, epsilon: float, num_actions: int, seed: int, weights: WeightsChannel | None = None,
                       student_spec: PolicySpec | None = None,
                       schedule: TeacherShareSchedule | None = None) -> ActingPolicy:
    if mode == "teacher":
        return EpsilonGreedyTeacher(epsilon, num_actions, seed)
    if weights is None or student_spec is None:
        raise ValueError(f"acting mode {mode!r} needs the student's weights channel and spec")
    student = PublishedStudent(student_spec, weights, seed)
    if mode == "student":
        return EpsilonGreedyStudent(student, epsilon, num_actions, seed)
    if mode == "mixed":
        return MixedTeacherStudent(student, schedule or TeacherShareSchedule(), epsilon, num_actions, seed)
    raise ValueError(f"unknown acting mode {mode!r}; use one of {', '.join(ACTING_MODES)}")
