"""The one place that knows the distributed topology: which components become Ray actors,
with what resources, on which nodes. Components themselves are plain classes."""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

import ray

from kd_system.actors.behaviour import TeacherShareSchedule
from kd_system.launch.cluster_info import actors_per_task, learner_gpus_for
from kd_system.actors.collector import Collector, CollectorSettings
from kd_system.config import RunConfig, limiter_of
from kd_system.errors import ConfigError, KDError
from kd_system.envs.vector import envs_per_actor
from kd_system.evaluation.evaluator import Evaluator
from kd_system.metrics import say
from kd_system.learner.learner import Learner, LearnerTask
from kd_system.launch.preparation import Prepared
from kd_system.replay.connection import StoreAddress

# Workers inherit these so that fractional-CPU actors do not each spawn a full thread pool.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def connect_ray(address: str | None, num_cpus: int | None = None, quiet: bool = False) -> bool:
    """Join the cluster at ``address`` (else at $RAY_ADDRESS, which Ray sets for a job's driver) or
    start a local one (with ``num_cpus`` CPU slots; None: Ray counts the cores); returns True if
    this process connected Ray (and so shuts it down). ``quiet``: workers' output stays in Ray's
    logs and Ray itself logs errors only, so a report printed by this process stays readable."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet,
                              "runtime_env": {"env_vars": WORKER_ENV}, **({"logging_level": "ERROR"} if quiet else {})}
    where = f"--address {address}" if address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '')}"
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address, **kwargs)  # address None: ray.init reads RAY_ADDRESS
        except ray.exceptions.AuthenticationError:
            raise KDError(f"the Ray cluster at {where} refused this process's token: set RAY_AUTH_MODE=token and "
                          "RAY_AUTH_TOKEN to the cluster's token (deploy/README.md)") from None
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KDError(f"cannot join the Ray cluster at {where} ({first}); "
                          "start it with `ray start --head` or fix the address") from None
    else:
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        # "local": always a new instance of our own. Without it ray.init joins whatever cluster
        # /tmp/ray/ray_current_cluster names (a `ray start` on this machine, another run's), which
        # this process would then shut down, and whose processes its watchdog would end.
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    _interrupt_on_sigterm()
    return True


def _interrupt_on_sigterm() -> None:
    """ray.init makes SIGTERM exit at once; make it act like Ctrl-C instead, so that `docker stop`,
    Kubernetes and `ray job stop` end a run with a last snapshot, a final evaluation and a summary."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _placed(component: type) -> Any:
    """The component as a Ray actor class that can also say which node it runs on."""
    placed = type(component.__name__, (component,), {
        "node_id": lambda self: ray.get_runtime_context().get_node_id(),
    })
    return ray.remote(placed)


def _resources(name: str | None) -> dict[str, float]:
    # a tiny share, so any number of actors fit on a node that offers the resource
    return {name: 0.001} if name else {}


@dataclass
class Components:
    """Handles of the run's Ray actors. Not frozen: the head replaces a dead component in place
    (launch/supervision.py), so every reader sees the live one."""
    collectors: list[Any]
    collector_tasks: list[int]  # the task index each collector works for
    learner: Any
    evaluators: list[Any]  # one per task
    learner_num_gpus: float


def learner_gpus(config: RunConfig) -> float:
    """cluster_info.learner_gpus_for on the live cluster, saying so when the learner waits for a GPU node."""
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = learner_gpus_for(config, cluster_gpus)
    if gpus and cluster_gpus < 1:
        say(f"learner.device=cuda and no GPU in the cluster yet: the learner waits for a node offering "
            f"{config.learner.ray_resource} with a GPU")
    return gpus


# A replacement collector's envs get seeds this far from every first incarnation's (actors are 1,000
# apart), so it does not replay the episodes its dead predecessor already played.
REPLACEMENT_SEED_STRIDE = 100_000_000


def collector_settings(config: RunConfig, actor_id: int, task_index: int = 0,
                       prepared: Prepared | None = None, incarnation: int = 0) -> CollectorSettings:
    a = config.actors
    env_id = config.task_list()[task_index].env
    return CollectorSettings(actor_id=actor_id, env_id=env_id, num_envs=envs_per_actor(a.envs_per_actor, env_id),
                             epsilon=a.epsilon, chunk_states=config.store.chunk_states,
                             chunks_per_write=a.chunks_per_write, torch_threads=a.torch_threads,
                             seed=config.head.seed * 100_003 + 1_000 * (actor_id + 1)
                             + REPLACEMENT_SEED_STRIDE * incarnation, task_id=task_index,
                             acting=a.acting, weights_refresh_steps=a.weights_refresh_steps,
                             teacher_share=TeacherShareSchedule(a.teacher_share_start, a.teacher_share_end,
                                                                a.teacher_share_decay_updates),
                             limiter=limiter_of(config),
                             lookahead=prepared.tasks[task_index].lookahead if prepared is not None else None,
                             num_cpus=float(a.num_cpus), env_groups=None if a.env_groups == "auto" else a.env_groups)


