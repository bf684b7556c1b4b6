"""The actor component: steps a vector of envs, labels every state with the teacher in one
batched forward per step, and writes fixed-size chunks to the replay store.

Ray-free: the head wraps it with ``ray.remote``; tests run it in-process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from kd_system.actors.behaviour import ActingPolicy, TeacherShareSchedule, make_acting_policy
from kd_system.actors.lookahead import LookaheadSettings, RolloutLabeller
from kd_system.policies.files import FrozenPolicy, PolicyBundle, PolicySpec
from kd_system.replay.rate_limit import SampleToInsertLimiter
from kd_system.actors.labelling import LabellingLoop
from kd_system.replay.store import ReplayStore, StoreAddress


@dataclass(frozen=True)
class CollectorSettings:
    actor_id: int
    env_id: str
    num_envs: int
    epsilon: float
    chunk_states: int
    chunks_per_write: int
    torch_threads: int
    seed: int
    task_id: int = 0
    acting: str = "teacher"  # teacher | student | mixed (see acting.py)
    weights_refresh_steps: int = 1_000  # env steps between pulls of the newest student weights
    teacher_share: TeacherShareSchedule = TeacherShareSchedule()
    limiter: SampleToInsertLimiter | None = None  # None: never wait before writing
    lookahead: LookaheadSettings | None = None  # set: label with the rollout-improved teacher


class Collector:
    def __init__(self, settings: CollectorSettings, store_address: StoreAddress, teacher: PolicyBundle,
                 student_spec: PolicySpec | None = None, acting: ActingPolicy | None = None):
        torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.store = ReplayStore.from_address(store_address)
        self.teacher = FrozenPolicy.from_bundle(teacher)
        self.acting = acting or make_acting_policy(settings.acting, settings.epsilon, teacher.spec.num_actions,
                                                   settings.seed, self.store, student_spec, settings.teacher_share)
        self._steps_at_refresh = 0
        self._wait_limiter_s = 0.0
        labeller = RolloutLabeller(self.teacher, settings.lookahead) if settings.lookahead is not None else None
        self.loop = LabellingLoop(settings.env_id, settings.num_envs, settings.seed, self.teacher, self.acting, labeller)
        self.states_written = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_states = 0
        self._ready_chunks: list[tuple[dict, dict]] = []
        self._time_store_s = 0.0

    @property
    def env_steps(self) -> int:
        return self.loop.env_steps

    def _step(self) -> None:
        obs, teacher_out, actions = self.loop.step()
        self._pending.append((obs, teacher_out, actions))
        self._pending_states += len(actions)

    def _cut_chunk(self) -> None:
        obs, teacher_out, actions = (np.concatenate(parts) for parts in zip(*self._pending))
        size = self.settings.chunk_states
        meta = {"actor_id": self.settings.actor_id, "task_id": self.settings.task_id, **self.acting.describe(),
                "labels": "teacher" if self.settings.lookahead is None else "lookahead"}
        self._ready_chunks.append(({"obs": obs[:size], "teacher_out": teacher_out[:size], "action": actions[:size]}, meta))
        rest = (obs[size:], teacher_out[size:], actions[size:])
        self._pending = [rest] if len(rest[2]) else []
        self._pending_states = len(rest[2])
        # Refreshing only between chunks keeps one acting weight version per chunk.
        if self.env_steps - self._steps_at_refresh >= self.settings.weights_refresh_steps:
            self.acting.refresh()
            self._steps_at_refresh = self.env_steps

    def _insert_allowed(self, deadline: float) -> bool:
        """Wait (up to the deadline) until the rate limiter lets this write in."""
        limiter = self.settings.limiter
        if limiter is None or limiter.error_buffer is None:
            return True
        states = sum(len(arrays["action"]) for arrays, _ in self._ready_chunks)
        start = time.perf_counter()
        try:
            while True:
                inserted, sampled = self.store.limiter_counts()
                if limiter.can_insert(inserted, sampled, states):
                    return True
                if time.perf_counter() >= deadline:
                    return False
                time.sleep(0.005)
        finally:
            self._wait_limiter_s += time.perf_counter() - start

    def _flush(self) -> None:
        start = time.perf_counter()
        self.store.write_chunks(self._ready_chunks)
        self.states_written += sum(len(arrays["action"]) for arrays, _ in self._ready_chunks)
        self._ready_chunks = []
        self._time_store_s += time.perf_counter() - start

    def collect(self, duration_s: float) -> dict:
        """Collect for about ``duration_s`` seconds; returns cumulative counters and recent returns."""
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            if len(self._ready_chunks) >= self.settings.chunks_per_write:
                if not self._insert_allowed(deadline):
                    break  # still held back: report to the head and try again next call
                self._flush()
            self._step()
            if self._pending_states >= self.settings.chunk_states:
                self._cut_chunk()
        if len(self._ready_chunks) >= self.settings.chunks_per_write and self._insert_allowed(0.0):
            self._flush()
        returns = self.loop.take_finished_returns()
        return {
            "actor_id": self.settings.actor_id,
            "env_steps": self.env_steps,
            "rollout_steps": self.loop.rollout_steps,
            "states_written": self.states_written,
            "episode_returns": returns,
            "time_env_s": self.loop.time_env_s,
            "time_teacher_s": self.loop.time_teacher_s,
            "time_store_s": self._time_store_s,
            "time_wait_limiter_s": self._wait_limiter_s,
            "policy_version": self.acting.version(),
        }

    def close(self) -> None:
        self.loop.close()
        self.store.close()
