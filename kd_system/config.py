"""One typed, frozen configuration for a run, loaded from YAML plus ``--set key=value`` overrides.

Everything that crosses a process boundary (actors, learner, evaluator) receives a section of it.
Validation happens up front, before Ray or Redis start, and every error names its field.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kd_system.errors import ConfigError
from kd_system.learner.loss_spec import validate_loss_spec
from kd_system.replay.rate_limit import SampleToInsertLimiter, check_deadlock_free

SHIPPED_PREFIX = "shipped:"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class EnvConfig:
    id: str = "CartPole-v1"


@dataclass(frozen=True)
class TeacherConfig:
    """``checkpoint`` is a directory in the project's format, or ``shipped:NAME`` for a bundled teacher."""
    checkpoint: str = "shipped:cartpole-v1"


@dataclass(frozen=True)
class StudentConfig:
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    max_param_fraction: float = 0.10  # refuse students larger than this share of the teacher
    preset: str = "rusu-7"  # CNN students for Atari tasks (networks.CNN_PRESETS); hidden is for MLPs


@dataclass(frozen=True)
class StoreConfig:
    redis_url: str | None = None  # None: the head starts a private redis-server; env:NAME reads $NAME (kd_system/env_refs.py)
    capacity_states: int = 200_000
    chunk_states: int = 256
    clear_on_start: bool = True


@dataclass(frozen=True)
class ActorConfig:
    num_actors: int | Literal["auto"] = 2  # auto: as many as the cluster has room for (kd_system/cluster_info.py)
    envs_per_actor: int = 8
    epsilon: float = 0.05  # the acting policy explores with this probability
    acting: str = "teacher"  # teacher | student | mixed: who picks actions (kd_system/acting.py)
    weights_refresh_steps: int = 1_000  # student/mixed: env steps per actor between weight pulls
    teacher_share_start: float = 1.0  # mixed: probability the teacher acts, at update 0 ...
    teacher_share_end: float = 0.0  # ... falling linearly to this ...
    teacher_share_decay_updates: int = 2_000  # ... over this many learner updates
    chunks_per_write: int = 1
    num_cpus: float = 0.25
    torch_threads: int = 1
    ray_resource: str | None = None  # custom Ray node resource actors require (pins them to nodes offering it)


@dataclass(frozen=True)
class LearnerConfig:
    loss: str = "kl"  # kl | mse | nll | maxgap, or a weighted sum such as kl+0.1*mse (kd_system/losses.py)
    temperature: float | None = None  # None: 0.01 for q teachers (Rusu et al. 2015), 1.0 for logits
    student_temperature: float | None = None  # None: student not softened; a number: Hinton's T² scaled KL
    batch_size: int = 256
    lr: float = 1e-3
    lr_final: float | None = None  # None: lr throughout; a number: cosine decay from lr to this ...
    lr_decay_updates: int = 10_000  # ... over this many updates, then held (kd_system/learner.py)
    weight_decay: float = 0.0
    grad_clip_norm: float = 10.0
    publish_every_updates: int = 200
    prefetch_batches: int = 8
    prefetch_threads: int = 1
    chunks_per_sample: int = 4
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    num_cpus: float = 0.5
    torch_threads: int = 1
    ray_resource: str | None = None  # custom Ray node resource the learner requires
    seed: int = 0


@dataclass(frozen=True)
class LimiterConfig:
    """Samples-per-insert rate limiting (see kd_system/rate_limit.py)."""
    min_size_to_sample: int = 5_000
    samples_per_insert: float = 32.0  # replay ratio: states sampled by the learner per state written
    error_buffer: float | None = None  # null: only the learner waits; a number: actors wait too


@dataclass(frozen=True)
class LookaheadConfig:
    """Label states with a rollout-improved teacher instead of the teacher (kd_system/lookahead.py):
    the student can then outscore its teacher. Only for envs whose state copies exactly."""
    enabled: bool = False  # every task's default; a task's own ``lookahead`` overrides it
    eta: float = 0.1  # reward units: rollout-return differences well above this override the teacher
    horizon_steps: int | None = None  # None: roll out to the episode's end (needs an env with a time limit)


@dataclass(frozen=True)
class HeadConfig:
    run_name: str | None = None
    runs_dir: str = "runs"
    snapshot_every_s: float = 10.0
    snapshot_every_updates: int | None = None
    keep_snapshots: int = 3
    eval_episodes: int = 20
    final_eval_episodes: int = 50
    heldout_states: int = 5_000
    evaluator_num_cpus: float = 0.25
    target_score: float | None = 1.0  # stop when a snapshot's teacher-normalized score reaches this
    evals_after_target: int = 0  # then train on for this many evaluations and keep the best snapshot
    max_updates: int | None = None
    max_wall_s: float | None = 150.0
    progress_every_s: float = 2.0
    seed: int = 0


