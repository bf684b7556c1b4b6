"""Steady-state rates: run untimed for a warm-up (first forwards, caches, allocator), then count
what a loop gets done in a timed window. Also a scoped torch thread count, since several
components (Collector, Learner) set the process-wide one in their constructors."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch


def steady_rate(step: Callable[[], int], warmup_s: float, window_s: float) -> float:
    """Units per second of ``step()`` (which returns the units it did) over ``window_s`` seconds,
    after ``warmup_s`` seconds of untimed calls."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        step()
    units, start = 0, time.perf_counter()
    while True:
        units += step()
        elapsed = time.perf_counter() - start
        if elapsed >= window_s:
            return units / elapsed


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op torch threads, then put the caller's count back."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
