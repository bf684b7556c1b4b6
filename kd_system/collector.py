"""The actor component: steps a vector of envs, labels every state with the teacher in one
batched forward per step, and writes fixed-size chunks to the replay store.

Ray-free: the head wraps it with ``ray.remote``; tests run it in-process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .acting import ActingPolicy, EpsilonGreedyTeacher
from .envs import make_vector_env
from .policy_files import FrozenPolicy, PolicyBundle
from .store import ReplayStore, StoreAddress


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


class Collector:
    def __init__(self, settings: CollectorSettings, store_address: StoreAddress, teacher: PolicyBundle,
                 acting: ActingPolicy | None = None):
        torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.store = ReplayStore.from_address(store_address)
        self.teacher = FrozenPolicy.from_bundle(teacher)
        self.acting = acting or EpsilonGreedyTeacher(settings.epsilon, teacher.spec.num_actions, settings.seed)
        self.envs = make_vector_env(settings.env_id, settings.num_envs, seed=settings.seed)
        self.obs, _ = self.envs.reset(seed=settings.seed)
        self.episode_returns = np.zeros(settings.num_envs)
        self.finished_returns: list[float] = []
        self.env_steps = 0
        self.states_written = 0
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_states = 0
        self._ready_chunks: list[tuple[dict, dict]] = []
        self._time_env_s = self._time_teacher_s = self._time_store_s = 0.0

    def _step(self) -> None:
        start = time.perf_counter()
        teacher_out = self.teacher.outputs(self.obs)
        actions = self.acting.select(self.obs, teacher_out)
        labelled = time.perf_counter()
        self._pending.append((self.obs.copy(), teacher_out, actions.astype(np.int32)))
        self._pending_states += len(actions)
        self.obs, rewards, terminated, truncated, _ = self.envs.step(actions)
        self.env_steps += len(actions)
        self.episode_returns += rewards
        for index in np.flatnonzero(terminated | truncated):
            self.finished_returns.append(float(self.episode_returns[index]))
            self.episode_returns[index] = 0.0
        self._time_teacher_s += labelled - start
        self._time_env_s += time.perf_counter() - labelled

    def _cut_chunk(self) -> None:
        obs, teacher_out, actions = (np.concatenate(parts) for parts in zip(*self._pending))
        size = self.settings.chunk_states
        meta = {"actor_id": self.settings.actor_id, "task_id": self.settings.task_id,
                "behaviour": self.acting.name, "policy_version": self.acting.version()}
        self._ready_chunks.append(({"obs": obs[:size], "teacher_out": teacher_out[:size], "action": actions[:size]}, meta))
        rest = (obs[size:], teacher_out[size:], actions[size:])
        self._pending = [rest] if len(rest[2]) else []
        self._pending_states = len(rest[2])

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
            self._step()
            if self._pending_states >= self.settings.chunk_states:
                self._cut_chunk()
                if len(self._ready_chunks) >= self.settings.chunks_per_write:
                    self._flush()
        returns, self.finished_returns = self.finished_returns, []
        return {
            "actor_id": self.settings.actor_id,
            "env_steps": self.env_steps,
            "states_written": self.states_written,
            "episode_returns": returns,
            "time_env_s": self._time_env_s,
            "time_teacher_s": self._time_teacher_s,
            "time_store_s": self._time_store_s,
        }

    def close(self) -> None:
        self.envs.close()
        self.store.close()
