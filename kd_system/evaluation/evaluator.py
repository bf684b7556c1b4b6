"""The evaluator component: scores student snapshots against the teacher without pausing
training. Teacher, random policy and student are evaluated greedily on the same episode seeds,
so the normalized score's confidence interval can pair episodes (see kd_system/scores.py).

Held-out states are states the teacher visited in the evaluator's own episodes: never written
to the replay store, so agreement and KL on them measure generalisation, not memorisation.
States the student visits in its own episodes show how it does where its mistakes lead it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kd_system.evaluation.episodes import random_act_fn, run_episodes
from kd_system.learner.losses import kl_divergence, resolve_temperature
from kd_system.policies.files import FrozenPolicy, PolicyBundle, PolicySpec
from kd_system.evaluation.scores import disagreement_margin, greedy_agreement, normalized_score, paired_score_error, t_interval95
from kd_system.types import Baselines, EvalReport

__all__ = ["Evaluator", "ReferenceReturns", "normalized_score"]


@dataclass(frozen=True)
class ReferenceReturns:
    """Per-episode returns of teacher and random policy on seeds [seed, seed + episodes)."""
    episodes: int
    seed: int
    teacher: np.ndarray
    random: np.ndarray


class Evaluator:
    def __init__(self, env_id: str, teacher: PolicyBundle, heldout_states: int, torch_threads: int = 1,
                 temperature: float | None = None, student_temperature: float | None = None):
        """``temperature`` / ``student_temperature``: the learner's, so the reported KL is the divergence
        it minimises (defaults: losses.DEFAULT_TEMPERATURE for the teacher's kind, student unsoftened)."""
        torch.set_num_threads(torch_threads)
        self.env_id = env_id
        self.teacher = FrozenPolicy.from_bundle(teacher)
        self.heldout_states = heldout_states
        self.temperature = resolve_temperature(temperature, self.teacher.spec.output_kind)
        self.student_temperature = student_temperature
        self.reference: ReferenceReturns | None = None
        self.heldout_obs: np.ndarray | None = None
        self.heldout_teacher_out: np.ndarray | None = None

    def _run_reference(self, episodes: int, seed: int, heldout_limit: int) -> ReferenceReturns:
        teacher = run_episodes(self.env_id, self.teacher.greedy_actions, episodes, seed, record_obs_limit=heldout_limit)
        random = run_episodes(self.env_id, random_act_fn(self.teacher.spec.num_actions, seed), episodes, seed)
        if teacher.visited_obs is not None:
            self.heldout_obs = teacher.visited_obs
            self.heldout_teacher_out = self.teacher.outputs(teacher.visited_obs)
        self.reference = ReferenceReturns(episodes, seed, teacher.returns, random.returns)
        return self.reference

    def baselines(self, episodes: int, seed: int) -> Baselines:
        """Teacher and random-policy returns on seeds [seed, seed + episodes); records held-out states."""
        ref = self._run_reference(episodes, seed, self.heldout_states)
        return Baselines(teacher_return_mean=float(ref.teacher.mean()), teacher_return_std=float(ref.teacher.std()),
                         random_return_mean=float(ref.random.mean()), random_return_std=float(ref.random.std()),
                         episodes=episodes, seed=seed, kl_temperature=self.temperature,
                         heldout_states=0 if self.heldout_obs is None else len(self.heldout_obs))

    def _student_temperature(self, spec: PolicySpec) -> float:
        # A student that regresses Q-values ("q" output kind) is read like its teacher; one trained
        # with a softened KL is read at the temperature it was softened by; else its outputs are logits.
        if self.student_temperature is not None:
            return self.student_temperature
        return self.temperature if spec.output_kind == "q" else 1.0

    def _compare(self, student: FrozenPolicy, obs: np.ndarray, teacher_out: np.ndarray) -> tuple[float, float, float]:
        """(greedy-action agreement, mean KL(teacher || student), disagreement margin) on the given states."""
        student_out = student.outputs(obs)
        kl = kl_divergence(torch.from_numpy(student_out), torch.from_numpy(teacher_out), self.temperature,
                           self._student_temperature(student.spec))
        return greedy_agreement(student_out, teacher_out), float(kl), disagreement_margin(student_out, teacher_out)

    def evaluate(self, student_bundle: PolicyBundle, episodes: int, seed: int) -> EvalReport:
        ref = self.reference
        if ref is None or (ref.episodes, ref.seed) != (episodes, seed):  # pair with the same seeds, always
            ref = self._run_reference(episodes, seed, heldout_limit=0)
        student = FrozenPolicy.from_bundle(student_bundle)
        result = run_episodes(self.env_id, student.greedy_actions, episodes, seed, record_obs_limit=self.heldout_states)
        score = normalized_score(result.mean, float(ref.teacher.mean()), float(ref.random.mean()))
        error, dof = paired_score_error(result.returns, ref.teacher, ref.random)
        low, high = t_interval95(score, error, dof)
        on_teacher_states = on_student_states = (None, None, None)  # nothing to compare on
        if self.heldout_obs is not None:
            on_teacher_states = self._compare(student, self.heldout_obs, self.heldout_teacher_out)
        if result.visited_obs is not None:
            on_student_states = self._compare(student, result.visited_obs, self.teacher.outputs(result.visited_obs))
        return EvalReport(
            student_return_mean=result.mean, student_return_std=result.std, student_returns=result.returns.tolist(),
            episodes=episodes, seed=seed, env_steps=result.env_steps, teacher_return_mean=float(ref.teacher.mean()),
            random_return_mean=float(ref.random.mean()), normalized_score=score, normalized_score_ci95=[low, high],
            normalized_score_ci95_low=low, normalized_score_ci95_high=high, normalized_score_se=error,
            normalized_score_dof=dof,
            agreement_teacher_states=on_teacher_states[0], kl_teacher_states=on_teacher_states[1],
            disagreement_margin_teacher_states=on_teacher_states[2],
            agreement_student_states=on_student_states[0], kl_student_states=on_student_states[1],
            disagreement_margin_student_states=on_student_states[2])
