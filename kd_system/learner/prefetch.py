"""Background threads that keep decoded, tensor-ready batches waiting for the learner, so its
update loop never blocks on Redis round trips or lz4 decoding (both release the GIL)."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from kd_system.replay.store import ReplayStore


class Prefetcher:
    def __init__(self, store: ReplayStore, batch_size: int, chunks_per_sample: int, depth: int,
                 num_threads: int, device: torch.device, seed: int):
        self.store = store
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
        while not self._stop.is_set():
            try:
                sample = self.store.sample(self.batch_size, rng, self.chunks_per_sample)
                if sample is None:  # store still empty
                    time.sleep(0.05)
                    continue
                batch = {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in sample.items()}
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

    def get(self, timeout_s: float = 30.0) -> dict[str, torch.Tensor]:
        batch = self.batches.get(timeout=timeout_s)
        if isinstance(batch, Exception):
            raise batch
        return {name: tensor.to(self.device, non_blocking=True) for name, tensor in batch.items()}

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
