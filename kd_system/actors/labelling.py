"""The labelling loop every actor runs: step a vector of envs, label each state with one batched
teacher forward, pick actions. Ray- and Redis-free, so the collector and the benchmark's
in-process ideal run exactly the same loop.

For Atari the envs are split into two groups that alternate: while ALE's C++ threads emulate
one group's frames (``send`` returns at once), this thread runs the teacher on the other group's
states. On a 2-core machine emulation and inference then share the cores instead of taking
turns. Cheap classic-control envs stay one synchronous group: there is nothing to overlap.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from kd_system.actors.behaviour import ActingPolicy
from kd_system.envs.atari import RAW_SCORE, is_atari_id, make_atari_vector_env
from kd_system.envs.make import make_vector_env
from kd_system.actors.lookahead import RolloutLabeller
from kd_system.policies.files import FrozenPolicy


@dataclass
class _Group:
    envs: object
    obs: np.ndarray
    returns: np.ndarray
    in_flight: bool = False
    result: tuple | None = None  # a synchronous group's step result, held until "received"


def atari_groups(num_envs: int) -> int:
    return 2 if num_envs >= 2 else 1


def _make_groups(env_id: str, num_envs: int, seed: int) -> list[_Group]:
    if not is_atari_id(env_id):
        envs = make_vector_env(env_id, num_envs, seed=seed)
        obs, _ = envs.reset(seed=seed)
        return [_Group(envs, obs, np.zeros(num_envs))]
    count = atari_groups(num_envs)
    sizes = [num_envs // count + (1 if g < num_envs % count else 0) for g in range(count)]
    # While one group emulates, this thread runs the teacher on the other: leave the teacher a share
    # of the cores instead of giving every group an emulator thread per core.
    threads = max(1, len(os.sched_getaffinity(0)) // count)
    groups, first_seed = [], seed
    for size in sizes:
        envs = make_atari_vector_env(env_id, size, first_seed, RAW_SCORE, num_threads=min(size, threads))
        obs, _ = envs.reset(seed=first_seed)  # sub-env i of the whole vector gets seed + i, as unsplit
        groups.append(_Group(envs, obs, np.zeros(size)))
        first_seed += size
    return groups


class LabellingLoop:
    def __init__(self, env_id: str, num_envs: int, seed: int, teacher: FrozenPolicy, acting: ActingPolicy,
                 labeller: RolloutLabeller | None = None):
        """``labeller``: label with the rollout-improved teacher instead (kd_system/lookahead.py; classic envs)."""
        self.teacher = teacher
        self.acting = acting
        self.labeller = labeller
        self.atari = is_atari_id(env_id)
        self.groups = _make_groups(env_id, num_envs, seed)
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
            teacher_out = self.labeller.labels(group.envs.envs, teacher_out)
        actions = self.acting.select(obs, teacher_out).astype(np.int32)
        labelled = time.perf_counter()
        self.time_teacher_s += labelled - start
        if self.atari:
            group.envs.send(actions)
        else:
            group.result = group.envs.step(actions)
        group.in_flight = True
        self._next = (index + 1) % len(self.groups)
        self._receive(self.groups[self._next])  # with one group: the one just sent
        self.time_env_s += time.perf_counter() - labelled
        return obs, teacher_out, actions

    def _receive(self, group: _Group) -> None:
        if not group.in_flight:
            return  # the first round: this group still holds its reset observations
        if self.atari:
            result = group.envs.recv()
        else:
            result, group.result = group.result, None
        next_obs, rewards, terminated, truncated, _ = result
        group.in_flight = False
        # A copy we own: the stored chunk keeps these states after the group's next send.
        group.obs = np.array(next_obs) if self.atari else next_obs
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
            if group.in_flight and self.atari:
                group.envs.recv()  # let the emulator threads finish before they are torn down
            group.envs.close()
