"""A batch from decoded chunks: states drawn uniformly with replacement across all of them, copied
straight from each chunk into the batch (no concatenation of the chunks first)."""
from __future__ import annotations

import numpy as np

from kd_system.errors import StoreError
from kd_system.replay.chunk_reader import ARRAYS
from kd_system.types import LabelledStates


def gather(parts: list[LabelledStates], batch_size: int, rng: np.random.Generator, run_id: str) -> LabelledStates:
    starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    picks = rng.integers(0, starts[-1], size=batch_size)
    owner = np.searchsorted(starts, picks, side="right") - 1
    gathered = {}
    for name in ARRAYS:
        first = getattr(parts[0], name)
        out = np.empty((batch_size, *first.shape[1:]), dtype=first.dtype)
        for i, part in enumerate(parts):
            array = getattr(part, name)
            if array.shape[1:] != first.shape[1:] or array.dtype != first.dtype:
                raise StoreError(f"chunks of run {run_id!r} disagree on array {name!r}: write one layout per run "
                                 "(use a run_id per task)")
            mine = owner == i
            out[mine] = array[picks[mine] - starts[i]]
        gathered[name] = out
    return LabelledStates(**gathered)
