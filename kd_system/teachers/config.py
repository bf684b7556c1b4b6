"""The ``teacher`` section: the frozen policy a single-task run distils."""
from __future__ import annotations

from pydantic import Field, StrictStr

from kd_system.config_base import Section


class TeacherConfig(Section):
    """The frozen policy a single-task run distils."""
    checkpoint: StrictStr = Field("shipped:cartpole-v1", description=(
        "a checkpoint directory in the project's format (spec.json + model.safetensors), or shipped:NAME "
        "for a teacher bundled in kd_system/teachers/"))
