"""Background threads that keep decoded, tensor-ready batches waiting for the learner, so its
update loop never blocks on Redis round trips or chunk decoding (both release the GIL).

The replay table's rate limiter decides when a batch may be drawn; a batch waiting here has
already been counted as sampled, so the learner is never more than ``depth`` batches ahead of
what the limiter allowed."""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from kd_system.replay.pool import DecodedPool
from kd_system.replay.table import ReplayTable

SAMPLE_WAIT_S = 0.1  # a sample call returns this often while held, so close() stops the thread promptly


class Prefetcher:
    def __init__(self, table: ReplayTable, batch_size: int, chunks_per_sample: int, depth: int,
                 num_threads: int, device: torch.device, seed: int, pool: tuple[int, float] | None = None):
        self.table = table
        self.pool = pool  # (chunks, refresh per batch): each thread keeps its own DecodedPool
        self.batch_size = batch_size
        self.chunks_per_sample = chunks_per_sample
        self.device = device
        self.pin = device.type == "cuda"
        self.batches: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._fill, args=(seed + i,), daemon=True, name=f"prefetch-{i}")
                         for i in range(num_threads)]
        for thread in self._threads:
            thread.start()

    def _fill(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        pool = DecodedPool(*self.pool) if self.pool else None
        while not self._stop.is_set():
            try:
                sample = self.table.sample(self.batch_size, rng, self.chunks_per_sample, timeout_s=SAMPLE_WAIT_S,
                                           pool=pool)
                if sample is None:  # data still short, or the limiter holds the learner back
                    continue
                batch = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in sample.arrays().items()}
                if self.pin:
                    batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
            except Exception as exc:  # surfaced in the learner's thread by get()
                batch = exc
            while not self._stop.is_set():
                try:
                    self.batches.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(batch, Exception):
                return

    def get(self, timeout_s: float = 30.0) -> dict[str, torch.Tensor] | None:
        """The next batch on the learner's device, or None if none came within ``timeout_s``."""
        try:
            batch = self.batches.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return None
        if isinstance(batch, Exception):
            raise batch
        return {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
