"""The ``teacher`` section: the frozen policy a single-task run distils, how to import it when
it is another library's file (teachers/imports/; the same options as ``kd-system teacher import``),
and the engine the actors label with (teachers/engines.py); a multi-task run's tasks share the
import options and the engine."""
from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

from pydantic import Field, StrictBool, StrictStr, field_validator, model_validator

from kd_system.config_base import Number, Section

FORMATS = ("sb3", "cleanrl", "rllib", "torchscript", "onnx")
LAYOUTS = ("chw", "hwc")
# What the actors label with (teachers/engines.py); kept here, free of torch, for the config check.
ENGINES = ("torch", "torchscript", "onnxruntime", "onnxruntime-int8")


# One checkpoint, or several whose tempered policies are averaged into one teacher (teachers/ensemble.py).
Checkpoints = Union[StrictStr, tuple[StrictStr, ...]]
HOW_TO_LIST = "e.g. [shipped:cartpole-v1, teachers/cartpole-seed1] (on the command line: --set teacher.checkpoint=[A,B])"


def checkpoint_list(value: Any, field: str, empty_ok: bool = False) -> Any:
    """The before-check of a teacher field: a string, or a non-empty list of strings, as a tuple.
    ``empty_ok``: an empty list passes, for a check that can name where it is (tasks[i])."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{field}: expected a checkpoint or a list of checkpoints, got {value!r}")
    if not value and not empty_ok:
        raise ValueError(f"{field} is an empty list; give one checkpoint or a list of several, {HOW_TO_LIST}")
    bad = next((item for item in value if not isinstance(item, str) or not item.strip()), None)
    if bad is not None:
        raise ValueError(f"{field}: {bad!r} in the list is not a checkpoint path; list paths or shipped:NAME, {HOW_TO_LIST}")
    return tuple(value)


class TeacherConfig(Section):
    """The frozen policy a single-task run distils."""
    checkpoint: Checkpoints = Field("shipped:cartpole-v1", description=(
        "a checkpoint directory in the project's format (spec.json + model.safetensors), shipped:NAME for a "
        "teacher bundled in kd_system/teachers/, or another library's file, imported on the fly into the run "
        "directory: a Stable-Baselines3 .zip, a CleanRL .cleanrl_model, an RLlib checkpoint directory "
        "(needs trust_pickle), a TorchScript .pt or an .onnx (needs output_kind). A list of them makes an "
        "ensemble: the labels are the (weighted) mean of their tempered policies"))
    weights: Optional[tuple[Number, ...]] = Field(None, description=(
        "ensembles: one non-negative weight per checkpoint in the list, normalised to sum to 1; null: equal"))
    format: Optional[Literal[FORMATS]] = Field(None, description=(  # type: ignore[valid-type]
        "the imported file's format; null detects it"))
    trust_pickle: StrictBool = Field(False, description=(
        "allow loading pickles (RLlib checkpoints, SB3 vecnormalize.pkl); they can run code: only for files "
        "you trust (kd-system run --trust-pickle)"))
    output_kind: Optional[Literal["q", "logits"]] = Field(None, description="TorchScript/ONNX teachers: what they output")
    obs_layout: Literal[LAYOUTS] = Field("chw", description=(  # type: ignore[valid-type]
        "TorchScript/ONNX Atari teachers: frame stacks channels first (chw) or last (hwc)"))
    obs_scale: Number = Field(1.0, gt=0, description="TorchScript/ONNX: the network takes observations times this")
    vecnormalize: Optional[StrictStr] = Field(None, description="SB3: VecNormalize statistics file (needs trust_pickle)")
    trained_env: Optional[StrictStr] = Field(None, description="the env id the imported teacher was trained on, if known")
    engine: Literal[ENGINES] = Field("torch", description=(  # type: ignore[valid-type]
        "what the actors label with, built once at the run's start and shipped to them: torch (the checkpoint's "
        "own fp32 network), torchscript (traced and frozen), onnxruntime (fp32 ONNX) or onnxruntime-int8 (int8 "
        "ONNX: dynamic for MLPs, static with calibration states for CNNs); every task's teacher in a multi-task "
        "run. The evaluator keeps fp32 torch, the reference"))
    engine_agreement_floor: Number = Field(0.995, ge=0, le=1, description=(
        "the run is refused at its start if the engine picks the same greedy action as fp32 torch on fewer than "
        "this fraction of held-out states of the env"))

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _checkpoints(cls, value: Any) -> Any:
        return checkpoint_list(value, "teacher.checkpoint")

    @model_validator(mode="after")
    def _weights_fit(self) -> "TeacherConfig":
        if self.weights is None:
            return self
        count = 1 if isinstance(self.checkpoint, str) else len(self.checkpoint)
        if len(self.weights) != count:
            raise ValueError(f"teacher.weights has {len(self.weights)} entries but teacher.checkpoint lists {count} "
                             "teacher(s); give one weight per checkpoint, or null for equal weights")
        if min(self.weights) < 0 or not 0 < sum(self.weights) < math.inf:
            raise ValueError(f"teacher.weights {list(self.weights)} must be finite and non-negative with a positive sum "
                             "(they are normalised to sum to 1)")
        return self
