"""Store: ReplayTable insert and sample states/s and stored bytes per state, on chunks exactly as
collectors make them, against raw Redis SET/GET of each state's uncompressed bytes. Raw is timed
both one command per state and pipelined (one round trip per chunk written or batch read); the
ratios compare with the pipelined figures, the fair ones."""
from __future__ import annotations

from typing import Callable

import numpy as np
import redis

from kd_system.replay.codec import encode_chunk
from kd_system.replay.table import ReplayTable
from kd_system.bench.codecs import compare_codecs
from kd_system.bench.context import BenchContext, clear_namespace
from kd_system.bench.timing import steady_rate
from kd_system.types import LabelledChunk

ARRAYS = ("obs", "teacher_out", "action")  # what a collector's chunk holds per state


def _raw_states(chunks: list[LabelledChunk]) -> list[bytes]:
    return [b"".join(getattr(chunk.states, name)[i].tobytes() for name in ARRAYS)
            for chunk in chunks for i in range(len(chunk))]


def _raw_batch(blobs: list[bytes], layout: list[tuple[str, np.dtype, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Raw values back into batch arrays, as the store's sample returns them (a fair comparison)."""
    rows = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
    batch, offset = {}, 0
    for name, dtype, shape in layout:
        size = dtype.itemsize * int(np.prod(shape))
        batch[name] = rows[:, offset:offset + size].copy().view(dtype).reshape(len(blobs), *shape)
        offset += size
    return batch


def _raw_rates(ctx: BenchContext, chunks: list[LabelledChunk], batch_size: int) -> dict:
    address = ctx.address("raw")
    client = redis.Redis.from_url(address.url)
    states = _raw_states(chunks)
    keys = [f"kd:{address.run_id}:state:{i}" for i in range(len(states))]  # clear() removes them
    first = chunks[0].states
    layout = [(name, getattr(first, name).dtype, getattr(first, name).shape[1:]) for name in ARRAYS]
    rng = np.random.default_rng(0)
    warmup, window = ctx.options.warmup_s, ctx.options.seconds
    position = 0

    def set_one() -> int:
        nonlocal position
        position = (position + 1) % len(states)
        client.set(keys[position], states[position])
        return 1

    def set_pipelined() -> int:  # one round trip per chunk, as the store writes
        nonlocal position
        pipe = client.pipeline(transaction=False)
        for _ in range(ctx.chunk_states):
            position = (position + 1) % len(states)
            pipe.set(keys[position], states[position])
        pipe.execute()
        return ctx.chunk_states

    def get_one_by_one() -> int:
        _raw_batch([client.get(keys[i]) for i in rng.integers(0, len(keys), batch_size)], layout)
        return batch_size

    def get_pipelined() -> int:  # one MGET per batch, as the store samples
        _raw_batch(client.mget([keys[i] for i in rng.integers(0, len(keys), batch_size)]), layout)
        return batch_size

    try:
        rates = {"raw_set_states_per_s": steady_rate(set_one, warmup, window),
                 "raw_set_pipelined_states_per_s": steady_rate(set_pipelined, warmup, window)}
        client.mset(dict(zip(keys, states)))  # every key readable, however short the windows were
        return rates | {"raw_get_states_per_s": steady_rate(get_one_by_one, warmup, window),
                        "raw_get_pipelined_states_per_s": steady_rate(get_pipelined, warmup, window)}
    finally:
        client.close()
        clear_namespace(address)


def _store_rates(ctx: BenchContext, chunks: list[LabelledChunk], batch_size: int, chunks_per_sample: int) -> dict:
    store = ReplayTable.from_address(ctx.address("store"))  # no limiter: neither verb waits
    per_write = ctx.config.actors.chunks_per_write
    position = 0

    def write() -> int:  # encode + two round trips, as Collector._flush does
        nonlocal position
        batch = [chunks[(position + i) % len(chunks)] for i in range(per_write)]
        position += per_write
        store.insert(batch)
        return sum(len(chunk) for chunk in batch)

    rng = np.random.default_rng(0)

    def sample() -> int:  # one prefetch thread's work: MGET, lz4 decode, gather
        store.sample(batch_size, rng, chunks_per_sample)
        return batch_size

    try:
        return {"write_states_per_s": steady_rate(write, ctx.options.warmup_s, ctx.options.seconds),
                "sample_states_per_s": steady_rate(sample, ctx.options.warmup_s, ctx.options.seconds)}
    finally:
        store.clear()
        store.close()


def run_store(ctx: BenchContext, log: Callable[[str], None]) -> dict:
    learner = ctx.config.learner
    chunks = ctx.labelled_chunks()
    states = sum(len(chunk) for chunk in chunks)
    stored_bytes = sum(len(encode_chunk(c.states.arrays(), c.meta.to_json())) for c in chunks) / states
    raw_bytes = sum(getattr(chunks[0].states, name)[0].nbytes for name in ARRAYS)
    log(f"store: ReplayTable insert and sample ({len(chunks)} chunks of {ctx.chunk_states} states, "
        f"batch {learner.batch_size} from {learner.chunks_per_sample} chunks) ...")
    result = _store_rates(ctx, chunks, learner.batch_size, learner.chunks_per_sample)
    log(f"store: write {result['write_states_per_s']:,.0f} states/s, sample {result['sample_states_per_s']:,.0f} "
        f"states/s, {stored_bytes:,.0f} bytes/state; raw Redis SET/GET of {raw_bytes:,} bytes/state ...")
    result |= _raw_rates(ctx, chunks, learner.batch_size)
    log(f"store: raw SET {result['raw_set_pipelined_states_per_s']:,.0f} states/s pipelined, "
        f"raw GET {result['raw_get_pipelined_states_per_s']:,.0f} states/s pipelined")
    codecs = compare_codecs(chunks)
    log("store: observation codecs " + "; ".join(
        f"{name} {c['obs_bytes_per_state']:,.0f} B/state" + (f", encode {c['encode_states_per_s']:,.0f}/s, decode "
                                                              f"{c['decode_states_per_s']:,.0f}/s" if "encode_states_per_s" in c else "")
        for name, c in codecs.items()))
    return {**result, "codecs": codecs, "bytes_per_state": stored_bytes, "raw_bytes_per_state": raw_bytes,
            "bytes_vs_raw": stored_bytes / raw_bytes,
            "write_vs_raw": result["write_states_per_s"] / result["raw_set_pipelined_states_per_s"],
            "sample_vs_raw": result["sample_states_per_s"] / result["raw_get_pipelined_states_per_s"],
            "write_vs_raw_unpipelined": result["write_states_per_s"] / result["raw_set_states_per_s"],
            "sample_vs_raw_unpipelined": result["sample_states_per_s"] / result["raw_get_states_per_s"],
            "chunk_states": ctx.chunk_states, "chunks": len(chunks), "batch_size": learner.batch_size,
            "chunks_per_sample": learner.chunks_per_sample}
