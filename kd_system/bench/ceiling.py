"""``--only ceiling``: what the machine can do, with nothing of ours in the way.

- Raw env steps/s on all cores: the env's own vector env (envs.make.make_vector_env, what the
  collectors step), random actions, no teacher, best of ENV_COUNTS envs and of process layouts. An
  Atari vector (ale-py's AtariVectorEnv) runs its own C++ emulator threads, so one process with a
  thread per core already uses every core; but its step is a barrier (every env answers before it
  returns), and one or two single-threaded processes per core, whose barriers do not line up, step
  more (on the 2-core machine, 2026-12-07: up to about 20% more). All three layouts are tried, so the
  ceiling is not set by a layout the collectors do not use. A Gymnasium SyncVectorEnv is Python
  under the GIL, one core, so one process per core is stepped at once and their rates summed.
- Raw teacher forwards/s on all cores, per teacher engine: ``FrozenPolicy.outputs`` (the actors'
  call, numpy in and out) on real observations, best of BATCHES and of two layouts: one process with
  a torch thread per core, and one single-threaded process per core (the actors' own layout).
  onnxruntime sessions are one intra-op thread (policies/opaque.py), so they get the second only.
- The ceiling: both sharing the cores perfectly, 1 / (1/env + 1/forward) labelled states/s.

Every rate is timed in spawned worker processes (bench/core_workers.py), so the parent's own
threads, Redis client and Ray (not started yet) take no part. They stay up until the bench ends:
the paired rounds (bench/paired.py) time the chosen layouts again in them, beside the system.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from kd_system.bench.core_workers import CoreWorkers, Job
from kd_system.bench.engine_choice import fidelity_record
from kd_system.envs.make import make_vector_env, vector_env_threads_itself
from kd_system.export.records import input_dtype
from kd_system.policies.files import FrozenPolicy, PolicyBundle
from kd_system.teachers.imports.states import env_states

if TYPE_CHECKING:
    from kd_system.bench.context import BenchContext

ENV_COUNTS = (8, 16, 32)  # per process
BATCHES = (8, 32, 128)
FORWARD_STATES = 256  # real observations the forwards cycle through (random actions, seed 0)
ENV_SEED = 0


def env_loop(env_id: str, num_envs: int, seed: int,
             num_threads: int | None = None) -> tuple[Callable[[], int], Callable[[], None]]:
    """One vector env stepped with random actions (same-step autoreset, as the collectors')."""
    vec = make_vector_env(env_id, num_envs, seed, num_threads)
    vec.reset(seed=seed)
    rng = np.random.default_rng(seed)
    actions = int(vec.single_action_space.n)

    def step() -> int:
        vec.step(rng.integers(0, actions, size=num_envs))
        return num_envs

    return step, vec.close


def forward_loop(bundle: PolicyBundle, states: np.ndarray, batch: int) -> tuple[Callable[[], int], Callable[[], None]]:
    """Batches of real observations through the engine, as an actor's labelling calls it."""
    policy = FrozenPolicy.from_bundle(bundle)
    tiled = np.resize(states, (max(batch, len(states) // batch * batch), *states.shape[1:]))
    feed = itertools.cycle([tiled[i:i + batch] for i in range(0, len(tiled), batch)])

    def step() -> int:
        policy.outputs(next(feed))
        return batch

    return step, lambda: None


def env_layouts(env_id: str, cores: int) -> list[tuple[int, int]]:
    """(processes, emulator threads each) that put every core to work: ale-py's vector threads
    itself (one process of a thread per core, or one or two single-threaded processes per core);
    Gymnasium's does not (one process per core)."""
    if not vector_env_threads_itself(env_id):
        return [(cores, 1)]
    return sorted({(1, cores), (cores, 1), (2 * cores, 1)})


def layouts(bundle: PolicyBundle, cores: int) -> list[tuple[int, int]]:
    """(processes, threads each) for a forward on all cores."""
    single_threaded = bundle.spec.network.get("kind") == "onnx"  # policies/opaque.py: 1 intra-op thread
    return sorted({(cores, 1)} | (set() if single_threaded else {(1, cores)}))


def env_jobs(ctx: BenchContext, count: int, processes: int, threads: int) -> list[Job]:
    """``processes`` vector envs of ``count`` envs, each with ``threads`` emulator threads (ale-py)."""
    threaded = vector_env_threads_itself(ctx.env_id)
    return [Job(env_loop, (ctx.env_id, count, ENV_SEED + 1000 * i, threads if threaded else None))
            for i in range(processes)]


def forward_jobs(bundle: PolicyBundle, states: np.ndarray, batch: int, processes: int, threads: int) -> list[Job]:
    return [Job(forward_loop, (bundle, states, batch), threads) for _ in range(processes)]


def forward_states(ctx: BenchContext) -> np.ndarray:
    """The real observations the forwards cycle through (the same every call: seeded)."""
    return np.ascontiguousarray(env_states(ctx.env_id, FORWARD_STATES, ENV_SEED),
                                dtype=input_dtype(ctx.teacher.bundle.spec))


def measure_env(ctx: BenchContext, workers: CoreWorkers, log: Callable[[str], None]) -> dict[str, Any]:
    rates = {}
    for (processes, threads), count in itertools.product(env_layouts(ctx.env_id, ctx.cores), ENV_COUNTS):
        threads = min(threads, count)  # idle emulator threads only add switching (atari.default_env_threads)
        jobs = env_jobs(ctx, count, processes, threads)
        key = f"{count} envs, {processes} process(es) x {threads} thread(s)"
        rates[key] = {"num_envs": count, "processes": processes, "threads": threads,
                      "steps_per_s": workers.rate(jobs, ctx.options.warmup_s, ctx.options.seconds)}
        log(f"ceiling: env, {key}: {rates[key]['steps_per_s']:,.0f} steps/s")
    best = max(rates.values(), key=lambda r: r["steps_per_s"])
    return {"steps_per_s": best["steps_per_s"], "num_envs": best["num_envs"], "processes": best["processes"],
            "threads_per_process": best["threads"], "by_layout": rates}


def measure_forward(ctx: BenchContext, bundle: PolicyBundle, states: np.ndarray, workers: CoreWorkers,
                    log: Callable[[str], None]) -> dict[str, Any]:
    rates = {}
    for (processes, threads), batch in itertools.product(layouts(bundle, ctx.cores), BATCHES):
        jobs = forward_jobs(bundle, states, batch, processes, threads)
        key = f"batch {batch}, {processes} process(es) x {threads} thread(s)"
        rates[key] = {"batch": batch, "processes": processes, "threads": threads,
                      "states_per_s": workers.rate(jobs, ctx.options.warmup_s, ctx.options.seconds)}
        log(f"ceiling: forward {key}: {rates[key]['states_per_s']:,.0f} states/s")
    best = max(rates.values(), key=lambda r: r["states_per_s"])
    return {"forward_states_per_s": best["states_per_s"], "best_batch": best["batch"],
            "best_processes": best["processes"], "best_threads": best["threads"], "by_layout": rates}


def run_ceiling(ctx: BenchContext, log: Callable[[str], None]) -> dict[str, Any]:
    engines = ctx.teacher_engines(log)
    states = forward_states(ctx)
    most = max(processes for processes, _ in env_layouts(ctx.env_id, ctx.cores) + layouts(ctx.teacher.bundle, ctx.cores))
    log(f"ceiling: {most} worker processes; env {ctx.env_id} at {', '.join(map(str, ENV_COUNTS))} envs, "
        f"forwards of {', '.join(engines)} at batch {', '.join(map(str, BATCHES))}, "
        f"{ctx.options.seconds:g} s windows after {ctx.options.warmup_s:g} s ...")
    workers = ctx.core_workers(most)  # kept until the bench ends: the paired rounds reuse them
    env = measure_env(ctx, workers, log)
    figures = {}
    for name, engine in engines.items():
        forward = measure_forward(ctx, engine.bundle, states, workers, log)
        ceiling = 1.0 / (1.0 / env["steps_per_s"] + 1.0 / forward["forward_states_per_s"])
        figures[name] = {**forward, "ceiling_states_per_s": ceiling, **fidelity_record(engine, ctx.agreement_floor)}
        log(f"ceiling: {name}: {ceiling:,.0f} labelled states/s = 1/(1/{env['steps_per_s']:,.0f} + "
            f"1/{forward['forward_states_per_s']:,.0f})")
    return {"env": env, "engines": figures, "cores": ctx.cores,
            "ceiling_states_per_s": figures["torch"]["ceiling_states_per_s"],
            "note": "ceiling = 1/(1/env + 1/forward): the env and the teacher sharing every core perfectly"}
