"""Paired rounds: the ceiling and the system timed back to back, so their ratio is not set by when
each was measured.

The ceiling section sweeps layouts first and the system section runs minutes later, after Ray has
started. On a shared VM the same configuration measured 1,500-2,550 states/s within an hour, so a
ratio of a system window to ceiling windows taken minutes earlier moves by ±0.1 on its own. And the
sweeps keep the best of many noisy windows (9 env layouts, 3-6 forward layouts per engine, 1-2
collector counts), which favours whichever side had more draws.

So after both sections, each of ``--rounds`` rounds re-times, per engine and at the layouts the
sweeps chose: the raw env and the raw forward (both in the ceiling's own worker processes, kept
alive), then the system (fresh collectors at the best count, as a run makes them), then the raw
pair again. The round's ceiling takes both raw pairs (their mean time per state), so a drift in the
machine's speed during the round moves both sides alike. (On 2026-12-07 here the raw env read
2,600 and 4,600 steps/s in windows a minute apart.)
The headline ratios are the medians of the per-round ratios: the lower middle one for an even count,
so that each is one round's own ratio, and the rates shown with system/ceiling are that round's.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from typing import Any, Callable

import ray

from kd_system.bench.ceiling import env_jobs, forward_jobs, forward_states
from kd_system.bench.context import BenchContext
from kd_system.bench.engine_choice import REFERENCE
from kd_system.bench.scaling import collectors_rate


def _round(ctx: BenchContext, name: str, ceiling: dict, count: int, cpus: float, states: Any,
           tag: str) -> dict[str, float]:
    """One engine's raw env and forward windows, its system window, and the raw pair again."""
    env, forward = ceiling["env"], ceiling["engines"][name]
    workers = ctx.core_workers(max(env["processes"], forward["best_processes"]))
    engine = ctx.teacher_engines(lambda line: None)[name]
    prepared = replace(ctx.prepared, tasks=(replace(ctx.prepared.tasks[0], engine=engine),))
    warmup, window = ctx.options.warmup_s, ctx.options.seconds

    def raw() -> tuple[float, float]:
        steps = workers.rate(env_jobs(ctx, env["num_envs"], env["processes"], env["threads_per_process"]), warmup, window)
        forwards = workers.rate(forward_jobs(engine.bundle, states, forward["best_batch"], forward["best_processes"],
                                             forward["best_threads"]), warmup, window)
        return steps, forwards

    before = raw()
    system = collectors_rate(ctx, prepared, count, tag, cpus / count)
    after = raw()
    # rates averaged as times per state (harmonic means), as the ceiling itself adds them
    steps, forwards = (2.0 / (1.0 / a + 1.0 / b) for a, b in zip(before, after))
    bound = 1.0 / (1.0 / steps + 1.0 / forwards)
    return {"env_steps_per_s": steps, "forward_states_per_s": forwards, "ceiling_states_per_s": bound,
            "ceiling_before": 1.0 / sum(1.0 / r for r in before), "ceiling_after": 1.0 / sum(1.0 / r for r in after),
            "system_states_per_s": system["labelled_states_per_s"],
            "system_vs_ceiling": system["labelled_states_per_s"] / bound,
            "system_host_idle": system["host_idle_fraction"]}


def median_round(rounds: list[dict[str, float]]) -> int:
    """The index of the round whose system/ceiling is the median (the lower middle one for an even
    count): its rates make its ratio, which separate medians of each rate would not."""
    ratio = statistics.median_low(r["system_vs_ceiling"] for r in rounds)
    return next(i for i, r in enumerate(rounds) if r["system_vs_ceiling"] == ratio)


def run_paired(ctx: BenchContext, ceiling: dict, system: dict, log: Callable[[str], None]) -> dict[str, Any]:
    rounds_asked = ctx.options.rounds
    states = forward_states(ctx)
    cpus = ray.cluster_resources().get("CPU", float(ctx.cores))
    names = list(system["engines"])
    log(f"paired: {rounds_asked} round(s) of env, forward and system windows back to back, per engine, "
        f"at the sweeps' best layouts ...")
    by_engine: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for index in range(rounds_asked):
        for name in names:
            count = system["engines"][name]["collectors"]
            measured = _round(ctx, name, ceiling, count, cpus, states, f"paired-{name}-{index}")
            by_engine[name].append(measured)
            log(f"paired: round {index + 1}, {name}: system {measured['system_states_per_s']:,.0f} / ceiling "
                f"{measured['ceiling_states_per_s']:,.0f} = {measured['system_vs_ceiling']:.2f} "
                f"(env {measured['env_steps_per_s']:,.0f}, forward {measured['forward_states_per_s']:,.0f}; ceiling "
                f"{measured['ceiling_before']:,.0f} before the system, {measured['ceiling_after']:,.0f} after)")
    torch = by_engine[REFERENCE]
    engines = {}
    for name, rounds in by_engine.items():
        mid = rounds[median_round(rounds)]
        engines[name] = {
            "rounds": rounds, "median_round": median_round(rounds) + 1,
            **{key: mid[key] for key in ("system_vs_ceiling", "ceiling_states_per_s", "system_states_per_s")},
            # per-round ratios against torch's windows of the same round, then their (lower) median
            "forward_speedup": statistics.median_low(r["forward_states_per_s"] / t["forward_states_per_s"]
                                                     for r, t in zip(rounds, torch)),
            "system_speedup": statistics.median_low(r["system_states_per_s"] / t["system_states_per_s"]
                                                    for r, t in zip(rounds, torch))}
    return {"rounds": rounds_asked, "engines": engines,
            "note": "per engine and round: env, forward and system windows back to back at the sweeps' best "
                    "layouts, the raw pair timed before and after the system; headline ratios are medians of the per-round ratios (the "
                    "lower middle one for an even count), and system/ceiling's rates are its median round's"}
