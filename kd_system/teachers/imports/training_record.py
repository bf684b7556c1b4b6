"""``teacher import --training FILE``: how the source was trained, for its model card.

A library's file says what the network is, not how long it took to make: an SB3 zip holds its
step count but not its wall time, hardware or how many parts the training ran in. A card that
says what a teacher cost needs those, so whoever trained it can hand them over as a small JSON
file (the project's SB3 driver writes one beside ``best.zip``: experiments/sb3_teacher.py):

    {"trainer": "Stable-Baselines3 2.9.2 DQN", "env_steps": 1200000, "wall_s": 50000,
     "hardware": "2 CPU cores (AMD EPYC)", "parts": 9, "evaluations": [{"env_steps": 50000, "mean": -20.75}]}

It is JSON read by pydantic, never a pickle; a bad file fails in one line naming the file and field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, StrictInt, StrictStr, ValidationError

from kd_system.config_base import Number, Section, config_error
from kd_system.errors import ConfigError


class Evaluation(Section):
    env_steps: StrictInt = Field(ge=0)
    mean: Number


class TrainingRecord(Section):
    trainer: StrictStr = Field(min_length=1)  # library, its version and the algorithm
    env_steps: StrictInt = Field(gt=0)  # to the weights being imported
    wall_s: Number = Field(gt=0)  # training wall time to those weights, all parts together
    hardware: StrictStr | None = None
    parts: StrictInt | None = Field(default=None, ge=1)  # resumed runs: how many pieces it ran in
    settings: StrictStr | None = None  # hyperparameters in a line, or where they are written down
    evaluations: tuple[Evaluation, ...] = ()  # the training's own periodic evaluations
    evaluation_protocol: StrictStr | None = None  # how those were played (games, epsilon)
    command: StrictStr | None = None

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.wall_s


def load_training_record(path: Path) -> TrainingRecord:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--training {path}: no such file; pass the training record's JSON") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--training {path}: not a JSON file ({exc}); pass the training record's JSON") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--training {path}: expected a JSON object with trainer, env_steps and wall_s")
    try:
        return TrainingRecord.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"--training {path}: {config_error(exc, TrainingRecord)}") from None


def card_fields(record: TrainingRecord) -> dict[str, Any]:
    """The record as the card keeps it (spec.json), steps/s worked out."""
    return {**record.model_dump(mode="json", exclude_none=True), "steps_per_s": round(record.steps_per_s, 2)}


def markdown_rows(training: dict[str, Any]) -> str:
    """The card's training rows (an empty string when no record was given)."""
    if not training:
        return ""
    rows = [("Trained with", training["trainer"]),
            ("Env steps to these weights", f"{training['env_steps']:,}"),
            ("Training wall time", f"{training['wall_s']:,.0f} s ({training['wall_s'] / 3600:.1f} h)"
             + (f" in {training['parts']} parts" if training.get("parts") else "")),
            ("Env steps/s", f"{training['steps_per_s']:,.1f}")]
    rows += [(label, training[key]) for key, label in (("hardware", "Hardware"), ("settings", "Settings"),
                                                       ("command", "Command")) if training.get(key)]
    evaluations = training.get("evaluations") or []
    if evaluations:
        curve = ", ".join(f"{e['mean']:+.2f} at {e['env_steps']:,}" for e in evaluations)
        protocol = f" ({training['evaluation_protocol']})" if training.get("evaluation_protocol") else ""
        rows.append((f"Its evaluations while training{protocol}", curve))
    return "".join(f"| {label} | {value} |\n" for label, value in rows)
