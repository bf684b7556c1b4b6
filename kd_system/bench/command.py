"""``kd-system bench``: run the chosen sections, print the side-by-side table, optionally write JSON.

The sections that need no Ray (store, learner, inference) run first, before Ray's own processes start
taking CPU; the table lists sections in a fixed order whatever order they ran in.
"""
from __future__ import annotations

import argparse
import os
import platform
from typing import Callable

from kd_system.errors import ConfigError
from kd_system.metrics import say
from kd_system.bench.context import DEFAULT_ENV, DEFAULT_ROUNDS, DEFAULT_SECTIONS, SECTIONS, BenchContext, BenchOptions, parse_only

# ceiling times raw env steps and forwards in its own worker processes: before Ray starts, whose
# processes would take CPU from it; system (collectors as Ray actors) runs last. nodes starts and
# shuts down multi-node clusters of its own (ray.cluster_utils), so it runs while no Ray is connected:
# after ceiling, before the RAY_SECTIONS start the local Ray they share.
RUN_ORDER = ("store", "learner", "feed", "inference", "ceiling", "nodes", "actor", "scaling", "system")
RAY_SECTIONS = {"actor", "scaling", "system"}  # share one local Ray, started before the first of them
REDIS_SECTIONS = {"actor", "store", "learner", "feed", "scaling", "system", "nodes"}  # inference, ceiling: in-process only
CHUNK_SECTIONS = {"store", "learner", "feed"}  # fed from chunks a collector made up front


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _section_runner(name: str) -> Callable:
    if name == "actor":
        from kd_system.bench.actor_path import run_actor_path
        return run_actor_path
    if name == "store":
        from kd_system.bench.store_bench import run_store
        return run_store
    if name == "learner":
        from kd_system.bench.learner_bench import run_learner
        return run_learner
    if name == "inference":
        from kd_system.bench.inference import run_inference
        return run_inference
    if name == "feed":
        from kd_system.bench.feed import run_feed
        return run_feed
    if name == "ceiling":
        from kd_system.bench.ceiling import run_ceiling
        return run_ceiling
    if name == "system":
        from kd_system.bench.system import run_system
        return run_system
    if name == "nodes":
        from kd_system.bench.nodes import run_nodes
        return run_nodes
    from kd_system.bench.scaling import run_scaling
    return run_scaling


def run_bench(options: BenchOptions, log: Callable[[str], None] = say) -> dict:
    """Every figure of the chosen sections, with ratios, targets and machine facts (the JSON)."""
    import ray
    import torch

    from kd_system.launch.topology import connect_ray
    from kd_system.bench.engine_choice import headline
    from kd_system.bench.report import check_targets, store_vs_learner

    load_start = os.getloadavg()[0]
    ctx = BenchContext(options)
    if set(options.only) != {"inference"}:  # the inference section measures its own fixed cases
        log(f"bench: {ctx.env_id}, teacher {ctx.teacher.source} ({ctx.teacher.params:,} params), "
            f"sections {','.join(options.only)}")
    results: dict = {"setup": {
        "env_id": ctx.env_id, "teacher": ctx.teacher.source, "teacher_params": ctx.teacher.params,
        "teacher_network": ctx.teacher.bundle.spec.network, "num_envs": ctx.num_envs, "seconds": options.seconds,
        "warmup_s": options.warmup_s, "chunk_states": ctx.chunk_states, "sections": list(options.only),
        "overrides": list(options.overrides), "rounds": options.rounds}}
    started_ray = False
    try:
        if REDIS_SECTIONS & set(options.only):
            ctx.start_redis()
        if CHUNK_SECTIONS & set(options.only):
            log(f"bench: collecting labelled chunks of {ctx.chunk_states} states as a collector makes them ...")
            ctx.labelled_chunks()
        for name in (n for n in RUN_ORDER if n in options.only):
            if name in RAY_SECTIONS and not ray.is_initialized():
                log(f"bench: starting a local Ray with {ctx.cores} CPUs ...")
                started_ray = connect_ray(None, num_cpus=ctx.cores, quiet=True)  # a run's Ray, with these cores
            results[name] = _section_runner(name)(ctx, log)
        if {"ceiling", "system"} <= set(results) and options.rounds:
            from kd_system.bench.paired import run_paired
            results["paired"] = run_paired(ctx, results["ceiling"], results["system"], log)
    finally:
        if started_ray:
            ray.shutdown()
        ctx.close()
    both = store_vs_learner(results)
    if both is not None:
        results["store_vs_learner"] = both
    top: dict = {}  # the headline figures, at the top level of the JSON
    if {"ceiling", "system"} & set(results):
        top = headline(results.get("ceiling"), results.get("system"), ctx.agreement_floor, results.get("paired"))
        if {"ceiling", "system"} <= set(results):
            results["vs_ceiling"] = {key: value for key, value in top.items() if key not in ("engine", "engine_agreement_floor")}
    if "feed" in results:
        top |= {key: results["feed"][key] for key in ("store_sampled_states_per_s", "fast_learner_fed_ratio")}
    results["targets"], results["meets"] = check_targets(results)
    results["machine"] = {"cores": ctx.cores, "cpu": _cpu_model(), "torch_version": torch.__version__,
                          "torch_threads": ctx.threads, "load_average_start": load_start,
                          "load_average_end": os.getloadavg()[0]}
    ordered = {key: results[key] for key in ("setup", *SECTIONS, "paired", "store_vs_learner", "vs_ceiling")
               if key in results}
    return top | ordered | {key: results[key] for key in ("targets", "meets", "machine")}


