"""The evaluator component: scores student snapshots against the teacher without pausing
training. Teacher, random policy and student are evaluated greedily on the same episode seeds.

Held-out states are states the teacher visited in the evaluator's own episodes: never written
to the replay store, so agreement on them measures generalisation, not memorisation.
"""
from __future__ import annotations

import numpy as np
import torch

from .evaluation import run_episodes, random_act_fn
from .policy_files import FrozenPolicy, PolicyBundle


def normalized_score(student: float, teacher: float, random: float) -> float:
    gap = teacher - random
    return float((student - random) / gap) if abs(gap) > 1e-9 else float("nan")


class Evaluator:
    def __init__(self, env_id: str, teacher: PolicyBundle, heldout_states: int, torch_threads: int = 1):
        torch.set_num_threads(torch_threads)
        self.env_id = env_id
        self.teacher = FrozenPolicy.from_bundle(teacher)
        self.heldout_states = heldout_states
        self.heldout_obs: np.ndarray | None = None
        self.heldout_teacher_actions: np.ndarray | None = None

    def baselines(self, episodes: int, seed: int) -> dict:
        """Teacher and random-policy returns on seeds [seed, seed + episodes); records held-out states."""
        teacher = run_episodes(self.env_id, self.teacher.greedy_actions, episodes, seed,
                               record_obs_limit=self.heldout_states)
        random = run_episodes(self.env_id, random_act_fn(self.teacher.spec.num_actions, seed), episodes, seed)
        if teacher.visited_obs is not None:
            self.heldout_obs = teacher.visited_obs
            self.heldout_teacher_actions = self.teacher.greedy_actions(teacher.visited_obs)
        return {"teacher_return_mean": teacher.mean, "teacher_return_std": teacher.std,
                "random_return_mean": random.mean, "random_return_std": random.std,
                "episodes": episodes, "seed": seed, "heldout_states": 0 if self.heldout_obs is None else len(self.heldout_obs)}

    def evaluate(self, student_bundle: PolicyBundle, episodes: int, seed: int) -> dict:
        student = FrozenPolicy.from_bundle(student_bundle)
        result = run_episodes(self.env_id, student.greedy_actions, episodes, seed, record_obs_limit=self.heldout_states)
        report = {"student_return_mean": result.mean, "student_return_std": result.std,
                  "student_returns": result.returns.tolist(), "episodes": episodes, "seed": seed,
                  "env_steps": result.env_steps}
        if self.heldout_obs is not None:
            report["agreement_teacher_states"] = float(np.mean(
                student.greedy_actions(self.heldout_obs) == self.heldout_teacher_actions))
        if result.visited_obs is not None:
            report["agreement_student_states"] = float(np.mean(
                student.greedy_actions(result.visited_obs) == self.teacher.greedy_actions(result.visited_obs)))
        return report
