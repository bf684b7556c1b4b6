"""Real collectors as Ray actors, made the way a run makes them (topology.make_collector), and
their steady-state rate: counters are read after a warm-up call (which also waits out actor
start-up: imports, ROM loads, first forwards) and again at the end of the window."""
from __future__ import annotations

import time
from typing import Any

import ray

from kd_system.bench.host_cpu import idle_fraction, read_cpu_times, steal_fraction
from kd_system.errors import KDError
from kd_system.launch.recovery import ACTOR_CALL_S
from kd_system.launch.preparation import Prepared
from kd_system.config import RunConfig
from kd_system.replay.connection import StoreAddress
from kd_system.launch.topology import make_collector

TIMED_PARTS = ("env", "teacher", "store")  # the collector's time_*_s counters
SCALING_ACTORS = (1, 2, 4)


def actor_cpus() -> float:
    """Each collector's CPU request: small enough that the largest scaling step fits at once."""
    return ray.cluster_resources().get("CPU", 1.0) / max(SCALING_ACTORS)


def start_collectors(config: RunConfig, prepared: Prepared, address: StoreAddress, count: int) -> list[Any]:
    return [make_collector(config, actor_id, 0, prepared, [address]) for actor_id in range(count)]


def stop_collectors(collectors: list[Any]) -> None:
    for collector in collectors:
        try:
            ray.kill(collector, no_restart=True)
        except Exception:  # already gone: nothing to stop
            pass


def _get(refs: Any) -> Any:
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, KDError):
            raise cause from None
        raise
    except ray.exceptions.RayActorError as exc:
        raise KDError(f"a benchmark collector died ({type(exc).__name__}); see the Ray logs under /tmp/ray") from None


def measure_collectors(collectors: list[Any], warmup_s: float, window_s: float) -> dict:
    """States written per second by all collectors together over the window, called as the head
    calls them (one ``collect`` of at most ACTOR_CALL_S in flight per actor), so the per-call
    Ray round trips a run pays are inside the window too."""
    before = _get([c.collect.remote(warmup_s) for c in collectors])
    after = list(before)
    cpu_before = read_cpu_times()
    start = time.perf_counter()

    def call(index: int) -> Any:
        remaining = window_s - (time.perf_counter() - start)
        return collectors[index].collect.remote(min(ACTOR_CALL_S, max(remaining, 0.01)))

    pending = {call(i): i for i in range(len(collectors))}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index = pending.pop(ready[0])
        after[index] = _get(ready[0])
        if time.perf_counter() - start < window_s:
            pending[call(index)] = index
    elapsed = time.perf_counter() - start
    cpu_after = read_cpu_times()
    host_idle, host_steal = idle_fraction(cpu_before, cpu_after), steal_fraction(cpu_before, cpu_after)
    states = sum(a.states_written - b.states_written for a, b in zip(after, before))
    # Written states come a whole chunk (256) at a time per collector, labelled ones one env step at a
    # time: over a short window the labelled count is the finer measure of the same steady rate.
    labelled = sum(a.env_steps - b.env_steps for a, b in zip(after, before))
    busy = {part: sum(getattr(a, f"time_{part}_s") - getattr(b, f"time_{part}_s") for a, b in zip(after, before))
            / (elapsed * len(collectors)) for part in TIMED_PARTS}
    return {"states_per_s": states / elapsed, "states": states, "window_s": elapsed,
            "labelled_states_per_s": labelled / elapsed,
            "labelled_states_per_s_by_collector": [(a.env_steps - b.env_steps) / elapsed for a, b in zip(after, before)],
            "time_fractions": {**busy, "other": max(0.0, 1.0 - sum(busy.values()))},
            # idle cores would mean a scheduling gap; none means each state costs more than alone
            "host_idle_fraction": host_idle, "host_steal_fraction": host_steal}
