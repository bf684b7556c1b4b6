"""What every measurement shares: the options, the env and teacher (and which teacher), the
student, the Redis server, a run config shaped like a real run's, and labelled chunks collected
once up front for the store and learner sections."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from kd_system.actors.collector import Collector
from kd_system.bench.core_workers import CoreWorkers
from kd_system.config import PACKAGE_DIR, ActorConfig, EnvConfig, StoreConfig, load_config
from kd_system.envs.make import EnvSpaces, check_env_id, env_spaces
from kd_system.envs.vector import envs_per_actor
from kd_system.errors import CheckpointError, ConfigError, StoreError
from kd_system.learner.loss_spec import student_output_kind
from kd_system.learner.losses import resolve_temperature
from kd_system.policies.network_choice import network_for
from kd_system.policies.networks import build_network, cnn_spec, count_parameters
from kd_system.policies.files import PolicyBundle, PolicySpec, load_bundle
from kd_system.launch.preparation import Prepared, PreparedTask
from kd_system.replay.redis_server import LocalRedisServer
from kd_system.replay.connection import StoreAddress, check_reachable
from kd_system.replay.table import ReplayTable
from kd_system.launch.topology import collector_settings
from kd_system.bench.timing import torch_threads
from kd_system.types import LabelledChunk

if TYPE_CHECKING:  # teachers/engines.py pulls in the exporters: imported when engines are asked for
    from kd_system.teachers.engines import TeacherEngine

SECTIONS = ("actor", "store", "learner", "feed", "scaling", "inference", "ceiling", "system", "nodes")
# inference (bench/inference.py) exports and times 16 engines, about a minute at the default --seconds;
# ceiling and system sweep env counts, batches, layouts and collector counts per teacher engine
# (minutes); nodes starts three multi-node Ray clusters in turn (a minute or two): all four are
# asked for by name, so the default run stays short.
DEFAULT_SECTIONS = ("actor", "store", "learner", "feed", "scaling")
DEFAULT_ENV = "ALE/Pong-v5"
MAX_WARMUP_S = 2.0
RANDOM_TEACHER_SEED = 0
# Chunks for the store and learner sections: the first few are dropped so Atari frames come from
# play, not the near-static frames after a reset (they compress better than the game does).
DISCARD_CHUNKS = 4
KEEP_CHUNKS = 8
# Three paired rounds give a median that one odd window cannot move; each costs five windows and a
# collector start-up per engine (about a minute per engine at the default --seconds on Atari).
DEFAULT_ROUNDS = 3


@dataclass(frozen=True)
class BenchOptions:
    env_id: str = DEFAULT_ENV
    teacher: str | None = None  # a checkpoint directory; None: the shipped one, else random weights
    seconds: float = 5.0  # each timed window
    num_envs: int | None = None  # None: a run's (actors.envs_per_actor auto: 64 for Atari, 8 otherwise)
    only: tuple[str, ...] = DEFAULT_SECTIONS
    json_path: str | None = None
    redis_url: str | None = None  # None: a private redis-server on a free port
    # None: actors.torch_threads as a run sets it (1). More threads than free cores make torch's
    # thread pool wait on descheduled threads: on a busy 2-core machine a 2-thread forward of a
    # small MLP was measured ~30x slower than a 1-thread one.
    torch_threads: int | None = None
    student: str | None = None  # inference section: a student checkpoint instead of random init
    engines: tuple[str, ...] = ("torch",)  # ceiling and system: teacher engines (engine_choice.parse_engines)
    collectors: tuple[int, ...] | None = None  # system: collector counts; None: one and two per core
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE on a run's default config, e.g. learner.precision=fp32
    # ceiling and system together: paired rounds after both sweeps (bench/paired.py); 0 keeps the sweeps' ratios
    rounds: int = DEFAULT_ROUNDS

    @property
    def warmup_s(self) -> float:
        return min(MAX_WARMUP_S, self.seconds / 2)


def parse_only(text: str | None) -> tuple[str, ...]:
    if not text:
        return DEFAULT_SECTIONS
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise ConfigError(f"--only: unknown section {unknown[0] if unknown else text!r}; "
                          f"give a comma-separated subset of {','.join(SECTIONS)}")
    return tuple(name for name in SECTIONS if name in names)  # always in the same order


def check_options(options: BenchOptions) -> None:
    if not options.seconds > 0:
        raise ConfigError(f"--seconds {options.seconds} must be positive")
    if options.num_envs is not None and options.num_envs < 1:
        raise ConfigError(f"--num-envs {options.num_envs} must be at least 1")
    if options.torch_threads is not None and options.torch_threads < 1:
        raise ConfigError(f"--torch-threads {options.torch_threads} must be at least 1")
    if options.rounds < 0:
        raise ConfigError(f"--rounds {options.rounds} must be 0 or more")
    if options.collectors is not None and (not options.collectors or min(options.collectors) < 1):
        raise ConfigError(f"--collectors {options.collectors}: give counts of at least 1")
    if options.json_path and not Path(options.json_path).expanduser().resolve().parent.is_dir():
        raise ConfigError(f"--json {options.json_path}: its directory does not exist; create it or pick another path")


@dataclass(frozen=True)
class TeacherChoice:
    bundle: PolicyBundle
    source: str  # what the output says was used
    params: int


def shipped_teacher_dir(env_id: str) -> Path:
    """kd_system/teachers/pong-v5 for ALE/Pong-v5, kd_system/teachers/cartpole-v1 for CartPole-v1."""
    return PACKAGE_DIR / "teachers" / env_id.removeprefix("ALE/").lower()


def choose_teacher(env_id: str, path: str | None, spaces: EnvSpaces) -> TeacherChoice:
    shipped = path is None and shipped_teacher_dir(env_id).is_dir()
    if shipped:
        path = str(shipped_teacher_dir(env_id))
    if path is not None:
        try:
            bundle = load_bundle(Path(path).expanduser())
        except CheckpointError as exc:
            raise ConfigError(f"--teacher: {exc}") from None
        spec = bundle.spec
        if tuple(spec.obs_shape) != spaces.obs_shape or spec.num_actions != spaces.num_actions:
            raise ConfigError(f"--teacher {path} expects observations {tuple(spec.obs_shape)} and {spec.num_actions} "
                              f"actions but {env_id} has {spaces.obs_shape} and {spaces.num_actions}; "
                              f"pass a teacher trained on {env_id}")
        return TeacherChoice(bundle, f"{'shipped ' if shipped else ''}checkpoint {path}", count_parameters(bundle.module()))
    if not spaces.pixels:  # a random network stands in for a CNN teacher only
        raise ConfigError(f"--teacher: no shipped teacher for {env_id} ({shipped_teacher_dir(env_id)} does not "
                          "exist); pass --teacher with a checkpoint directory")
    # Throughput does not depend on the weights, only on the network: a seeded random Nature CNN.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TEACHER_SEED)
        module = build_network(cnn_spec("nature"), spaces.obs_shape, spaces.num_actions)
    params = count_parameters(module)
    spec = PolicySpec("teacher", env_id, spaces.obs_shape, spaces.obs_dtype, spaces.num_actions, "q",
                      cnn_spec("nature"), params, {"note": "random weights, for throughput benchmarks only"})
    return TeacherChoice(PolicyBundle.from_module(spec, module),
                         f"random Nature-CNN (seed {RANDOM_TEACHER_SEED}; no {shipped_teacher_dir(env_id)})", params)


def clear_namespace(address: StoreAddress) -> None:
    """Remove a measurement's keys (and only those) from Redis."""
    with ReplayTable.from_address(address) as table:
        table.clear()


