"""The ``teacher`` section: the frozen policy a single-task run distils, and how to import it when
it is another library's file (teachers/imports/; the same options as ``kd-system teacher import``)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, StrictBool, StrictStr

from kd_system.config_base import Number, Section

FORMATS = ("sb3", "cleanrl", "rllib", "torchscript", "onnx")
LAYOUTS = ("chw", "hwc")


class TeacherConfig(Section):
    """The frozen policy a single-task run distils."""
    checkpoint: StrictStr = Field("shipped:cartpole-v1", description=(
        "a checkpoint directory in the project's format (spec.json + model.safetensors), shipped:NAME for a "
        "teacher bundled in kd_system/teachers/, or another library's file, imported on the fly into the run "
        "directory: a Stable-Baselines3 .zip, a CleanRL .cleanrl_model, an RLlib checkpoint directory "
        "(needs trust_pickle), a TorchScript .pt or an .onnx (needs output_kind)"))
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
