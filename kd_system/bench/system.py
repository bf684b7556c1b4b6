"""``--only system``: the labelled states/s of the whole system on this machine, per teacher engine:
real collectors as Ray actors (made as a run makes them) labelling with the engine into the real
Redis store, as many as the machine holds.

How many is that? Each collector reserves the cluster's CPUs divided by their count, so all of them
fit at once; the counts tried are one per core and two per core (``--collectors`` sets others). Two
per core lets one collector's emulator step while another's teacher runs, which the issue's scaling
figures (1: 927, 2: 1,022, 4: 1,050 on 2 cores) say still gains; the best count is the system's figure.
The collectors' own time counters (env, teacher, store, other) are kept for where the time goes.
The rate counts states labelled (env steps, each labelled by the teacher in the same loop that writes
the chunks, so the store's time is inside the window), not states written: those come a 256-state
chunk at a time per collector, too coarse for a window of a few seconds; both are recorded.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import ray

from kd_system.bench.context import BenchContext
from kd_system.bench.engine_choice import fidelity_record
from kd_system.bench.scaling import collectors_rate

COLLECTORS_PER_CORE = (1, 2)


def collector_counts(ctx: BenchContext) -> tuple[int, ...]:
    return ctx.options.collectors or tuple(sorted({per_core * ctx.cores for per_core in COLLECTORS_PER_CORE}))


def run_system(ctx: BenchContext, log: Callable[[str], None]) -> dict[str, Any]:
    engines = ctx.teacher_engines(log)
    counts = collector_counts(ctx)
    cpus = ray.cluster_resources().get("CPU", float(ctx.cores))
    figures = {}
    for name, engine in engines.items():
        # the run's own path: the prepared task carries the engine, make_collector hands its bundle over
        prepared = replace(ctx.prepared, tasks=(replace(ctx.prepared.tasks[0], engine=engine),))
        by_count = {}
        for count in counts:
            log(f"system: {name}: {count} collector(s) of {ctx.num_envs} envs, {cpus / count:g} CPUs each ...")
            by_count[str(count)] = collectors_rate(ctx, prepared, count, f"system-{name}-{count}", cpus / count)
            log(f"system: {name}: {count} collector(s): {by_count[str(count)]['labelled_states_per_s']:,.0f} "
                f"labelled states/s ({by_count[str(count)]['states_per_s']:,.0f} written)")
        best = max(by_count, key=lambda c: by_count[c]["labelled_states_per_s"])
        figures[name] = {"states_per_s": by_count[best]["labelled_states_per_s"], "collectors": int(best),
                         "written_states_per_s": by_count[best]["states_per_s"],
                         "time_fractions": by_count[best]["time_fractions"],
                         "host_idle_fraction": by_count[best]["host_idle_fraction"],
                         "host_steal_fraction": by_count[best]["host_steal_fraction"],
                         "by_collectors": {c: f["labelled_states_per_s"] for c, f in by_count.items()},
                         **fidelity_record(engine, ctx.agreement_floor)}
    return {"engines": figures, "collector_counts": list(counts), "num_envs_per_actor": ctx.num_envs,
            "cores": ctx.cores, "system_states_per_s": figures["torch"]["states_per_s"]}
