"""Who acts while collecting. Every chunk is labelled by the teacher whatever acted.

An acting policy maps (observations, teacher outputs) to actions. Teacher-driven collection
(Rusu et al. 2015) is epsilon-greedy on the teacher; student-driven and mixed collection
(Czarnecki et al. 2019) plug in here as further classes.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class ActingPolicy(Protocol):
    name: str

    def version(self) -> int:
        """The weight version that acted (-1 for the frozen teacher)."""

    def select(self, obs: np.ndarray, teacher_out: np.ndarray) -> np.ndarray:
        """Actions for a batch of observations, given the teacher's outputs on them."""


class EpsilonGreedyTeacher:
    name = "teacher"

    def __init__(self, epsilon: float, num_actions: int, seed: int):
        self.epsilon = epsilon
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)

    def version(self) -> int:
        return -1

    def select(self, obs: np.ndarray, teacher_out: np.ndarray) -> np.ndarray:
        actions = teacher_out.argmax(axis=1)
        explore = self.rng.random(len(actions)) < self.epsilon
        if explore.any():
            actions[explore] = self.rng.integers(0, self.num_actions, size=int(explore.sum()))
        return actions
