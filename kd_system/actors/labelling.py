"""The labelling loop every actor runs: step a vector of envs, label each state with one batched
teacher forward, pick actions. Ray- and Redis-free, so the collector and the benchmark's
in-process ideal run exactly the same loop.

The envs come in groups (envs.vector) that step in two halves, ``send`` then ``recv``; with two
groups the loop labels the next group while the one it just sent is stepping, with one it waits.
How many groups there are and whether a send returns at once (Atari's threaded emulator) or steps
in place (classic control) is the envs' business.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kd_system.actors.behaviour import ActingPolicy
from kd_system.actors.lookahead import RolloutLabeller
from kd_system.envs.vector import EnvGroup, actor_env_groups
from kd_system.policies.files import FrozenPolicy


@dataclass
class _Group:
    envs: EnvGroup
    obs: np.ndarray
    returns: np.ndarray
    in_flight: bool = False


class LabellingLoop:
    def __init__(self, env_id: str, num_envs: int, seed: int, teacher: FrozenPolicy, acting: ActingPolicy,
                 labeller: RolloutLabeller | None = None, cpus: float | None = None, groups: int | None = None):
        """``labeller``: label with the rollout-improved teacher instead (actors/lookahead.py; classic envs).
        ``cpus``: the actor's CPU reservation, which bounds its emulator threads; ``groups``: Atari env
        groups, 1 or 2, None for the default (envs.vector)."""
        self.teacher = teacher
        self.acting = acting
        self.labeller = labeller
        self.groups = [_Group(envs, envs.reset_obs, np.zeros(envs.num_envs))
                       for envs in actor_env_groups(env_id, num_envs, seed, cpus, groups)]
        self._next = 0
        self.env_steps = 0
        self.finished_returns: list[float] = []
        self.time_env_s = 0.0  # blocked on the envs (all of env time when nothing overlaps)
        self.time_teacher_s = 0.0  # teacher forward and action choice

    @property
    def rollout_steps(self) -> int:
        return self.labeller.rollout_steps if self.labeller is not None else 0

    def step(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label the next ready group's states and send its actions; returns (obs, labels, actions):
        the labels are the teacher's outputs, or the improved policy's logits with a labeller."""
        index = self._next
        group = self.groups[index]
        start = time.perf_counter()
        obs = group.obs
        teacher_out = self.teacher.outputs(obs)
        if self.labeller is not None:  # the sub-envs are at exactly these states until the step below
            teacher_out = self.labeller.labels(group.envs.single_envs, teacher_out)
        actions = self.acting.select(obs, teacher_out).astype(np.int32)
        labelled = time.perf_counter()
        self.time_teacher_s += labelled - start
        group.envs.send(actions)
        group.in_flight = True
        self._next = (index + 1) % len(self.groups)
        self._receive(self.groups[self._next])  # with one group: the one just sent
        self.time_env_s += time.perf_counter() - labelled
        return obs, teacher_out, actions

    def _receive(self, group: _Group) -> None:
        if not group.in_flight:
            return  # the first round: this group still holds its reset observations
        next_obs, rewards, terminated, truncated, _ = group.envs.recv()
        group.in_flight = False
        group.obs = next_obs  # ours to keep: the stored chunk holds these states past the group's next send
        self.env_steps += len(rewards)
        group.returns += rewards
        for env_index in np.flatnonzero(terminated | truncated):
            self.finished_returns.append(float(group.returns[env_index]))
            group.returns[env_index] = 0.0

    def take_finished_returns(self) -> list[float]:
        returns, self.finished_returns = self.finished_returns, []
        return returns

    def close(self) -> None:
        for group in self.groups:
            group.envs.close()  # waits for a step still in flight
