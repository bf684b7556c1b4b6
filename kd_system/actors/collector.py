"""The actor component: steps a vector of envs, labels every state with the teacher in one
batched forward per step, and writes fixed-size chunks to the replay store.

Ray-free: the head wraps it with ``ray.remote``; tests run it in-process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from kd_system.actors.behaviour import ActingPolicy, TeacherShareSchedule, make_acting_policy
from kd_system.actors.lookahead import LookaheadSettings, RolloutLabeller
from kd_system.policies.files import FrozenPolicy, PolicyBundle, PolicySpec
from kd_system.replay.rate_limit import SampleToInsertLimiter
from kd_system.actors.labelling import LabellingLoop
from kd_system.replay.channels import WeightsChannel
from kd_system.replay.connection import StoreAddress
from kd_system.replay.table import ReplayTable
from kd_system.types import ChunkMeta, CollectReport, LabelledChunk, LabelledStates


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
    num_cpus: float | None = None  # the actor's Ray CPU reservation: bounds its emulator threads
    env_groups: int | None = None  # Atari env groups, 1 or 2 (envs.vector); None: auto


class Collector:
    def __init__(self, settings: CollectorSettings, store_address: StoreAddress, teacher: PolicyBundle,
                 student_spec: PolicySpec | None = None, acting: ActingPolicy | None = None):
        torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.table = ReplayTable.from_address(store_address, settings.limiter)
        self.weights = WeightsChannel(store_address) if settings.acting != "teacher" and acting is None else None
        self.teacher = FrozenPolicy.from_bundle(teacher)
        self.acting = acting or make_acting_policy(settings.acting, settings.epsilon, teacher.spec.num_actions,
                                                   settings.seed, self.weights, student_spec, settings.teacher_share)
        self._steps_at_refresh = 0
        labeller = RolloutLabeller(self.teacher, settings.lookahead) if settings.lookahead is not None else None
        self.loop = LabellingLoop(settings.env_id, settings.num_envs, settings.seed, self.teacher, self.acting, labeller,
                                 settings.num_cpus, settings.env_groups)
        self.states_written = 0
        self._pending: list[LabelledStates] = []
        self._pending_states = 0
        self._ready_chunks: list[LabelledChunk] = []
        self._time_store_s = 0.0

    @property
    def env_steps(self) -> int:
        return self.loop.env_steps

    def _step(self) -> None:
        states = LabelledStates(*self.loop.step())
        self._pending.append(states)
        self._pending_states += len(states)

    def _cut_chunk(self) -> None:
        states = LabelledStates.concatenate(self._pending)
        size = self.settings.chunk_states
        meta = ChunkMeta(actor_id=self.settings.actor_id, task_id=self.settings.task_id, **self.acting.describe(),
                         labels="teacher" if self.settings.lookahead is None else "lookahead")
        self._ready_chunks.append(LabelledChunk(states.head(size), meta))
        rest = states.tail(size)
        self._pending = [rest] if len(rest) else []
        self._pending_states = len(rest)
        # Refreshing only between chunks keeps one acting weight version per chunk.
        if self.env_steps - self._steps_at_refresh >= self.settings.weights_refresh_steps:
            self.acting.refresh()
            self._steps_at_refresh = self.env_steps

    def _flush(self, timeout_s: float) -> bool:
        """Insert the ready chunks, held back by the table's rate limiter for up to ``timeout_s``."""
        start = time.perf_counter()
        wait_before = self.table.wait_insert_s
        written = self.table.insert(self._ready_chunks, timeout_s)
        if written:
            self.states_written += sum(len(chunk) for chunk in self._ready_chunks)
            self._ready_chunks = []
        self._time_store_s += time.perf_counter() - start - (self.table.wait_insert_s - wait_before)
        return bool(written)

    def collect(self, duration_s: float) -> CollectReport:
        """Collect for about ``duration_s`` seconds; returns cumulative counters and recent returns."""
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            if len(self._ready_chunks) >= self.settings.chunks_per_write:
                if not self._flush(max(0.0, deadline - time.perf_counter())):
                    break  # still held back: report to the head and try again next call
            self._step()
            if self._pending_states >= self.settings.chunk_states:
                self._cut_chunk()
        if len(self._ready_chunks) >= self.settings.chunks_per_write:
            self._flush(0.0)
        returns = self.loop.take_finished_returns()
        return CollectReport(
            actor_id=self.settings.actor_id,
            env_steps=self.env_steps,
            rollout_steps=self.loop.rollout_steps,
            states_written=self.states_written,
            episode_returns=returns,
            time_env_s=self.loop.time_env_s,
            time_teacher_s=self.loop.time_teacher_s,
            time_store_s=self._time_store_s,
            time_wait_limiter_s=self.table.wait_insert_s,
            policy_version=self.acting.version(),
        )

    def close(self) -> None:
        self.loop.close()
        self.table.close()
        if self.weights is not None:
            self.weights.close()
