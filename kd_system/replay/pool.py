"""A learner's pool of decoded chunks: decode each chunk once and sample it for many batches.

Sampling a batch from ``chunks_per_sample`` fresh chunks decodes them whole to use a fraction of
each: on Atari, 4 chunks of 256 frame stacks (29 MB) for 256 states, and zstd's decoding is then
nearly all of sampling's time (about 19 ms a batch here, against 0.15 ms for the Redis read). The
pool keeps ``size`` decoded chunks and replaces ``refresh`` of them per batch on average, each
with a uniformly drawn slot, the rest of the time drawing only from memory; every batch draws
uniformly from all the pool's states (more chunks per batch than without it). Over a chunk's life
its states are still sampled uniformly; what changes is when: a chunk is sampled while it is in the
pool, for about size / refresh batches, so new data reaches the learner with that lag.

One pool per prefetch thread (no lock); ``learner.decoded_pool_chunks: 0`` keeps the old sampling.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kd_system.replay.gather import gather
from kd_system.types import LabelledStates

if TYPE_CHECKING:
    from kd_system.replay.table import ReplayTable


class DecodedPool:
    def __init__(self, size: int, refresh: float):
        if size < 1 or not refresh > 0:
            raise ValueError(f"a decoded pool needs size >= 1 and refresh > 0, got {size}, {refresh}")
        self.size, self.refresh = size, refresh
        self.parts: list[LabelledStates] = []
        self._due = 0.0  # chunks owed to the refresh schedule: refresh per batch, whole chunks at a time
        self._generation = 0  # the table's store generation the pool's chunks belong to (wiped, cleared: gone)
        self.decoded = 0  # chunks decoded into the pool, for the bench

    def draw(self, table: ReplayTable, batch_size: int, rng: np.random.Generator, filled: int) -> LabelledStates | None:
        """A batch from the pool after its refresh; None when the store holds nothing readable yet."""
        if table.generation != self._generation:
            self.parts, self._generation = [], table.generation
        missing = self.size - len(self.parts)
        self._due += self.refresh
        count = min(filled, max(missing, int(self._due)))
        if count:
            self._due = max(0.0, self._due - count)
            fresh = [p for p in table.read_slots(rng.choice(filled, size=count, replace=False)) if p is not None]
            self.decoded += len(fresh)
            for part in fresh:
                if len(self.parts) < self.size:
                    self.parts.append(part)
                else:
                    self.parts[int(rng.integers(len(self.parts)))] = part
        else:
            table.publish_sampled()
        if not self.parts:
            return None
        return gather(self.parts, batch_size, rng, table.address.run_id)
