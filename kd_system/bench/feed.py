"""``--only feed``: can the store keep a much faster learner fed? Two figures, both through the real
``Learner.train`` loop (its prefetchers, limiter and counters) with only the update swapped:

- sampled states/s against a consumer that does nothing: the update is empty, so the rate is what
  the input pipeline (learner.prefetch_threads sampling, decoding, tensor conversion) delivers;
- the fed ratio of a learner 20x faster than today's: the real CPU update is timed first (in memory,
  as the learner section times it), and the stand-in update sleeps a twentieth of it. Sleeping, not
  spinning: a GPU learner's thread waits on the device with the GIL released and its CPU free, so
  the prefetch threads get the cores as they would beside a real GPU learner. The ratio is fed from
  the store over the same stand-in fed one batch already in memory.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from kd_system.bench.context import BenchContext
from kd_system.bench.learner_bench import _InMemoryBatches, _updates_per_s, filled_store
from kd_system.bench.timing import torch_threads
from kd_system.learner.learner import Learner

SPEEDUP = 20  # the fast learner: 20x today's CPU update (a GPU learner eats 20-50x)
# The decoded-chunk pool (replay/pool.py) measured beside fresh chunks: 16 chunks, one replaced
# every second batch, so a chunk serves about 32 batches.
POOL = {"decoded_pool_chunks": 16, "pool_refresh_chunks": 0.5}


class _StandInLearner(Learner):
    """The real learner loop whose update sleeps ``step_s`` (0: a consumer that does nothing)."""

    def __init__(self, *args: Any, step_s: float):
        super().__init__(*args)
        self.step_s = step_s

    def _update(self, batches: list[dict[str, torch.Tensor]]) -> float:
        if self.step_s > 0:
            time.sleep(self.step_s)
        self.updates += 1
        self.samples += sum(len(batch["obs"]) for batch in batches)
        return 0.0


def _rate(make: Callable[[], Learner], in_memory: dict[str, torch.Tensor] | None, warmup_s: float,
          window_s: float) -> float:
    learner = make()
    if in_memory is not None:
        learner.prefetchers = [_InMemoryBatches({name: t.to(learner.device) for name, t in in_memory.items()})]
    try:
        return _updates_per_s(learner, warmup_s, window_s)[0]
    finally:
        learner.close()


def run_feed(ctx: BenchContext, log: Callable[[str], None]) -> dict[str, Any]:
    config = ctx.config.learner
    store, task, limiter = filled_store(ctx, "feed")
    warmup, window = ctx.options.warmup_s, ctx.options.seconds
    sample = store.sample(config.batch_size, np.random.default_rng(0), config.chunks_per_sample)
    in_memory = {name: torch.from_numpy(array) for name, array in sample.arrays().items()}

    def stand_in(step_s: float) -> Callable[[], Learner]:
        return lambda: _StandInLearner(config, [task], limiter, step_s=step_s)

    try:
        with torch_threads(config.torch_threads):
            log(f"feed: today's update, {ctx.student_spec.num_params:,}-param student, batch {config.batch_size}, "
                "in memory ...")
            real = _rate(lambda: Learner(config, [task], limiter), in_memory, warmup, window)
            step_s = 1.0 / real
            log(f"feed: today's update {step_s * 1e3:,.1f} ms; a consumer that does nothing, fed from the store "
                f"({config.prefetch_threads} prefetch thread(s)) ...")
            nothing = _rate(stand_in(0.0), None, warmup, window)
            pooled_config = config.model_copy(update=POOL)
            nothing_pooled = _rate(lambda: _StandInLearner(pooled_config, [task], limiter, step_s=0.0), None,
                                   warmup, window)
            log(f"feed: {nothing_pooled * config.batch_size:,.0f} sampled states/s with a pool of "
                f"{POOL['decoded_pool_chunks']} decoded chunks refreshing {POOL['pool_refresh_chunks']:g} per batch "
                f"({nothing_pooled / nothing:.1f}x)")
            log(f"feed: {nothing * config.batch_size:,.0f} sampled states/s; a {SPEEDUP}x faster learner "
                f"(sleeps {step_s / SPEEDUP * 1e3:,.2f} ms per update), in memory then fed ...")
            fast_memory = _rate(stand_in(step_s / SPEEDUP), in_memory, warmup, window)
            fast_fed = _rate(stand_in(step_s / SPEEDUP), None, warmup, window)
            fast_fed_pooled = _rate(lambda: _StandInLearner(pooled_config, [task], limiter, step_s=step_s / SPEEDUP),
                                    None, warmup, window)
        log(f"feed: fast learner {fast_fed:,.1f} of {fast_memory:,.1f} updates/s fed ({fast_fed / fast_memory:.2f}); "
            f"with the pool {fast_fed_pooled:,.1f} ({fast_fed_pooled / fast_memory:.2f})")
    finally:
        store.clear()
        store.close()
    return {"store_sampled_states_per_s": nothing * config.batch_size,
            "store_sampled_states_per_s_pooled": nothing_pooled * config.batch_size,
            "pooled_vs_fresh_chunks": nothing_pooled / nothing, "pool": dict(POOL), "real_update_s": step_s,
            "real_updates_per_s": real, "real_states_per_s": real * config.batch_size,
            "sampled_vs_real_learner": nothing / real, "speedup": SPEEDUP, "stand_in_update_s": step_s / SPEEDUP,
            "fast_in_memory_updates_per_s": fast_memory, "fast_fed_updates_per_s": fast_fed,
            "fast_learner_fed_ratio": fast_fed / fast_memory, "fast_fed_updates_per_s_pooled": fast_fed_pooled,
            "fast_learner_fed_ratio_pooled": fast_fed_pooled / fast_memory,
            "stand_in": "sleep of the real update's time / speedup inside Learner.train (GIL released, as on a GPU)",
            "batch_size": config.batch_size, "prefetch_threads": config.prefetch_threads,
            "chunks_per_sample": config.chunks_per_sample, "chunks_in_store": len(ctx.labelled_chunks())}
