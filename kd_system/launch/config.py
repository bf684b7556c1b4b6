"""The ``head`` section: snapshots, evaluations and when the run stops."""
from __future__ import annotations

import re

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from kd_system.config_base import Number, Section


class HeadConfig(Section):
    """Snapshots, evaluations and when the run stops."""
    run_name: StrictStr | None = Field(None, description=(
        "names the run directory and the store namespace; null: the env id and the start time"))
    runs_dir: StrictStr = Field("runs", description="where run directories are created")
    snapshot_every_s: Number = Field(10.0, gt=0, description="seconds between student snapshots (each is evaluated)")
    snapshot_every_updates: StrictInt | None = Field(None, description="also snapshot every this many learner updates")
    keep_snapshots: StrictInt = Field(3, ge=1, description="newest snapshots kept on disk; the best so far is never pruned")
    eval_episodes: StrictInt = Field(20, ge=1, description="episodes per snapshot evaluation")
    final_eval_episodes: StrictInt = Field(50, ge=1, description="fresh episodes scoring the best snapshot at the end")
    heldout_states: StrictInt = Field(5_000, description="teacher-visited states kept to measure the student's KL on")
    evaluator_num_cpus: Number = Field(0.25, gt=0, description="Ray CPU reservation of the evaluator")
    target_score: Number | None = Field(1.0, description=(
        "stop when a snapshot's teacher-normalized score reaches this; null: no target"))
    evals_after_target: StrictInt = Field(0, ge=0, description=(
        "then train on for this many evaluations and keep the best snapshot; 0 stops at the first target score"))
    max_updates: StrictInt | None = Field(None, description="stop after this many learner updates; null: no limit")
    max_wall_s: Number | None = Field(150.0, description="stop after this many seconds; null: no limit")
    progress_every_s: Number = Field(2.0, description="seconds between progress lines")
    max_deaths: StrictInt = Field(3, ge=1, description=(
        "a component that dies this many times within death_window_s ends the run (with a summary, exit 1)"))
    death_window_s: Number = Field(60.0, gt=0, description="the window max_deaths counts deaths in")
    seed: StrictInt = 0

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and re.fullmatch(r"[A-Za-z0-9._-]{1,128}", value) is None:
            raise ValueError("head.run_name must be 1-128 letters, digits, '.', '_' or '-' (it names the run "
                             "directory and the store namespace)")
        return value

    @model_validator(mode="after")
    def _stops(self) -> HeadConfig:
        if self.max_updates is None and self.max_wall_s is None and self.target_score is None:
            raise ValueError("set at least one stop condition: head.target_score, head.max_updates or head.max_wall_s")
        return self
