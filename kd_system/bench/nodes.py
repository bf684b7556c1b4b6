"""``--only nodes``: scale out on one machine, and on paper. A ``ray.cluster_utils`` cluster of 1, 2
and 4 nodes shares this machine's cores (each node offers cores / nodes CPUs, at least one: Ray
takes whole CPU counts per node, so 4 nodes on 2 cores are oversubscribed and say so). Each node
gets one collector per CPU it offers, pinned there through ``actors.ray_resource`` as a run pins
them, all writing to the bench's one Redis. Per node count: labelled states/s in all and per node,
and Redis's side of the same seconds: states written, bytes per state stored and on the wire, MB/s
in, and Redis's own CPU (INFO cpu), less its idle rate (measured while the cluster starts).

From these, ``redis_estimate``: how many nodes like this machine (the 1-node rate) one Redis serves
before its one command thread saturates, or before an assumed 10 Gbit/s link does. Only the
collectors' writes are counted: a learner's sampling reads load the same Redis on top.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
import redis

from kd_system.bench.context import BenchContext, clear_namespace
from kd_system.bench.ray_collectors import measure_collectors, stop_collectors
from kd_system.errors import KDError
from kd_system.launch.topology import WORKER_ENV, make_collector
from kd_system.replay.table import ReplayTable

NODE_COUNTS = (1, 2, 4)
NODE_RESOURCE = "bench_node_{}"  # a custom resource only node i offers: its collectors' ray_resource
NETWORK_GBIT_S = 10.0  # the assumed link into the Redis host (an assumption, not measured here)
REDIS_CORES = 1.0  # Redis runs every command on one thread: one core is its whole budget


@dataclass(frozen=True)
class RedisSample:
    """Redis's counters at one moment: CPU seconds (user + sys, all its threads), bytes received,
    and the states the namespace's collectors had written."""
    t: float
    cpu_s: float
    net_in_bytes: int
    states_written: int


def _sample(client: redis.Redis, table: ReplayTable) -> RedisSample:
    cpu, stats = client.info("cpu"), client.info("stats")
    return RedisSample(time.perf_counter(), float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
                       int(stats["total_net_input_bytes"]), table.stats()["states_written"])


def redis_capacity(node_states_per_s: float, redis_cpu_s_per_state: float | None, wire_bytes_per_state: float,
                   network_gbit_s: float = NETWORK_GBIT_S, redis_cores: float = REDIS_CORES) -> dict:
    """How many actor nodes of ``node_states_per_s`` one Redis serves: its command thread is busy
    ``redis_cpu_s_per_state`` per state written (None: too little to measure, no CPU bound), and
    each state crosses the link as ``wire_bytes_per_state``. The smaller bound decides."""
    link_bytes_per_s = network_gbit_s * 1e9 / 8
    by_network = link_bytes_per_s / (node_states_per_s * wire_bytes_per_state)
    per_node = node_states_per_s * redis_cpu_s_per_state if redis_cpu_s_per_state else None
    by_cpu = redis_cores / per_node if per_node else None
    bounds = {"redis_cpu": by_cpu, "network": by_network}
    bottleneck = min((name for name, value in bounds.items() if value is not None), key=lambda name: bounds[name])
    return {"node_states_per_s": node_states_per_s,
            "redis_cpu_us_per_state": redis_cpu_s_per_state * 1e6 if redis_cpu_s_per_state else None,
            "redis_states_per_s_one_core": redis_cores / redis_cpu_s_per_state if redis_cpu_s_per_state else None,
            "redis_core_fraction_per_node": per_node, "wire_bytes_per_state": wire_bytes_per_state,
            "node_mb_per_s_to_redis": node_states_per_s * wire_bytes_per_state / 1e6,
            "nodes_by_redis_cpu": by_cpu, "nodes_by_network": by_network,
            "redis_nodes_capacity": math.floor(bounds[bottleneck]), "bottleneck": bottleneck}


