"""The replay table: a bounded ring of encoded chunks in Redis under kd:{run_id}:*, with the
samples-per-insert rate limiter inside (Reverb's Table and its rate limiters, in a few verbs).

    table = ReplayTable(address, limiter)
    table.insert(chunks, timeout_s=1.0)     # actors: [] while the limiter still holds them back
    table.sample(256, rng, timeout_s=1.0)   # learner: None while data is short or it is ahead

Callers write no wait loops: both verbs wait here, up to their timeout, and count the time.
Actors write whole chunks (one value each); the learner samples a few chunks and states within
them. The student's weights and the run's metadata live beside the data (replay/channels.py).
See DESIGN.md section 3.
"""
from __future__ import annotations

import json
import math
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from kd_system.errors import StoreError
from kd_system.replay.chunk_reader import ChunkReader
from kd_system.replay.gather import gather
from kd_system.replay.codec import encode_chunk
from kd_system.replay.connection import Namespace, StoreAddress
from kd_system.replay.rate_limit import SampleToInsertLimiter
from kd_system.types import LabelledChunk, LabelledStates

if TYPE_CHECKING:  # replay/pool.py calls back into the table
    from kd_system.replay.pool import DecodedPool

POLL_S = 0.005  # how often a held-back insert or sample re-reads the limiter's counters