@dataclass(frozen=True)
class TaskConfig:
    """One task of a multi-task run: an env and the teacher that plays it."""
    env: str = ""
    teacher: str = ""
    lookahead: bool | None = None  # None: the lookahead section's ``enabled``

    @property
    def name(self) -> str:  # names the task's store namespace and snapshot folder
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.env).lower()


@dataclass(frozen=True)
class RunConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    actors: ActorConfig = field(default_factory=ActorConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    limiter: LimiterConfig = field(default_factory=LimiterConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)
    # Several tasks distil into one student with a shared trunk; when set, env and teacher are unused.
    tasks: tuple[TaskConfig, ...] = ()

    def task_list(self) -> tuple[TaskConfig, ...]:
        """The tasks with ``lookahead`` resolved to true or false."""
        tasks = self.tasks or (TaskConfig(self.env.id, self.teacher.checkpoint),)
        default = self.lookahead.enabled
        return tuple(dataclasses.replace(t, lookahead=default if t.lookahead is None else t.lookahead) for t in tasks)


_DESCRIPTIONS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(str(a) for a in typing.get_args(annotation))
    return _DESCRIPTIONS.get(annotation, str(annotation))


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], where)
        for option in inner:  # e.g. int | Literal["auto"]: the first that fits
            try:
                return _coerce(value, option, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {' or '.join(_describe(o) for o in inner)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected {_describe(annotation)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config annotation {annotation} at {where}")


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; valid keys here are: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, path)
        else:
            kwargs[name] = _coerce(value, hints[name], path)
    return cls(**kwargs)


def to_dict(config: RunConfig) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def from_dict(data: dict[str, Any]) -> RunConfig:
    config = _build(RunConfig, data, "")
    validate(config)
    return config


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``section.key=value`` strings; values are parsed as YAML scalars (``1e-3``, ``[64,64]``, ``null``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set learner.lr=3e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"--set {key!r}: expected section.key, e.g. actors.num_actors")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"--set {key!r}: {parts[0]} is not a section")
        section[parts[1]] = value
    return data


def resolve_config_path(path: str) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = PACKAGE_DIR / "configs" / f"{path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in (PACKAGE_DIR / "configs").glob("*.yaml"))
    raise ConfigError(f"config file {path} does not exist; pass a YAML path or a shipped config name ({', '.join(names)})")


def load_config(path: str | None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    if path is not None:
        config_path = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(config_path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{config_path}: malformed YAML{where}; fix the file's syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: the top level must be a mapping of sections (env, teacher, ...)")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(data)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def resolve_teacher_path(checkpoint: str) -> Path:
    if checkpoint.startswith(SHIPPED_PREFIX):
        name = checkpoint[len(SHIPPED_PREFIX):]
        path = PACKAGE_DIR / "teachers" / name
        if not path.is_dir():
            names = sorted(p.name for p in (PACKAGE_DIR / "teachers").iterdir() if p.is_dir())
            raise ConfigError(f"teacher.checkpoint: no shipped teacher {name!r} (shipped: {', '.join(names)}); "
                              "train one with `kd-system teacher train --env ENV_ID --algo ppo --out DIR` and set "
                              "teacher.checkpoint=DIR")
        return path
    return Path(checkpoint).expanduser()


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def limiter_of(config: RunConfig) -> SampleToInsertLimiter:
    lim = config.limiter
    return SampleToInsertLimiter(lim.min_size_to_sample, lim.samples_per_insert, lim.error_buffer)


def validate(config: RunConfig) -> None:
    """Range and consistency checks that need no I/O (env ids and teachers are checked at start-up)."""
    s, a, lrn, h = config.store, config.actors, config.learner, config.head
    _require(bool(config.env.id), "env.id must name a Gymnasium environment, e.g. CartPole-v1")
    for i, task in enumerate(config.tasks):
        _require(bool(task.env) and bool(task.teacher),
                 f"tasks[{i}] needs both env (a Gymnasium id) and teacher (a checkpoint directory or shipped:NAME)")
    names = [task.name for task in config.tasks]
    _require(len(set(names)) == len(names), "tasks: each env may appear once (one teacher per task)")
    _require(len(config.tasks) != 1, "tasks: list two or more tasks, or use env.id and teacher.checkpoint for one")
    _require(len(config.tasks) < 2 or len(config.student.hidden) >= 2,
             "student.hidden needs at least two layers for a multi-task student (the tasks share the layers between them)")
    _require(all(w > 0 for w in config.student.hidden), "student.hidden must list positive layer widths")
    _require(0 < config.student.max_param_fraction <= 1, "student.max_param_fraction must be in (0, 1]")
    _require(config.student.preset in ("nature", "rusu-25", "rusu-7", "rusu-4"),
             f"student.preset {config.student.preset!r} is unknown; use rusu-25, rusu-7, rusu-4 or nature")
    _require(s.capacity_states > 0 and s.chunk_states > 0, "store.capacity_states and store.chunk_states must be positive")
    _require(s.capacity_states >= 2 * s.chunk_states, "store.capacity_states must hold at least two chunks (2 × store.chunk_states)")
    if s.redis_url is not None:
        _require(s.redis_url.startswith("env:") or s.redis_url.split("://")[0] in ("redis", "rediss", "unix"),
                 "store.redis_url must start with redis://, rediss:// or unix://, or name a variable as env:NAME")
    _require((a.num_actors == "auto" or a.num_actors >= 1) and a.envs_per_actor >= 1,
             "actors.num_actors (a number or auto) and actors.envs_per_actor must be >= 1")
    _require(0.0 <= a.epsilon <= 1.0, "actors.epsilon must be in [0, 1]")
    _require(a.acting in ("teacher", "student", "mixed"), f"actors.acting {a.acting!r} is unknown; use teacher, student or mixed")
    _require(a.weights_refresh_steps >= 1, "actors.weights_refresh_steps must be >= 1")
    _require(0.0 <= a.teacher_share_start <= 1.0 and 0.0 <= a.teacher_share_end <= 1.0,
             "actors.teacher_share_start and actors.teacher_share_end must be in [0, 1]")
    _require(a.teacher_share_decay_updates >= 1, "actors.teacher_share_decay_updates must be >= 1")
    _require(a.num_cpus > 0 and lrn.num_cpus > 0 and h.evaluator_num_cpus > 0, "num_cpus settings must be > 0")
    validate_loss_spec(lrn.loss)
    _require(lrn.student_temperature is None or lrn.student_temperature > 0,
             "learner.student_temperature must be > 0 (or null to leave the student unsoftened)")
    _require(lrn.temperature is None or lrn.temperature > 0, "learner.temperature must be > 0 (or null for the default)")
    _require(lrn.batch_size >= 1 and lrn.lr > 0, "learner.batch_size must be >= 1 and learner.lr > 0")
    _require(lrn.lr_final is None or 0 < lrn.lr_final <= lrn.lr,
             "learner.lr_final must be > 0 and <= learner.lr (or null for a constant learning rate)")
    _require(lrn.lr_decay_updates >= 1, "learner.lr_decay_updates must be >= 1")
    _require(lrn.device in ("auto", "cpu", "cuda"), "learner.device must be auto, cpu or cuda")
    _require(lrn.precision in ("auto", "fp32", "bf16"), "learner.precision must be auto (bf16 on CUDA, fp32 on CPU), "
             "fp32 or bf16")
    check_deadlock_free(limiter_of(config), lrn.batch_size, s.chunk_states * a.chunks_per_write, s.capacity_states)
    _require(lrn.prefetch_batches >= 1 and lrn.prefetch_threads >= 1 and lrn.chunks_per_sample >= 1,
             "learner.prefetch_batches, prefetch_threads and chunks_per_sample must be >= 1")
    _require(config.lookahead.eta > 0, "lookahead.eta must be > 0 (reward units; 0.1 lets any clear return gain win)")
    _require(config.lookahead.horizon_steps is None or config.lookahead.horizon_steps >= 1,
             "lookahead.horizon_steps must be >= 1 (or null to roll out to the end of the episode)")
    _require(h.eval_episodes >= 1 and h.final_eval_episodes >= 1, "head.eval_episodes and head.final_eval_episodes must be >= 1")
    _require(h.snapshot_every_s > 0, "head.snapshot_every_s must be > 0")
    _require(h.keep_snapshots >= 1, "head.keep_snapshots must be >= 1")
    _require(h.evals_after_target >= 0, "head.evals_after_target must be >= 0 (0 stops at the first target score)")
    _require(h.max_updates is not None or h.max_wall_s is not None or h.target_score is not None,
             "set at least one stop condition: head.target_score, head.max_updates or head.max_wall_s")
    _require(h.run_name is None or re.fullmatch(r"[A-Za-z0-9._-]{1,128}", h.run_name) is not None,
             "head.run_name must be 1-128 letters, digits, '.', '_' or '-' (it names the run directory and the store namespace)")