def parse_counts(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"--collectors {text!r}: give comma-separated counts such as 2,4") from None


def _bench(args: argparse.Namespace) -> int:
    from kd_system.bench.engine_choice import parse_engines
    from kd_system.bench.report import render, write_json

    options = BenchOptions(env_id=args.env, teacher=args.teacher, seconds=args.seconds, num_envs=args.num_envs,
                           only=parse_only(args.only), json_path=args.json, redis_url=args.redis_url,
                           torch_threads=args.torch_threads, student=args.student,
                           engines=parse_engines(args.engines), collectors=parse_counts(args.collectors),
                           overrides=tuple(args.set), rounds=args.rounds)
    results = run_bench(options)
    print(render(results), flush=True)
    if args.json:
        write_json(results, args.json)
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("bench", help="throughput of actors, store, learner input and actor scaling, "
                                            "side by side with their no-overhead baselines; inference "
                                            "latency of teacher and student per engine; the hardware ceiling "
                                            "and the whole system against it, per teacher engine; collectors on "
                                            "1, 2 and 4 Ray nodes sharing this machine, and how many nodes one Redis serves")
    p.add_argument("--env", default=DEFAULT_ENV, help=f"env id (default {DEFAULT_ENV}; classic ids such as CartPole-v1 work too)")
    p.add_argument("--teacher", metavar="PATH", help="teacher checkpoint directory (default: the shipped one for the env; "
                                                     "for Atari without one, a random Nature-CNN: throughput ignores weights)")
    p.add_argument("--seconds", type=float, default=5.0, help="each timed window, after a warm-up of half that (at most 2 s); "
                                                           "inference: a fifth of it per engine")
    p.add_argument("--num-envs", type=int, help="envs per actor (default: a run's, actors.envs_per_actor auto: 64 for Atari, 8 otherwise)")
    p.add_argument("--only", metavar="SECTIONS", help=f"comma-separated subset of {','.join(SECTIONS)} "
                                                    f"(default: {','.join(DEFAULT_SECTIONS)})")
    p.add_argument("--json", metavar="PATH", help="also write every figure to this JSON file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run's config for the measured components, e.g. learner.precision=fp32 "
                        "(repeatable; env.id, actors.envs_per_actor and actors.torch_threads come from the options)")
    p.add_argument("--redis-url", help="use this Redis (default: start a private redis-server on a free port)")
    p.add_argument("--torch-threads", type=int, help="torch threads of the single actor, the ideal and the naive "
                                                     "loop (default: actors.torch_threads, 1; scaling divides them among actors)")
    p.add_argument("--student", metavar="DIR", help="inference section: a student checkpoint of CartPole-v1 or "
                                                    "ALE/Breakout-v5 to time instead of a random-init one")
    p.add_argument("--engines", metavar="NAMES", help="ceiling and system: teacher engines to measure, comma-separated "
                                                     "torch,torchscript,onnxruntime,onnxruntime-int8 or all (default: torch "
                                                     "only; fp32 torch is always measured, the baseline of the others)")
    p.add_argument("--collectors", metavar="COUNTS", help="system: collector counts to try, the best is the system's figure "
                                                         "(default: one and two per core)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"ceiling and system together: after both sweeps, this many paired rounds time, per engine at "
                        f"the chosen layouts, the raw env and forward, the system, and the raw pair again, and the headline ratios "
                        f"are the medians of the per-round ratios (default {DEFAULT_ROUNDS}; 0: the sweeps' own ratios)")
    p.set_defaults(func=_bench)
