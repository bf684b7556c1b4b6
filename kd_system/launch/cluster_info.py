"""How many actors a run starts when ``actors.num_actors`` is ``auto``: as many as the cluster
has room for at start-up. During the run the head recounts with the same ``actor_slots`` (without
the settle wait) and follows nodes that join or leave (launch/elastic.py).

Room means one actor per ``actors.num_cpus`` CPUs on every alive node that offers
``actors.ray_resource`` (every alive node when that is unset), less the room the learner and the
evaluators may take on those same nodes. Ray places those three wherever it likes, so a slot is
held back for each of them that *could* land on an actor node; otherwise an actor could be left
pending for the whole run. Workers that are still joining are waited for until the set of actor
nodes has been steady for a few seconds. The count is a pure function of Ray's node list, so it is
tested without a cluster. It assumes the cluster runs this one distillation.

The learner's GPU request is decided here too (``learner_gpus_for``), once for both readers: the
topology asks Ray for it, and the count above must hold room for the learner only where that
request lets it land.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterable

from kd_system.config import RunConfig
from kd_system.errors import ConfigError

AUTO = "auto"
_ROUNDING = 1e-6  # 0.3 / 0.1 is 2.9999999999999996 in floating point; count it as 3
AUTO_SETTLE_S = 5.0  # the actor nodes must stay the same this long before they are counted ...
AUTO_MAX_WAIT_S = 120.0  # ... or, on a cluster whose nodes keep changing, this long at most


@dataclass(frozen=True)
class Demand:
    """What one non-actor component asks Ray for."""
    cpus: float
    gpus: float = 0.0
    resource: str | None = None

    def fits_on(self, node_resources: dict[str, float]) -> bool:
        if self.resource is not None and node_resources.get(self.resource, 0) <= 0:
            return False
        return node_resources.get("GPU", 0) >= self.gpus


def learner_gpus_for(config: RunConfig, cluster_gpus: float) -> float:
    """The GPUs the learner asks Ray for, given the GPUs the cluster offers now. The one decision:
    topology places the learner with it, and ``actors_per_task`` leaves room for the learner where
    that request lets it land (a learner asking for a GPU only lands on a GPU node)."""
    if config.learner.device == "cpu":
        return 0.0
    if cluster_gpus >= 1:
        return 1.0
    # Pinned to GPU nodes that are not up yet: asking for the GPU makes an autoscaler start one.
    if config.learner.device == "cuda" and config.learner.ray_resource:
        return 1.0
    return 0.0


def learner_demand(config: RunConfig, cluster_gpus: float) -> Demand:
    """What the learner asks Ray for, as ``actor_slots`` weighs it."""
    return Demand(config.learner.num_cpus, learner_gpus_for(config, cluster_gpus), config.learner.ray_resource)


def actor_nodes(nodes: Iterable[dict[str, Any]], actor_resource: str | None) -> list[dict[str, float]]:
    """Resources of the alive nodes actors may run on (Ray's ``ray.nodes()`` records)."""
    return [node["Resources"] for node in nodes
            if node.get("Alive") and (actor_resource is None or node["Resources"].get(actor_resource, 0) > 0)]


def actor_slots(nodes: Iterable[dict[str, Any]], actor_cpus: float, actor_resource: str | None,
                others: Iterable[Demand]) -> int:
    """Actors that fit: whole ``actor_cpus`` shares per actor node, minus what ``others`` may take.

    A component of c CPUs on a node lowers that node's whole shares by at most ceil(c / actor_cpus),
    so holding that many back for each component that could land on an actor node is always enough.
    """
    usable = actor_nodes(nodes, actor_resource)
    slots = sum(math.floor(res.get("CPU", 0) / actor_cpus + _ROUNDING) for res in usable)
    for demand in others:
        if any(demand.fits_on(res) for res in usable):
            slots -= math.ceil(demand.cpus / actor_cpus - _ROUNDING)
    return max(slots, 0)


def room(nodes: Iterable[dict[str, Any]], config: RunConfig, learner_gpus: float, num_tasks: int) -> int:
    """Actors the cluster has room for: one rule for the start-up count (``actors_per_task``) and
    for the head's recounts mid-run (launch/elastic.py), given the learner's GPU request."""
    others = [Demand(config.learner.num_cpus, learner_gpus, config.learner.ray_resource)]
    others += [Demand(config.head.evaluator_num_cpus)] * num_tasks
    return actor_slots(nodes, config.actors.num_cpus, config.actors.ray_resource, others)


def _settled_nodes(actor_resource: str | None, settle_s: float, max_wait_s: float) -> list[dict[str, Any]]:
    """Ray's node list once the set of actor nodes has not changed for ``settle_s`` (workers of a
    cluster that is still starting join one by one), or after ``max_wait_s`` at the latest."""
    import ray

    start = time.monotonic()
    seen: set[str] | None = None
    changed_at = start
    while True:
        nodes = ray.nodes()
        now = time.monotonic()
        ids = {node["NodeID"] for node in nodes
               if node.get("Alive") and (actor_resource is None or node["Resources"].get(actor_resource, 0) > 0)}
        if ids != seen:
            seen, changed_at = ids, now
        if (seen and now - changed_at >= settle_s) or now - start >= max_wait_s:
            return nodes
        time.sleep(0.5)


def actors_per_task(config: RunConfig, num_tasks: int = 1) -> int:
    """``actors.num_actors`` as a number of actors per task, counted on the live cluster for ``auto``
    (one evaluator per task, as the topology starts them). Call it once Ray is connected."""
    a = config.actors
    if a.num_actors != AUTO:
        return int(a.num_actors)
    import ray

    from kd_system.metrics import say

    nodes = _settled_nodes(a.ray_resource, AUTO_SETTLE_S, AUTO_MAX_WAIT_S)
    slots = room(nodes, config, learner_gpus_for(config, float(ray.cluster_resources().get("GPU", 0))), num_tasks)
    usable = actor_nodes(nodes, a.ray_resource)
    where = f"nodes offering the Ray resource {a.ray_resource!r}" if a.ray_resource else "alive nodes"
    cpus = sum(res.get("CPU", 0) for res in usable)
    if slots < num_tasks:
        raise ConfigError(
            f"actors.num_actors=auto found room for {slots} actors ({cpus:g} CPUs on {len(usable)} {where}, "
            f"actors.num_cpus={a.num_cpus:g}, {num_tasks} task(s)): add worker nodes, lower actors.num_cpus, "
            "or set a fixed actors.num_actors (an autoscaler then adds nodes for actors still pending)")
    say(f"actors.num_actors=auto: {slots // num_tasks * num_tasks} actors for {cpus:g} CPUs on {len(usable)} {where} "
        "(the count follows nodes that join or leave)")
    return slots // num_tasks