def _start_cluster(count: int, cpus_per_node: int) -> Any:
    from ray.cluster_utils import Cluster  # imported here: only this section starts nodes of its own

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # as connect_ray: no accelerator juggling
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cpus_per_node, "resources": {NODE_RESOURCE.format(0): 1}, "include_dashboard": False})
    try:
        for index in range(1, count):
            cluster.add_node(num_cpus=cpus_per_node, resources={NODE_RESOURCE.format(index): 1})
        cluster.wait_for_nodes()
        # quiet as a bench's own Ray: workers' output stays in Ray's logs, the table stays readable
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": WORKER_ENV})
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def _node_ids() -> dict[int, str]:
    """Node index -> Ray node id, from the custom resource each node offers."""
    ids = {}
    for node in ray.nodes():
        for name in node["Resources"]:
            if node["Alive"] and name.startswith(NODE_RESOURCE.format("")):
                ids[int(name.removeprefix(NODE_RESOURCE.format("")))] = node["NodeID"]
    return ids


def _one_count(ctx: BenchContext, count: int) -> dict:
    cpus_per_node = max(1, ctx.cores // count)
    per_node = cpus_per_node  # one collector per CPU the node offers
    address = ctx.address(f"nodes-{count}")
    # every step's undo runs even if an earlier one raises (ExitStack), last made first undone
    with contextlib.ExitStack() as undo:
        undo.callback(clear_namespace, address)
        client = redis.Redis.from_url(address.url)
        undo.callback(client.close)
        table = ReplayTable.from_address(address)
        undo.callback(table.close)
        started = time.perf_counter()
        idle_start = _sample(client, table)
        cluster = _start_cluster(count, cpus_per_node)
        undo.callback(cluster.shutdown)
        undo.callback(ray.shutdown)
        cluster_start_s = time.perf_counter() - started
        handles: list[Any] = []
        undo.callback(stop_collectors, handles)
        for index in range(count):
            config = ctx.config.model_copy(update={"actors": ctx.config.actors.model_copy(update={
                "num_cpus": cpus_per_node / per_node, "ray_resource": NODE_RESOURCE.format(index)})})
            # as a run makes them (topology.make_collector), with actor ids, so seeds, unique across nodes
            handles += [make_collector(config, index * per_node + j, 0, ctx.prepared, [address]) for j in range(per_node)]
        # the actors are constructed once they answer; their node is where Ray put them
        placed = ray.get([h.node_id.remote() for h in handles])
        wanted = _node_ids()
        before = _sample(client, table)  # also the end of the idle stretch: no collector has written yet
        measured = measure_collectors(handles, ctx.options.warmup_s, ctx.options.seconds)
        after = _sample(client, table)
        per_actor = measured["labelled_states_per_s_by_collector"]
        stats = table.stats()
    span = after.t - before.t
    idle_rate = (before.cpu_s - idle_start.cpu_s) / (before.t - idle_start.t)
    written = after.states_written - before.states_written
    cpu = after.cpu_s - before.cpu_s
    busy = cpu - idle_rate * span  # Redis's cron ticks on with no client: not a cost of the states
    nodes_rates = [sum(per_actor[i * per_node:(i + 1) * per_node]) for i in range(count)]
    return {"nodes": count, "cpus_per_node": cpus_per_node, "collectors_per_node": per_node,
            "collectors": count * per_node, "oversubscribed": count * cpus_per_node > ctx.cores,
            "labelled_states_per_s": measured["labelled_states_per_s"], "labelled_states_per_s_per_node": nodes_rates,
            "per_node_mean_states_per_s": measured["labelled_states_per_s"] / count,
            "collector_written_states_per_s": measured["states_per_s"], "time_fractions": measured["time_fractions"],
            "window_s": measured["window_s"],
            "redis_span_s": span, "redis_written_states": written, "redis_written_states_per_s": written / span,
            "redis_in_mb_per_s": (after.net_in_bytes - before.net_in_bytes) / span / 1e6,
            "wire_bytes_per_state": (after.net_in_bytes - before.net_in_bytes) / written if written else None,
            "bytes_per_state": stats["bytes_stored"] / stats["states_stored"] if stats["states_stored"] else None,
            "redis_cpu_s": cpu, "redis_core_fraction": cpu / span, "redis_idle_core_fraction": idle_rate,
            "redis_busy_cpu_s": busy, "cluster_start_s": cluster_start_s,
            "node_ids": sorted(set(placed)),
            "placed_as_asked": placed == [wanted.get(i // per_node) for i in range(len(handles))]}


def run_nodes(ctx: BenchContext, log: Callable[[str], None]) -> dict:
    if ray.is_initialized():
        raise KDError("bench nodes starts clusters of its own: it must run before any section connects Ray")
    by_count = {}
    for count in NODE_COUNTS:
        cpus = max(1, ctx.cores // count)
        log(f"nodes: {count} node(s) of {cpus} CPU(s), {cpus} collector(s) each with {ctx.num_envs} envs ...")
        by_count[count] = f = _one_count(ctx, count)
        log(f"nodes: {count} node(s): {f['labelled_states_per_s']:,.0f} labelled states/s "
            f"({f['per_node_mean_states_per_s']:,.0f} per node); Redis {f['redis_written_states_per_s']:,.0f} states/s "
            f"written, {f['redis_in_mb_per_s']:.2f} MB/s in, {f['redis_core_fraction']:.1%} of a core")
    first = by_count[min(by_count)]
    for f in by_count.values():
        f["vs_one_node"] = f["labelled_states_per_s"] / first["labelled_states_per_s"]
    # Redis's cost per state, pooled over every count (it should not depend on the count); the idle
    # rate taken off unless that leaves nothing (too few writes to see): then the whole CPU, a bound
    states = sum(f["redis_written_states"] for f in by_count.values())
    busy = sum(f["redis_busy_cpu_s"] for f in by_count.values())
    raw = sum(f["redis_cpu_s"] for f in by_count.values())
    wire = [f["wire_bytes_per_state"] for f in by_count.values() if f["wire_bytes_per_state"]]
    if not states or not wire:
        raise KDError("bench nodes: the collectors wrote no chunk to Redis in the window; raise --seconds")
    cpu_per_state = (busy if busy > 0 else raw) / states or None
    wire_bytes = sum(f["wire_bytes_per_state"] * f["redis_written_states"] for f in by_count.values()
                     if f["wire_bytes_per_state"]) / states
    # "a node" is the smallest count's node: with 1, this whole machine as one node
    estimate = redis_capacity(first["per_node_mean_states_per_s"], cpu_per_state, wire_bytes)
    log(f"nodes: one Redis core serves ~{estimate['nodes_by_redis_cpu'] or math.inf:,.0f} such nodes, a "
        f"{NETWORK_GBIT_S:g} Gbit/s link ~{estimate['nodes_by_network']:,.0f}: {estimate['bottleneck']} first")
    return {"node_counts": list(by_count), "cores": ctx.cores, "num_envs_per_actor": ctx.num_envs,
            "labelled_states_per_s": [f["labelled_states_per_s"] for f in by_count.values()],
            "per_node_states_per_s": [f["per_node_mean_states_per_s"] for f in by_count.values()],
            "vs_one_node": [f["vs_one_node"] for f in by_count.values()],
            "by_nodes": {str(count): f for count, f in by_count.items()},
            "redis_estimate": estimate | {"redis_idle_subtracted": busy > 0, "redis_written_states": states},
            "assumptions": {"network_gbit_s": NETWORK_GBIT_S, "redis_cores": REDIS_CORES,
                            "node": f"{first['cpus_per_node']} CPU(s) of this machine, the {first['nodes']}-node rate",
                            "load": "collectors' writes only; a learner's sampling reads add to Redis's load",
                            "redis_private": ctx.redis is not None}}
