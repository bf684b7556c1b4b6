"""The ``actors`` section (who acts while collecting, and how many collect) and the ``lookahead``
section (labels improved by teacher rollouts; kd_system/actors/lookahead.py)."""
from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator

from kd_system.config_base import Number, Section, count_or_auto, one_of

# Who picks actions (kd_system/actors/behaviour.py); kept here, free of torch, for the config check.
ActingMode = Literal["teacher", "student", "mixed"]
ACTING_MODES: tuple[str, ...] = typing.get_args(ActingMode)


class ActorConfig(Section):
    """The collectors: how many, how many envs each, and who picks the actions."""
    num_actors: typing.Annotated[StrictInt, Field(ge=1)] | Literal["auto"] = Field(2, description=(
        "collector processes per task; auto: as many as the cluster has room for (kd_system/launch/cluster_info.py)"))
    envs_per_actor: typing.Annotated[StrictInt, Field(ge=1)] | Literal["auto"] = Field("auto", description=(
        "vectorised envs stepped together by each actor; auto: 64 for Atari (the teacher's batches then run "
        "near its best forward rate), 8 otherwise (kd_system/envs/vector.py)"))
    env_groups: Literal[1, 2, "auto"] = Field("auto", description=(
        "Atari: groups an actor's envs step in; with 2 the teacher labels one while the other emulates, "
        "with 1 they take turns. auto: 2, the faster on the 2-core machine even with one CPU per actor "
        "(kd_system/envs/vector.py)"))
    epsilon: Number = Field(0.05, ge=0, le=1, description="the acting policy explores with this probability")
    acting: ActingMode = Field("teacher", description=(
        "who picks actions (kd_system/actors/behaviour.py); the teacher labels every state"))
    weights_refresh_steps: StrictInt = Field(1_000, ge=1, description=(
        "student/mixed: env steps per actor between pulls of the newest student weights"))
    teacher_share_start: Number = Field(1.0, ge=0, le=1, description=(
        "mixed: probability the teacher acts, at update 0 ..."))
    teacher_share_end: Number = Field(0.0, ge=0, le=1, description="... falling linearly to this ...")
    teacher_share_decay_updates: StrictInt = Field(2_000, ge=1, description="... over this many learner updates")
    chunks_per_write: StrictInt = Field(1, description="chunks an actor labels before one write to the store")
    num_cpus: Number = Field(0.25, gt=0, description="Ray CPU reservation per actor")
    torch_threads: StrictInt = Field(1, description="torch threads per actor for labelling")
    ray_resource: StrictStr | None = Field(None, description=(
        "a custom Ray node resource actors require, pinning them to the nodes that offer it"))

    @field_validator("num_actors", mode="before")
    @classmethod
    def _count_or_auto(cls, value: object) -> object:
        return count_or_auto(value, "actors.num_actors", 1)

    @field_validator("envs_per_actor", mode="before")
    @classmethod
    def _envs_or_auto(cls, value: object) -> object:
        return count_or_auto(value, "actors.envs_per_actor", 1)

    @field_validator("env_groups", mode="before")
    @classmethod
    def _groups(cls, value: object) -> object:
        if value not in ("auto", 1, 2) or isinstance(value, bool):
            raise ValueError(f"actors.env_groups {value!r}: use 1, 2 or auto")
        return value

    @field_validator("acting", mode="before")
    @classmethod
    def _known_mode(cls, value: object) -> object:
        if value not in ACTING_MODES:
            raise ValueError(f"actors.acting {value!r} is unknown; use {one_of(ACTING_MODES)}")
        return value


class LookaheadConfig(Section):
    """Label states with a rollout-improved teacher instead of the teacher: the student can then
    outscore its teacher. Only for envs whose state copies exactly."""
    enabled: StrictBool = Field(False, description="every task's default; a task's own lookahead overrides it")
    eta: Number = Field(0.1, gt=0, description=(
        "reward units: rollout-return differences well above this override the teacher"))
    horizon_steps: StrictInt | None = Field(None, ge=1, description=(
        "null: roll out to the episode's end (needs an env with a time limit)"))
