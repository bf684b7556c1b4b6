"""Actor path: labelled states/s of one real collector (Ray actor writing to the real store)
against (a) the in-process ideal, the collector's own labelling loop (same envs, overlap,
batched teacher forward and acting rule) with no Ray, Redis or chunking, and (b) a naive loop, one env, a batch-1 forward and one
Redis SET of the raw state per step."""
from __future__ import annotations

from typing import Callable

import numpy as np
import redis

from kd_system.actors.behaviour import make_acting_policy
from kd_system.envs.make import make_env
from kd_system.policies.files import FrozenPolicy
from kd_system.actors.labelling import LabellingLoop
from kd_system.launch.topology import collector_settings
from kd_system.bench.context import BenchContext, clear_namespace
from kd_system.bench.ray_collectors import measure_collectors, start_collectors, stop_collectors
from kd_system.bench.timing import steady_rate, torch_threads

NAIVE_KEYS = 4_096  # the naive loop overwrites a ring of keys: Redis memory stays bounded (~115 MB for Atari)


def ray_actor_rate(ctx: BenchContext) -> dict:
    address = ctx.address("actor")
    collectors = start_collectors(ctx.config, ctx.prepared, address, 1)
    try:
        return measure_collectors(collectors, ctx.options.warmup_s, ctx.options.seconds)
    finally:
        stop_collectors(collectors)
        clear_namespace(address)


def ideal_rate(ctx: BenchContext) -> float:
    """The collector's own labelling loop (same env groups, overlap and batched forward), in-process."""
    settings = collector_settings(ctx.config, 0)
    with torch_threads(ctx.threads):
        teacher = FrozenPolicy.from_bundle(ctx.teacher.bundle)
        acting = make_acting_policy("teacher", settings.epsilon, ctx.spaces.num_actions, settings.seed)
        loop = LabellingLoop(ctx.env_id, ctx.num_envs, settings.seed, teacher, acting, groups=settings.env_groups)

        def step() -> int:
            return len(loop.step()[2])

        try:
            return steady_rate(step, ctx.options.warmup_s, ctx.options.seconds)
        finally:
            loop.close()


def _naive_step(ctx: BenchContext, client: redis.Redis, prefix: str) -> Callable[[], int]:
    settings = collector_settings(ctx.config, 0)
    env = make_env(ctx.env_id)
    teacher = FrozenPolicy.from_bundle(ctx.teacher.bundle)
    acting = make_acting_policy("teacher", settings.epsilon, ctx.spaces.num_actions, settings.seed)
    obs = env.reset(seed=settings.seed)[0]
    count = 0

    def step() -> int:
        nonlocal obs, count
        batch = obs[None]
        outputs = teacher.outputs(batch)
        action = acting.select(batch, outputs).astype(np.int32)
        client.set(f"{prefix}{count % NAIVE_KEYS}", batch.tobytes() + outputs.tobytes() + action.tobytes())
        count += 1
        obs, _, terminated, truncated, _ = env.step(int(action[0]))
        if terminated or truncated:
            obs = env.reset()[0]
        return 1

    return step


def naive_rate(ctx: BenchContext) -> float:
    address = ctx.address("naive")
    client = redis.Redis.from_url(address.url)
    try:
        with torch_threads(ctx.threads):
            step = _naive_step(ctx, client, f"kd:{address.run_id}:state:")  # under the run's prefix: clear() removes it
            return steady_rate(step, ctx.options.warmup_s, ctx.options.seconds)
    finally:
        client.close()
        clear_namespace(address)


def run_actor_path(ctx: BenchContext, log: Callable[[str], None]) -> dict:
    log(f"actor path: 1 collector as a Ray actor, {ctx.num_envs} envs, {ctx.threads} torch threads, "
        f"{ctx.options.seconds:g} s after {ctx.options.warmup_s:g} s warm-up ...")
    actor = ray_actor_rate(ctx)
    log(f"actor path: {actor['states_per_s']:,.0f} states/s")
    log("actor path: in-process ideal (same vector env, batched teacher, no Ray/Redis) ...")
    ideal = ideal_rate(ctx)
    log(f"actor path: ideal {ideal:,.0f} states/s")
    log("actor path: naive loop (one env, batch-1 teacher, one Redis SET per state) ...")
    naive = naive_rate(ctx)
    log(f"actor path: naive {naive:,.0f} states/s")
    return {"actor_states_per_s": actor["states_per_s"], "ideal_states_per_s": ideal, "naive_states_per_s": naive,
            "actor_vs_ideal": actor["states_per_s"] / ideal, "actor_vs_naive": actor["states_per_s"] / naive,
            "actor_time_fractions": actor["time_fractions"], "actor_window_s": actor["window_s"],
            "num_envs": ctx.num_envs, "torch_threads": ctx.threads}