class _ChunkRecorder:
    """Stands in for a collector's replay table: keeps the chunks it would have inserted."""

    def __init__(self) -> None:
        self.chunks: list[LabelledChunk] = []
        self.wait_insert_s = 0.0  # never held back: there is no rate limiter here

    def insert(self, chunks: list[LabelledChunk], timeout_s: float = 0.0) -> list[int]:
        start = len(self.chunks)
        self.chunks.extend(chunks)
        return list(range(start, len(self.chunks)))

    def close(self) -> None:
        pass


class BenchContext:
    def __init__(self, options: BenchOptions):
        check_options(options)
        check_env_id(options.env_id, "--env")
        self.options = options
        self.env_id = options.env_id
        self.spaces = env_spaces(self.env_id)
        self.teacher = choose_teacher(self.env_id, options.teacher, self.spaces)
        self.cores = len(os.sched_getaffinity(0))
        self.threads = options.torch_threads or ActorConfig().torch_threads
        self.num_envs = options.num_envs or envs_per_actor(ActorConfig().envs_per_actor, self.env_id)  # a run's default
        # A real run's settings (with --set's overrides, checked as a run checks them); the env, the
        # envs per actor and the actors' torch threads come from the options.
        defaults = load_config(None, list(options.overrides))
        self.config = defaults.model_copy(update={
            "env": EnvConfig(id=self.env_id),
            "actors": defaults.actors.model_copy(update={"envs_per_actor": self.num_envs, "torch_threads": self.threads})})
        self.student_spec = self._student_spec()
        self.prepared = Prepared((PreparedTask(self.env_id.lower(), self.env_id, self.teacher.bundle, self.teacher.source,
                                               self.teacher.params, self.student_spec),),
                                 self.teacher.params, self.student_spec.num_params)
        self.tag = uuid.uuid4().hex[:8]
        self.redis: LocalRedisServer | None = None
        self.url = options.redis_url
        self._chunks: list[LabelledChunk] | None = None
        self._engines: dict[str, TeacherEngine] | None = None
        self._workers: CoreWorkers | None = None
        self.agreement_floor = defaults.teacher.engine_agreement_floor  # a run's start refuses engines below it

    def _student_spec(self) -> PolicySpec:
        """The student a run would distil into (rusu-7 CNN for Atari, the default MLP otherwise)."""
        student = self.config.student
        network = network_for(self.spaces, student.hidden, student.activation, student.preset)
        params = count_parameters(build_network(network, self.spaces.obs_shape, self.spaces.num_actions))
        kind = student_output_kind(self.config.learner.loss, self.teacher.bundle.spec.output_kind)
        return PolicySpec("student", self.env_id, self.spaces.obs_shape, self.spaces.obs_dtype,
                          self.spaces.num_actions, kind, network, params)

    @property
    def chunk_states(self) -> int:
        return self.config.store.chunk_states

    def start_redis(self) -> None:
        """A private redis-server unless --redis-url names one; either way fail now if unreachable."""
        if self.url is None:
            self.redis = LocalRedisServer()  # answers PING before it returns
            self.url = self.redis.url
            return
        try:
            check_reachable(self.url)
        except StoreError as exc:
            raise ConfigError(f"--redis-url: {exc}") from None

    def address(self, section: str, capacity_states: int = StoreConfig().capacity_states) -> StoreAddress:
        """A namespace of its own per measurement; ReplayTable.clear() removes it afterwards."""
        if self.url is None:
            raise RuntimeError("start_redis() first")
        return StoreAddress(self.url, f"bench-{self.tag}-{section}", capacity_states, self.chunk_states)

    def labelled_chunks(self) -> list[LabelledChunk]:
        """KEEP_CHUNKS chunks exactly as a collector makes them (its own stepping, labelling and
        chunking; only the table insert is swapped for a recorder), collected once."""
        if self._chunks is None:
            with torch_threads(self.threads):
                collector = Collector(collector_settings(self.config, 0), self.address("chunks"), self.teacher.bundle)
                collector.table.close()
                recorder = collector.table = _ChunkRecorder()
                try:
                    while len(recorder.chunks) < DISCARD_CHUNKS + KEEP_CHUNKS:
                        collector.collect(0.25)
                finally:
                    collector.close()
            self._chunks = recorder.chunks[DISCARD_CHUNKS:DISCARD_CHUNKS + KEEP_CHUNKS]
        return self._chunks

    def teacher_engines(self, log: Callable[[str], None]) -> dict[str, TeacherEngine]:
        """The --engines, built and checked against fp32 torch once for the ceiling and system sections."""
        if self._engines is None:
            from kd_system.bench.engine_choice import check_engines  # the exporters load only when asked for

            names = self.options.engines
            if names != ("torch",):
                log(f"bench: building {', '.join(names[1:])} and checking them against fp32 torch on held-out states ...")
            temperature = resolve_temperature(self.config.learner.temperature, self.teacher.bundle.spec.output_kind)
            self._engines = check_engines(self.teacher.bundle, names, self.env_id, temperature, self.teacher.source)
            for name, engine in self._engines.items():
                f = engine.fidelity
                if f.states:
                    log(f"bench: {name}: greedy agreement {f.greedy_agreement:.2%}, KL at tau={f.kl_temperature:g} "
                        f"{f.kl:.2e} on {f.states} held-out states"
                        + ("" if f.greedy_agreement >= self.agreement_floor else
                           f", below the floor {self.agreement_floor:g}: measured, never chosen"))
        return self._engines

    def core_workers(self, count: int) -> CoreWorkers:
        """At least ``count`` spawned timing processes, kept for the whole bench: the paired rounds,
        after the system section, reuse the ceiling's (spawning more would import torch again while
        Ray's processes run)."""
        if self._workers is None or len(self._workers.pipes) < count:
            if self._workers is not None:
                self._workers.close()
            self._workers = CoreWorkers(count)
        return self._workers

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None
        if self.redis is not None:
            self.redis.stop()
