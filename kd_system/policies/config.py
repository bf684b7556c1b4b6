"""The ``student`` section: the network being distilled."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt, StrictStr, field_validator

from kd_system.config_base import Number, Section, one_of
from kd_system.policies.presets import CNN_PRESETS

PRESET_NAMES = tuple(CNN_PRESETS)
CnnPreset = Literal[PRESET_NAMES]  # type: ignore[valid-type]  # so the JSON Schema lists the names


class StudentConfig(Section):
    """The student network: an MLP for vector observations, a CNN preset for Atari frames."""
    hidden: tuple[StrictInt, ...] = Field((64, 64), description=(
        "MLP students: the widths of the hidden layers; [] is a linear policy (one Linear layer)"))
    activation: StrictStr = Field("relu", description=(
        "of the hidden layers, e.g. relu or tanh (kd_system/policies/networks.py)"))
    max_param_fraction: Number = Field(0.10, gt=0, le=1, description=(
        "refuse students with more parameters than this share of the teacher's"))
    preset: CnnPreset = Field("rusu-7", description="CNN students for Atari tasks; hidden is for MLPs")

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not all(width > 0 for width in value):
            raise ValueError("student.hidden must list positive layer widths")
        return value

    @field_validator("preset", mode="before")
    @classmethod
    def _known_preset(cls, value: object) -> object:
        if value not in PRESET_NAMES:  # a tuple: an unhashable value is simply not in it
            raise ValueError(f"student.preset {value!r} is unknown; use {one_of(PRESET_NAMES)}")
        return value
