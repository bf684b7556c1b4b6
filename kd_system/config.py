"""One typed, frozen configuration for a run, loaded from YAML plus ``--set key=value`` overrides.

Each stage owns its section (``kd_system/<stage>/config.py``), checked next to its fields;
:class:`RunConfig` composes them and adds the checks that span sections. Everything runs before
Ray or Redis start, stays free of torch so the CLI's first error is fast, and every error is one
line naming its field. ``kd-system config schema`` prints the JSON Schema editors can check files with.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, StrictBool, StrictStr, ValidationError, field_validator, model_validator

from kd_system.actors.config import ActorConfig, LookaheadConfig
from kd_system.config_base import Section, config_error
from kd_system.envs.config import EnvConfig
from kd_system.errors import ConfigError
from kd_system.launch.config import HeadConfig
from kd_system.learner.config import LearnerConfig
from kd_system.policies.config import StudentConfig
from kd_system.replay.config import LimiterConfig, StoreConfig
from kd_system.replay.rate_limit import SampleToInsertLimiter, check_deadlock_free
from kd_system.replay.urls import holds_password, mask_url
from kd_system.teachers.config import Checkpoints, TeacherConfig, checkpoint_list

__all__ = ["ActorConfig", "EnvConfig", "HeadConfig", "LearnerConfig", "LimiterConfig", "LookaheadConfig",
           "RunConfig", "StoreConfig", "StudentConfig", "TaskConfig", "TeacherConfig", "PACKAGE_DIR",
           "SHIPPED_PREFIX", "apply_overrides", "from_dict", "limiter_of", "load_config", "resolve_config_path",
           "resolve_teacher_path", "save_config", "to_dict"]

SHIPPED_PREFIX = "shipped:"
PACKAGE_DIR = Path(__file__).resolve().parent


class TaskConfig(Section):
    """One task of a multi-task run: an env and the teacher that plays it."""
    env: StrictStr = Field("", description="Gymnasium id of the task's environment")
    teacher: Checkpoints = Field("", description=(
        "the task's teacher: a checkpoint directory or shipped:NAME; a list: an equally weighted ensemble"))
    lookahead: StrictBool | None = Field(None, description="null: the lookahead section's enabled")

    @field_validator("teacher", mode="before")
    @classmethod
    def _checkpoints(cls, value: Any) -> Any:
        return checkpoint_list(value, "tasks[].teacher", empty_ok=True)  # RunConfig names the task

    @property
    def name(self) -> str:  # names the task's store namespace and snapshot folder
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.env).lower()


class RunConfig(Section):
    """A run: a teacher (or one per task) distilled into a student by actors, a replay store and a learner."""
    env: EnvConfig = EnvConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    store: StoreConfig = StoreConfig()
    actors: ActorConfig = ActorConfig()
    learner: LearnerConfig = LearnerConfig()
    limiter: LimiterConfig = LimiterConfig()
    head: HeadConfig = HeadConfig()
    lookahead: LookaheadConfig = LookaheadConfig()
    tasks: tuple[TaskConfig, ...] = Field((), description=(
        "several tasks distilled into one student with a shared trunk; when set, env and teacher are unused"))

    def task_list(self) -> tuple[TaskConfig, ...]:
        """The tasks with ``lookahead`` resolved to true or false."""
        tasks = self.tasks or (TaskConfig(env=self.env.id, teacher=self.teacher.checkpoint),)
        default = self.lookahead.enabled
        return tuple(t.model_copy(update={"lookahead": default if t.lookahead is None else t.lookahead}) for t in tasks)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # YAML reads a section with no keys under it (``learner:``) as null: the section's defaults.
        sections = {name for name, field in cls.model_fields.items()
                    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)}
        return {key: {} if value is None and key in sections else value for key, value in data.items()}

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        for i, task in enumerate(self.tasks):
            if not (task.env and task.teacher):
                raise ValueError(f"tasks[{i}] needs both env (a Gymnasium id) and teacher (a checkpoint directory "
                                 "or shipped:NAME, or a non-empty list of them)")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("tasks: each env may appear once (one teacher per task)")
        if len(self.tasks) == 1:
            raise ValueError("tasks: list two or more tasks, or use env.id and teacher.checkpoint for one")
        if len(self.tasks) >= 2 and len(self.student.hidden) < 2:
            raise ValueError("student.hidden needs at least two layers for a multi-task student (the tasks share "
                             "the layers between them)")
        # Its ConfigError passes through pydantic unchanged (pydantic wraps only ValueError and AssertionError).
        check_deadlock_free(limiter_of(self), self.learner.batch_size,
                            self.store.chunk_states * self.actors.chunks_per_write, self.store.capacity_states)
        return self


def limiter_of(config: RunConfig) -> SampleToInsertLimiter:
    lim = config.limiter
    return SampleToInsertLimiter(lim.min_size_to_sample, lim.samples_per_insert, lim.error_buffer)


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain YAML-safe values: lists for tuples."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(config.model_dump())


def from_dict(data: Any) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, RunConfig) from None


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


# What a saved config names instead of a store URL that holds a password (launch/secrets.py resolves it).
REDIS_URL_ENV = "KD_REDIS_URL"


def save_config(config: RunConfig, path: Path) -> None:
    """The config as YAML, never with a secret: a ``store.redis_url`` that holds a password is saved as
    ``env:KD_REDIS_URL``, which ``--resume`` reads from the environment again."""
    data = to_dict(config)
    url = data.get("store", {}).get("redis_url")
    if holds_password(url):
        data["store"]["redis_url"] = f"env:{REDIS_URL_ENV}"
        print(f"kd-system: note: store.redis_url ({mask_url(url)}) holds a password, so {path} names "
              f"env:{REDIS_URL_ENV} instead; to --resume, export {REDIS_URL_ENV} with that URL", file=sys.stderr)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def resolve_teacher_path(checkpoint: str) -> Path:
    if checkpoint.startswith(SHIPPED_PREFIX):
        name = checkpoint[len(SHIPPED_PREFIX):]
        path = PACKAGE_DIR / "teachers" / name
        if not path.is_dir():
            names = sorted(p.parent.name for p in (PACKAGE_DIR / "teachers").glob("*/spec.json"))  # not __pycache__
            raise ConfigError(f"teacher.checkpoint: no shipped teacher {name!r} (shipped: {', '.join(names)}); "
                              "import yours with `kd-system teacher import SOURCE --env ENV_ID --out DIR` (SB3, CleanRL, "
                              "RLlib, TorchScript, ONNX) or train one with `kd-system teacher train --env ENV_ID "
                              "--algo ppo --out DIR`, and set teacher.checkpoint=DIR")
        return path
    return Path(checkpoint).expanduser()
