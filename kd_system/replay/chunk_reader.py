"""Reading chunks back: decode (replay/codec.py, which never unpickles), check the arrays are a
LabelledStates, and skip what fails, counted. One bad chunk (a torn write, a flipped bit, a pickle
someone planted) must not end a run; a store returning mostly garbage must."""
from __future__ import annotations

from dataclasses import fields

from kd_system.errors import CorruptChunkError
from kd_system.replay.codec import decode_chunk
from kd_system.types import LabelledStates

ARRAYS = tuple(f.name for f in fields(LabelledStates))
MIN_READS_FOR_SHARE = 100  # the share is judged over enough reads that one early bad chunk is not 100%


class ChunkReader:
    def __init__(self, run_id: str, max_corrupt_share: float):
        self.run_id, self.max_corrupt_share = run_id, max_corrupt_share
        self.chunks_read = 0  # chunks decoded through this reader ...
        self.corrupt_chunks = 0  # ... and those that failed to, skipped

    def read(self, blob: bytes) -> LabelledStates | None:
        """The chunk's states, or None for a corrupt chunk; raises once too many were corrupt."""
        self.chunks_read += 1
        try:
            return self.states_in(blob)
        except CorruptChunkError as exc:
            self.corrupt_chunks += 1
            share = self.corrupt_chunks / self.chunks_read
            if self.chunks_read >= MIN_READS_FOR_SHARE and share > self.max_corrupt_share:
                raise CorruptChunkError(f"{self.corrupt_chunks} of {self.chunks_read} replay chunks read in run "
                                        f"{self.run_id!r} failed to decode ({share:.1%}, above "
                                        f"store.max_corrupt_share {self.max_corrupt_share:g}); the last: "
                                        f"{exc}") from None
            return None

    def states_in(self, blob: bytes) -> LabelledStates:
        arrays = decode_chunk(blob)[1]
        if set(arrays) != set(ARRAYS) or any(a.ndim == 0 for a in arrays.values()):
            raise CorruptChunkError(f"corrupt replay chunk in run {self.run_id!r}: arrays "
                                    f"{sorted(arrays)}, expected {', '.join(ARRAYS)} with a state axis; "
                                    "clear the run's namespace or start a new run")
        try:
            return LabelledStates(**arrays)
        except ValueError as exc:
            raise CorruptChunkError(f"corrupt replay chunk in run {self.run_id!r}: {exc}; "
                                    "clear the run's namespace or start a new run") from None
