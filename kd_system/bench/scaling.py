"""Scaling: labelled states/s of 1, 2 and 4 real collectors writing to one store at once. Each
collector gets the machine's torch threads divided among them (at least one), as a run with that
many actors per node would be configured; on a machine with few cores the total cannot grow
much, and the report says how many cores there were."""
from __future__ import annotations

from typing import Callable

from kd_system.bench.context import BenchContext, clear_namespace
from kd_system.bench.ray_collectors import SCALING_ACTORS, actor_cpus, measure_collectors, start_collectors, stop_collectors
from kd_system.launch.preparation import Prepared


def collectors_rate(ctx: BenchContext, prepared: Prepared, count: int, name: str, num_cpus: float) -> dict:
    """``count`` collectors labelling with ``prepared``'s teacher (or its engine), each with its
    share of the torch threads and ``num_cpus`` of Ray's CPUs, into a namespace of their own."""
    per_actor = max(1, ctx.threads // count)
    config = ctx.config.model_copy(update={"actors": ctx.config.actors.model_copy(
        update={"torch_threads": per_actor, "num_cpus": num_cpus})})
    address = ctx.address(name)
    collectors = start_collectors(config, prepared, address, count)
    try:
        return {**measure_collectors(collectors, ctx.options.warmup_s, ctx.options.seconds),
                "torch_threads_per_actor": per_actor}
    finally:
        stop_collectors(collectors)
        clear_namespace(address)


def run_scaling(ctx: BenchContext, log: Callable[[str], None]) -> dict:
    rates, threads = [], []
    for count in SCALING_ACTORS:
        log(f"scaling: {count} collector(s), {ctx.num_envs} envs and {max(1, ctx.threads // count)} torch thread(s) each ...")
        measured = collectors_rate(ctx, ctx.prepared, count, f"scaling-{count}", actor_cpus())
        rates.append(measured["states_per_s"])
        threads.append(measured["torch_threads_per_actor"])
        log(f"scaling: {count} collector(s): {rates[-1]:,.0f} states/s")
    return {"actors": list(SCALING_ACTORS), "states_per_s": rates, "vs_one_actor": [r / rates[0] for r in rates],
            "torch_threads_per_actor": threads, "cores": ctx.cores, "num_envs_per_actor": ctx.num_envs}
