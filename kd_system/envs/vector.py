"""An actor's envs as groups that step in two halves: ``send(actions)`` starts a step, ``recv()``
returns its result. The labelling loop labels one group while another is in flight, and needs
to know nothing about the kind of env behind it.

Atari: the envs are split into two groups of ale-py's threaded vector env. While ALE's C++
threads emulate one group's frames (``send`` returns at once), the actor's thread runs the
teacher on the other group's states, so emulation and inference share the cores instead of taking
turns. ``actors.env_groups: 1`` keeps one group, which takes turns. Classic-control envs are one
synchronous Gymnasium vector whose ``send`` steps at once: they are too cheap for an overlap to
gain anything.

Seeding is that of one unsplit vector: sub-env i of the whole actor gets ``seed + i``.
"""
from __future__ import annotations

import math
import os

import gymnasium as gym
import numpy as np

from kd_system.envs import atari
from kd_system.envs.make import make_vector_env

StepResult = tuple  # (obs, rewards, terminated, truncated, info), as a Gymnasium vector step returns


class SyncGroup:
    """Gymnasium's synchronous vector env: ``send`` steps it, ``recv`` hands over that step's result."""

    def __init__(self, env_id: str, num_envs: int, seed: int):
        self.vector = make_vector_env(env_id, num_envs, seed=seed)
        self.num_envs = num_envs
        self.reset_obs = self.vector.reset(seed=seed)[0]
        self._result: StepResult | None = None

    @property
    def single_envs(self) -> list[gym.Env]:
        """The sub-envs themselves, which lookahead rollouts copy (envs.copying checks they can be)."""
        return self.vector.envs

    def send(self, actions: np.ndarray) -> None:
        self._result = self.vector.step(actions)

    def recv(self) -> StepResult:
        result, self._result = self._result, None
        return result

    def close(self) -> None:
        self.vector.close()


class AleGroup:
    """Part of an actor's Atari envs in one ale-py vector: ``send`` returns while ALE's threads emulate."""

    def __init__(self, env_id: str, num_envs: int, seed: int, num_threads: int):
        self.vector = atari.make_atari_vector_env(env_id, num_envs, seed, atari.RAW_SCORE, num_threads=num_threads)
        self.num_envs = num_envs
        self.reset_obs = self.vector.reset(seed=seed)[0]
        self._in_flight = False

    @property
    def single_envs(self) -> list[gym.Env]:
        raise TypeError("ale-py's vector env keeps its games in C++: there are no sub-env objects to copy")

    def send(self, actions: np.ndarray) -> None:
        self.vector.send(actions)
        self._in_flight = True

    def recv(self) -> StepResult:
        obs, rewards, terminated, truncated, info = self.vector.recv()
        self._in_flight = False
        # A copy the caller owns: a stored chunk keeps these states after this group's next send.
        return np.array(obs), rewards, terminated, truncated, info

    def close(self) -> None:
        if self._in_flight:
            self.vector.recv()  # let the emulator threads finish before they are torn down
        self.vector.close()


EnvGroup = SyncGroup | AleGroup


# An Atari actor's envs when actors.envs_per_actor is auto. Two groups of 32 give the teacher
# batches of 32, where a Nature-CNN forward runs near its best (kd-system bench --only ceiling:
# batch 8 / 32 / 128 at 3,961 / 5,767 / 6,480 states/s on the 2-core machine). Measured with
# `kd-system bench --only system --num-envs N --collectors 2` on Pong there, 2026-12-06/07: 16 envs
# 1,307 labelled states/s, 32: 1,636, 64: 2,244, 128: 2,240 (README, Performance: the ratios to
# the hardware ceiling).
ATARI_ENVS_PER_ACTOR = 64
CLASSIC_ENVS_PER_ACTOR = 8  # one synchronous Gymnasium vector; cheap envs, no overlap to feed


def envs_per_actor(setting: int | str, env_id: str) -> int:
    """``actors.envs_per_actor`` for an actor of ``env_id``: the number given, or auto's per-kind default."""
    if setting != "auto":
        return int(setting)
    return ATARI_ENVS_PER_ACTOR if atari.is_atari_id(env_id) else CLASSIC_ENVS_PER_ACTOR


def atari_groups(num_envs: int) -> int:
    """Two groups, even for an actor of one CPU whose collectors fill every core: measured on the
    2-core machine (2026-12-07) with `kd-system bench --only system --engines onnxruntime-int8
    --collectors 2 --set actors.env_groups=G`, run G = 2, 1, 2, 1 one after another, two groups
    labelled 1,835 / 1,812 states/s with the torch teacher against one group's 1,714 / 1,503, and
    3,172 / 2,724 with int8 against 2,762 / 2,114. (Two plain processes running this loop, with no
    Ray, Redis or epsilon, had shown the opposite, one group ahead by about 1.1x: the system's own
    figures decide.)"""
    return 2 if num_envs >= 2 else 1


def actor_env_groups(env_id: str, num_envs: int, seed: int, cpus: float | None = None,
                     groups: int | None = None) -> list[EnvGroup]:
    """``num_envs`` envs for one actor, reset with ``seed`` and split into the groups it alternates.
    ``cpus``: the actor's CPU reservation (None: the whole machine, as in-process); ``groups``: 1 or 2
    (``actors.env_groups``), None for ``atari_groups``' choice."""
    if not atari.is_atari_id(env_id):
        return [SyncGroup(env_id, num_envs, seed)]
    # An actor's share is its reservation, not the host's cores: with a collector per CPU on a
    # 64-core node, host-sized groups would run thousands of emulator threads, and a step waits for
    # its slowest.
    cores = len(os.sched_getaffinity(0))
    usable = min(cores, math.ceil(cpus) if cpus else cores)
    count = min(groups, num_envs) if groups else atari_groups(num_envs)
    sizes = [num_envs // count + (1 if g < num_envs % count else 0) for g in range(count)]
    # While one group emulates, the actor's thread runs the teacher on the other: leave the teacher
    # a share of the cores instead of giving every group an emulator thread per core.
    threads = max(1, usable // count)
    made, first_seed = [], seed
    for size in sizes:
        made.append(AleGroup(env_id, size, first_seed, num_threads=min(size, threads)))
        first_seed += size  # sub-env i of the whole vector gets seed + i, as unsplit
    return made
