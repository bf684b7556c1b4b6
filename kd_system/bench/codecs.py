"""Which compressor the store's chunks should use, decided by figures: bytes per state and
encode/decode states/s for lz4 and zstd at levels 1 and 3 (the store's codec, see
replay/codec.py), on the same labelled chunks, plus what storing each frame once (instead of
four times per stack) would save.
"""
from __future__ import annotations

import time

import lz4.block
import numpy as np

from kd_system.types import LabelledChunk

CODEC_WINDOW_S = 1.0


def _compressors() -> dict[str, tuple]:
    codecs = {"lz4": (lambda raw: lz4.block.compress(raw, store_size=False),
                      lambda blob, size: lz4.block.decompress(blob, uncompressed_size=size))}
    import zstandard

    for level in (1, 3):
        compressor = zstandard.ZstdCompressor(level=level)
        decompressor = zstandard.ZstdDecompressor()
        codecs[f"zstd-{level}"] = (compressor.compress,
                                   lambda blob, size, d=decompressor: d.decompress(blob, max_output_size=size))
    return codecs


def _timed(fn, items: list) -> tuple[float, list]:
    """Items per second of ``fn`` over the items, repeated for about a second."""
    done, outputs, start = 0, [], time.perf_counter()
    while True:
        outputs = [fn(item) for item in items]
        done += len(items)
        if time.perf_counter() - start >= CODEC_WINDOW_S:
            return done / (time.perf_counter() - start), outputs


def compare_codecs(chunks: list[LabelledChunk]) -> dict:
    """Per codec: stored bytes per state and encode/decode states/s of the observation arrays
    (what dominates a chunk: teacher outputs and actions are a few dozen bytes a state)."""
    frames = [np.ascontiguousarray(chunk.states.obs).reshape(-1).view(np.uint8) for chunk in chunks]
    states_per_chunk = len(chunks[0])
    states = states_per_chunk * len(frames)
    result: dict[str, dict] = {}
    for name, (compress, decompress) in _compressors().items():
        encode_rate, blobs = _timed(compress, frames)
        decode_rate, _ = _timed(lambda pair: decompress(*pair), list(zip(blobs, [f.nbytes for f in frames])))
        result[name] = {"obs_bytes_per_state": sum(len(b) for b in blobs) / states,
                        "encode_states_per_s": encode_rate * states_per_chunk,
                        "decode_states_per_s": decode_rate * states_per_chunk}
    obs = chunks[0].states.obs
    if obs.ndim == 4 and obs.shape[1] > 1:  # frame stacks: the newest frame of each state, once
        newest = [np.ascontiguousarray(chunk.states.obs[:, -1]).reshape(-1).view(np.uint8) for chunk in chunks]
        packed = sum(len(lz4.block.compress(f, store_size=False)) for f in newest)
        result["lz4, newest frame only (estimate)"] = {"obs_bytes_per_state": packed / states}
    return result