def make_collector(config: RunConfig, actor_id: int, task_index: int, prepared: Prepared,
                   stores: list[StoreAddress], incarnation: int = 0) -> Any:
    # No Ray-level restarts: the head replaces a dead collector itself, with fresh arguments.
    task = prepared.tasks[task_index]
    remote_cls = _placed(Collector).options(num_cpus=config.actors.num_cpus,
                                            resources=_resources(config.actors.ray_resource))
    return remote_cls.remote(collector_settings(config, actor_id, task_index, prepared, incarnation), stores[task_index],
                             task.labelling_teacher, task.student_spec)


def make_learner(config: RunConfig, prepared: Prepared, stores: list[StoreAddress], gpus: float) -> Any:
    """A learner from scratch; the head restores a replacement's state from the latest snapshot."""
    learner_tasks = [LearnerTask(store, task.student_spec, task.label_kind, task.label_temperature)
                     for store, task in zip(stores, prepared.tasks)]
    return _placed(Learner).options(num_cpus=config.learner.num_cpus, num_gpus=gpus,
                                    resources=_resources(config.learner.ray_resource)).remote(
        config.learner, learner_tasks, limiter_of(config))


def make_evaluator(config: RunConfig, prepared: Prepared, task_index: int) -> Any:
    task = prepared.tasks[task_index]
    return _placed(Evaluator).options(num_cpus=config.head.evaluator_num_cpus).remote(
        task.env_id, task.teacher, config.head.heldout_states, temperature=config.learner.temperature,
        student_temperature=config.learner.student_temperature)


def check_cpu_reservations(config: RunConfig, actors_per_task: int, num_tasks: int, cluster_cpus: float) -> None:
    """Refuse reservations a fixed cluster can never grant: Ray would leave the last component
    pending forever, and the run would hang without a word."""
    actors = actors_per_task * num_tasks
    asked = actors * config.actors.num_cpus + config.learner.num_cpus + num_tasks * config.head.evaluator_num_cpus
    if asked > cluster_cpus + 1e-9:
        raise ConfigError(
            f"actors.num_cpus ({config.actors.num_cpus:g} x {actors} actors) + learner.num_cpus "
            f"({config.learner.num_cpus:g}) + head.evaluator_num_cpus ({config.head.evaluator_num_cpus:g} x {num_tasks}) "
            f"reserve {asked:g} CPUs, but the local Ray cluster has {cluster_cpus:g}; lower them (they are Ray "
            "reservations for placement, not limits on the threads each part uses)")


def start_components(config: RunConfig, prepared: Prepared, stores: list[StoreAddress],
                     fixed_cluster: bool = False) -> Components:
    """``actors.num_actors`` collectors per task, one learner, one evaluator per task. On a
    ``fixed_cluster`` (the local one this process started) reservations that cannot fit are refused."""
    per_task = actors_per_task(config, len(prepared.tasks))  # a fixed number, or what the cluster has room for
    if fixed_cluster:
        check_cpu_reservations(config, per_task, len(prepared.tasks), float(ray.cluster_resources().get("CPU", 0.0)))
    collector_tasks = [t for t in range(len(prepared.tasks)) for _ in range(per_task)]
    collectors = [make_collector(config, i, t, prepared, stores) for i, t in enumerate(collector_tasks)]
    gpus = learner_gpus(config)
    learner = make_learner(config, prepared, stores, gpus)
    evaluators = [make_evaluator(config, prepared, task_index) for task_index in range(len(prepared.tasks))]
    return Components(collectors, collector_tasks, learner, evaluators, gpus)


PLACEMENT_WAIT_S = 30.0  # a component not up by then (waiting for a node, e.g. a GPU one) is reported as such


def placement(components: Components) -> dict[str, Any]:
    """Node id of every component, for the summary and for tests of multi-node placement; None for
    one that died already or is not placed yet (the head deals with it: it does not wait here)."""
    handles = [components.learner, components.evaluators[0], *components.collectors]
    refs = [handle.node_id.remote() for handle in handles]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PLACEMENT_WAIT_S)
    done = set(ready)

    def node_of(ref: Any) -> str | None:
        try:
            return ray.get(ref) if ref in done else None
        except ray.exceptions.RayActorError:
            return None

    nodes = [node_of(ref) for ref in refs]
    return {"learner": nodes[0], "evaluator": nodes[1], "actors": nodes[2:], "head": ray.get_runtime_context().get_node_id()}


def stop_components(components: Components) -> None:
    for handle in [*components.collectors, components.learner, *components.evaluators]:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # already dead: nothing to stop
            pass