class ReplayTable:
    """Bounded ring of ceil(capacity_states / chunk_states) chunk slots for one run.

    ``limiter`` None: inserts never wait and samples only wait for data. The limiter's two counts
    are the states inserted (kept in Redis) and the states this table handle sampled (the learner
    holds one handle per task; its count is mirrored to Redis for the actors' inserts to read).

    A store that comes back empty (a private redis-server restarted by the head, or the run
    cleared) is noticed by its counters reading lower than this handle last saw, and the handle
    starts over (see _forget_store)."""

    def __init__(self, address: StoreAddress, limiter: SampleToInsertLimiter | None = None):
        if min(int(address.capacity_states), int(address.chunk_states)) < 1:
            raise StoreError(f"store capacity_states={address.capacity_states} and chunk_states="
                             f"{address.chunk_states} must both be positive: fix the store config")
        self._ns = Namespace(address)
        self.address = address
        self.limiter = limiter
        self.num_slots = math.ceil(address.capacity_states / address.chunk_states)
        self._ring_full = False  # once every slot was written, sampling skips reading the counter
        self._lock = threading.Lock()  # the learner's prefetch threads share a handle: reserve samples atomically
        self.sampled = 0  # states sampled through this handle (the learner's side of the limiter)
        self.inserted = 0  # states inserted into the run, as last read
        self._chunks_seen = 0  # the chunk counter as last read or written: it only grows while the store lives
        self.wipes = 0  # times this handle found the store emptied under it
        self.generation = 0  # times what this handle knew of the store was forgotten: wipes and clear()
        self.held_by_limiter = False  # the last sample() attempt was refused by the limiter
        self.reader = ChunkReader(address.run_id, address.max_corrupt_share)  # decodes, skips and counts bad chunks
        self.wait_insert_s = 0.0  # time insert() spent held back by the limiter
        self._check_layout(claim=False)
        if limiter is not None:
            self._continue_counts()

    def _continue_counts(self) -> None:
        """A learner's handle takes over the run's counts: a replacement learner, or a resumed run on a
        store that kept its data, starting from sampled=0 against a full buffer would sample ~32x the
        buffer unthrottled (or, with limiter.error_buffer, hold every actor back until it caught up)."""
        with self._ns.guard("reading the run's counters"):
            states, sampled, chunks = self._ns.redis.mget(
                [self._ns.key("states"), self._ns.key("sampled"), self._ns.key("chunks")])
        self.inserted, self.sampled, self._chunks_seen = int(states or 0), int(sampled or 0), int(chunks or 0)

    @classmethod
    def from_address(cls, address: StoreAddress, limiter: SampleToInsertLimiter | None = None) -> "ReplayTable":
        return cls(address, limiter)

    def __reduce__(self):  # pickling (e.g. into a Ray actor) reconnects from the address
        return (ReplayTable, (self.address, self.limiter))

    def _layout(self) -> str:
        return json.dumps({"num_slots": self.num_slots, "chunk_states": self.address.chunk_states})

    def _check_layout(self, claim: bool) -> None:
        # A writer with other sizes would silently scramble the ring. Only writers claim the
        # layout, so a connection check (constructing and closing a table) leaves no keys behind.
        layout = self._layout()
        with self._ns.guard("checking the run layout"):
            pipe = self._ns.redis.pipeline()
            if claim:
                pipe.setnx(self._ns.key("layout"), layout)
            stored = pipe.get(self._ns.key("layout")).execute()[-1]
        if stored is not None and stored.decode() != layout:
            raise StoreError(f"run {self.address.run_id!r} in Redis at {self._ns.where} has layout "
                             f"{stored.decode()}, this store wants {layout}: use the run's original "
                             "store.capacity_states/chunk_states, a new run name, or clear the run")
        self._layout_claimed = claim

    def _forget_store(self) -> None:
        """The store was emptied under this handle (a restarted server, a cleared run): what it
        remembers no longer holds. The learner's sample count starts again at 0, so the limiter's
        min_size_to_sample gates learning until the ring refills (a large stale count would stall
        it for good); the next insert re-claims the layout. The caller holds self._lock."""
        self.sampled = self.inserted = self._chunks_seen = 0
        self._ring_full = self._layout_claimed = False
        self.generation += 1  # what was read from the store before (a decoded pool's chunks) is gone

    # ---- insert ----------------------------------------------------------------------------
    def insert(self, chunks: list[LabelledChunk], timeout_s: float = 0.0) -> list[int]:
        """Store the chunks in two round trips (reserve sequence numbers, then one MULTI) once the
        limiter lets them in; returns their 0-based sequence numbers (slot = seq % num_slots), or
        [] if the limiter still held them back after ``timeout_s``."""
        if not chunks:
            return []
        states = [self._checked_size(chunk) for chunk in chunks]
        if not self._insert_allowed(sum(states), timeout_s):
            return []
        blobs = [encode_chunk(c.states.arrays(), c.meta.to_json()) for c in chunks]  # fail before reserving
        if not self._layout_claimed:
            self._check_layout(claim=True)
        ns = self._ns
        with ns.guard("writing chunks"):
            # A value seen before this INCRBY was sent cannot exceed where it starts, even with
            # threads sharing the handle, unless the store was emptied in between.
            seen = self._chunks_seen
            end = ns.redis.incrby(ns.key("chunks"), len(blobs))
            with self._lock:
                if end - len(blobs) < seen:
                    self.wipes += 1
                    self._forget_store()
                self._chunks_seen = max(self._chunks_seen, end)
            seqs = list(range(end - len(blobs), end))
            pipe = ns.redis.pipeline(transaction=True)
            for seq, blob, n in zip(seqs, blobs, states):
                slot = seq % self.num_slots
                pipe.set(ns.key(f"slot:{slot}"), blob)
                pipe.hset(ns.key("slot_bytes"), slot, len(blob))
                pipe.hset(ns.key("slot_states"), slot, n)
            pipe.incrby(ns.key("states"), sum(states))
            # With the data, atomically: a store emptied after this handle checked the layout gets
            # it back with the first chunk, so no chunk ever sits in a ring without its layout.
            pipe.setnx(ns.key("layout"), self._layout())
            pipe.execute()
        return seqs

    def _checked_size(self, chunk: LabelledChunk) -> int:
        if not isinstance(chunk, LabelledChunk):
            raise StoreError(f"insert takes LabelledChunk records, got {type(chunk).__name__}")
        if len(chunk) > self.address.chunk_states:
            raise StoreError(f"a chunk of {len(chunk)} states is above store.chunk_states="
                             f"{self.address.chunk_states}: cut chunks at that size")
        return len(chunk)

    def _insert_allowed(self, states: int, timeout_s: float) -> bool:
        limiter = self.limiter
        if limiter is None or limiter.error_buffer is None:
            return True  # only the learner waits
        start = time.perf_counter()
        try:
            while True:
                inserted, sampled = self.limiter_counts()
                if limiter.can_insert(inserted, sampled, states):
                    return True
                if time.perf_counter() - start >= timeout_s:
                    return False
                time.sleep(POLL_S)
        finally:
            self.wait_insert_s += time.perf_counter() - start

    # ---- sample ----------------------------------------------------------------------------
    def sample(self, batch_size: int, rng: np.random.Generator, chunks_per_sample: int = 4,
               timeout_s: float = 0.0, pool: "DecodedPool | None" = None) -> LabelledStates | None:
        """batch_size states drawn uniformly with replacement from chunks_per_sample random filled
        slots (or a ``pool`` of decoded chunks, replay/pool.py), once the limiter allows; None if it
        still did not (or the table held no states) after ``timeout_s``. Two round trips: the
        counters, then the slots with the sample count."""
        start = time.perf_counter()
        while True:
            filled = self._reserve(batch_size)
            if filled:
                try:
                    if pool is None:
                        batch = self._draw(batch_size, rng, chunks_per_sample, filled)
                    else:
                        batch = pool.draw(self, batch_size, rng, filled)
                except BaseException:
                    self._release(batch_size)
                    raise
                if batch is not None:
                    return batch
            if filled is not None:
                self._release(batch_size)
            if time.perf_counter() - start >= timeout_s:
                return None
            time.sleep(POLL_S)

    def _reserve(self, batch_size: int) -> int | None:
        """Filled slots, with batch_size samples reserved against the limiter; None while it refuses."""
        ns = self._ns
        if self.limiter is None and self._ring_full:
            return self.num_slots  # nothing to read: every slot holds a chunk
        with self._lock:
            with ns.guard("reading the replay counters"):
                states, chunks = ns.redis.mget([ns.key("states"), ns.key("chunks")])
            states, chunks = int(states or 0), int(chunks or 0)
            if states < self.inserted or chunks < self._chunks_seen:  # counters only grow while the store lives
                self.wipes += 1
                self._forget_store()
            self.inserted, self._chunks_seen = states, chunks
            filled = min(chunks, self.num_slots)
            self._ring_full = filled == self.num_slots
            if self.limiter is None:
                return filled
            allowed = self.limiter.can_sample(self.inserted, self.sampled, batch_size)
            self.held_by_limiter = not allowed
            if not allowed:
                return None
            self.sampled += batch_size  # published with the slots' read (see _draw)
            return filled

    def _release(self, batch_size: int) -> None:
        """Give back a reservation that drew nothing (an empty or cleared table)."""
        with self._lock:  # not below 0: the reservation may predate a wipe that reset the count
            self.sampled = max(0, self.sampled - batch_size)
            self.publish_sampled()

    def _draw(self, batch_size: int, rng: np.random.Generator, chunks_per_sample: int,
              filled: int) -> LabelledStates | None:
        slots = rng.choice(filled, size=min(chunks_per_sample, filled), replace=False)
        parts = [part for part in self.read_slots(slots) if part is not None]
        if not parts:
            self._ring_full = False  # the run may have been cleared elsewhere: re-read the counter
            return None
        return gather(parts, batch_size, rng, self.address.run_id)

    def read_slots(self, slots) -> list[LabelledStates | None]:
        """The chunks in ``slots``, decoded; None for a slot reserved but not yet written, or a chunk
        that fails to decode. Publishes the learner's sample count in the same round trip (the
        actors' inserts read it)."""
        ns = self._ns
        with ns.guard("sampling"):
            pipe = ns.redis.pipeline(transaction=False).mget([ns.key(f"slot:{s}") for s in slots])
            if self.limiter is not None:
                pipe.set(ns.key("sampled"), self.sampled)
            blobs = pipe.execute()[0]
        return [None if b is None else (p if (p := self.reader.read(b)) is not None and len(p) else None) for b in blobs]

    def publish_sampled(self) -> None:
        """The learner's sample count, where no slot read carries it (a pool's batch, a release)."""
        if self.limiter is not None:
            with self._ns.guard("syncing the rate limiter"):
                self._ns.redis.set(self._ns.key("sampled"), self.sampled)

    @property
    def chunks_read(self) -> int:
        return self.reader.chunks_read

    @property
    def corrupt_chunks(self) -> int:
        return self.reader.corrupt_chunks

    # ---- counters and lifetime ---------------------------------------------------------------
    def limiter_counts(self) -> tuple[int, int]:
        """(states inserted, states sampled by the learner): what the rate limiter compares."""
        with self._ns.guard("reading rate-limiter counters"):
            states, sampled = self._ns.redis.mget([self._ns.key("states"), self._ns.key("sampled")])
        return int(states or 0), int(sampled or 0)

    def stats(self) -> dict:
        ns = self._ns
        with ns.guard("reading stats"):
            chunks, states, slot_bytes, slot_states = ns.redis.pipeline(transaction=False) \
                .get(ns.key("chunks")).get(ns.key("states")) \
                .hvals(ns.key("slot_bytes")).hvals(ns.key("slot_states")).execute()
        return {"chunks_written": int(chunks or 0), "states_written": int(states or 0),
                "states_stored": sum(map(int, slot_states)), "bytes_stored": sum(map(int, slot_bytes)),
                "num_slots": self.num_slots, "capacity_states": self.address.capacity_states}

    def clear(self) -> None:
        """Delete this run's keys only (other runs on the same server are untouched)."""
        self._ns.delete_all()
        with self._lock:
            self._forget_store()

    def close(self) -> None:
        self._ns.close()

    def __enter__(self) -> "ReplayTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
