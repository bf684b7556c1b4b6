"""The ``env`` section: which Gymnasium environment a single-task run distils on."""
from __future__ import annotations

from pydantic import Field, StrictStr, field_validator

from kd_system.config_base import Section


class EnvConfig(Section):
    """The environment of a single-task run."""
    id: StrictStr = Field("CartPole-v1", description="Gymnasium id, e.g. CartPole-v1 or ALE/Pong-v5; "
                                                     "checked when the run starts (kd_system/envs/make.py)")

    @field_validator("id")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("env.id must name a Gymnasium environment, e.g. CartPole-v1")
        return value
