"""Lookahead labels: one step of policy improvement over the teacher, computed by rollouts.

A distilled student can at best tie its teacher: imitation carries no signal beyond it. Where
the simulator's state can be copied, the actor can measure, for every action a at a visited
state s, the return Q_T(s, a) of taking a and then following the teacher greedily to the end of
the episode (or for ``horizon_steps``). Acting greedily on Q_T is the classic rollout policy
(Tesauro & Galperin 1996; Bertsekas, Tsitsiklis & Wu 1997): by the policy improvement theorem
it scores at least the teacher's return, exactly so in deterministic environments. On
Acrobot-v1 the shipped teacher scored -75.5 over 20 episodes and its rollout policy -63.5.

The label stored for s is the KL-regularised improvement of the teacher's policy,

    pi'(a | s)  proportional to  pi_T(a | s) * exp(Q_T(s, a) / eta),

the maximiser of E_pi'[Q_T] - eta * KL(pi' || pi_T) (as in MPO, Abdolmaleki et al. 2018), so
the student is distilled from it with the ordinary KL loss on logits. ``eta`` is in reward
units: where actions' rollout returns differ by much more than eta, the better action wins;
where they tie, the teacher's own preference decides. pi_T is softmax(teacher / tau) with the
learner's teacher temperature tau, so a Q-value teacher enters as its near-greedy policy.

Rollouts are env steps: the actors count them (``rollout_steps``) beside the steps they act.
Which envs can be copied, and so labelled this way, is checked before a run (envs/copying.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from kd_system.policies.files import FrozenPolicy


@dataclass(frozen=True)
class LookaheadSettings:
    eta: float  # reward units: how large a rollout-return difference overrides the teacher's preference
    teacher_temperature: float  # tau of pi_T = softmax(teacher / tau)
    horizon_steps: int | None = None  # None: roll out to the episode's end (its time limit included)


def improved_logits(teacher_out: np.ndarray, rollout_returns: np.ndarray, eta: float,
                    teacher_temperature: float) -> np.ndarray:
    """log pi_T(a|s) + (Q_T(s,a) - max_a Q_T(s,a)) / eta per state: logits of pi', float32.

    Shifting Q by its maximum changes no probability and keeps the logits finite for any return scale."""
    teacher_log_probs = torch.log_softmax(torch.as_tensor(teacher_out, dtype=torch.float64) / teacher_temperature, -1)
    returns = np.asarray(rollout_returns, dtype=np.float64)
    advantage = (returns - returns.max(axis=1, keepdims=True)) / eta
    return (teacher_log_probs.numpy() + advantage).astype(np.float32)


class RolloutLabeller:
    """Labels the current states of a list of envs with pi' (see the module docstring).

    All rollouts of one call (envs x actions of them) run in lockstep, with one batched teacher
    forward per step, the way the actors' own stepping is batched."""

    def __init__(self, teacher: FrozenPolicy, settings: LookaheadSettings):
        self.teacher = teacher
        self.settings = settings
        self.num_actions = teacher.spec.num_actions
        self.rollout_steps = 0

    def rollout_returns(self, envs: list) -> np.ndarray:
        """(len(envs), num_actions): the return of each first action, then the greedy teacher."""
        sims = [copy.deepcopy(env) for env in envs for _ in range(self.num_actions)]
        returns = np.zeros(len(sims))
        obs: list[np.ndarray | None] = [None] * len(sims)
        alive = np.ones(len(sims), dtype=bool)
        for index, sim in enumerate(sims):
            obs[index], reward, terminated, truncated, _ = sim.step(index % self.num_actions)
            returns[index] += float(reward)
            alive[index] = not (terminated or truncated)
        steps, horizon = 1, self.settings.horizon_steps
        while alive.any() and (horizon is None or steps < horizon):
            live = np.flatnonzero(alive)
            actions = self.teacher.greedy_actions(np.stack([obs[i] for i in live]))
            for index, action in zip(live, actions):
                obs[index], reward, terminated, truncated, _ = sims[index].step(int(action))
                returns[index] += float(reward)
                alive[index] = not (terminated or truncated)
            self.rollout_steps += len(live)
            steps += 1
        self.rollout_steps += len(sims)
        for sim in sims:
            sim.close()
        return returns.reshape(len(envs), self.num_actions)

    def labels(self, envs: list, teacher_out: np.ndarray) -> np.ndarray:
        s = self.settings
        return improved_logits(teacher_out, self.rollout_returns(envs), s.eta, s.teacher_temperature)
