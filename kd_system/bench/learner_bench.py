"""Learner: updates/s of the real Learner fed from the store (its prefetcher sampling the chunks
collectors make) against the same Learner loop fed one batch already on its device, same batch
size, loss, optimiser and thread count. Both run ``Learner.train``, so the only difference is
where batches come from: the ratio is how much the input pipeline starves the learner."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from kd_system.learner.learner import Learner, LearnerTask
from kd_system.replay.rate_limit import SampleToInsertLimiter
from kd_system.replay.table import ReplayTable
from kd_system.bench.context import BenchContext
from kd_system.bench.timing import torch_threads
from kd_system.types import TrainReport

# The store is filled once up front, so the replay-ratio limiter must never hold the learner back.
NEVER_WAIT = 1e12


class _InMemoryBatches:
    """Stands in for the learner's prefetcher: hands out the same batch, already on the device."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def get(self, timeout_s: float = 0.0) -> dict[str, torch.Tensor]:
        return self.batch

    def close(self) -> None:
        pass


def filled_store(ctx: BenchContext, run_id: str) -> tuple[ReplayTable, LearnerTask, SampleToInsertLimiter]:
    """A store of its own holding the collectors' labelled chunks, the learner's task on it, and a
    limiter that never holds the learner back (the learner and feed sections); the caller clears it."""
    chunks = ctx.labelled_chunks()
    address = ctx.address(run_id, capacity_states=sum(len(chunk) for chunk in chunks))
    store = ReplayTable.from_address(address)
    store.insert(chunks)
    task = LearnerTask(address, ctx.student_spec, ctx.teacher.bundle.spec.output_kind)
    limiter = SampleToInsertLimiter(min_size_to_sample=ctx.config.learner.batch_size, samples_per_insert=NEVER_WAIT)
    return store, task, limiter


def _updates_per_s(learner: Learner, warmup_s: float, window_s: float) -> tuple[float, TrainReport]:
    learner.train(warmup_s)  # untimed: first updates, optimiser state, the prefetch queue filling up
    result = learner.train(window_s)
    return result.updates_in_call / result.call_s, result


def run_learner(ctx: BenchContext, log: Callable[[str], None]) -> dict:
    config = ctx.config.learner
    store, task, limiter = filled_store(ctx, "learner")
    warmup, window = ctx.options.warmup_s, ctx.options.seconds
    try:
        with torch_threads(config.torch_threads):
            log(f"learner: {ctx.student_spec.num_params:,}-param student, batch {config.batch_size}, "
                f"{config.torch_threads} torch thread(s), on a batch already in memory ...")
            learner = Learner(config, [task], limiter)
            sample = store.sample(config.batch_size, np.random.default_rng(0), config.chunks_per_sample)
            learner.prefetchers = [_InMemoryBatches({name: torch.from_numpy(array).to(learner.device)
                                                     for name, array in sample.arrays().items()})]
            try:
                in_memory, _ = _updates_per_s(learner, warmup, window)
            finally:
                learner.close()
            log(f"learner: in memory {in_memory:,.1f} updates/s; now fed from the store ...")
            learner = Learner(config, [task], limiter)
            try:
                fed, result = _updates_per_s(learner, warmup, window)
            finally:
                learner.close()
        log(f"learner: fed from the store {fed:,.1f} updates/s")
    finally:
        store.clear()
        store.close()
    return {"fed_updates_per_s": fed, "in_memory_updates_per_s": in_memory, "fed_vs_in_memory": fed / in_memory,
            "fed_wait_input_frac": result.wait_input_frac, "batch_size": config.batch_size,
            "in_memory_states_per_s": in_memory * config.batch_size, "device": result.device,
            "precision": result.precision,
            "student_params": ctx.student_spec.num_params, "student_network": ctx.student_spec.network,
            "torch_threads": config.torch_threads, "prefetch_threads": config.prefetch_threads,
            "chunks_per_sample": config.chunks_per_sample}
