"""What an importer is given and what it hands back: plain frozen records, so every format module
(sb3.py, cleanrl.py, rllib.py, opaque.py) has the same shape and the driver (importer.py) does the
checks, the parity measurement and the writing once."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kd_system.envs.make import EnvSpaces
from kd_system.teachers.config import FORMATS, LAYOUTS  # noqa: F401  (re-exported: the importers' names)
# Parity is compared on what the teacher's labels mean: raw outputs (Q-values), or log-probabilities
# for policies whose library normalises its logits (a softmax does not see a constant shift).
COMPARE_OUTPUTS, COMPARE_LOG_PROBS = "outputs", "log_probs"


@dataclass(frozen=True)
class ImportOptions:
    """What the user said about the source beyond the file itself."""
    env_id: str
    trust_pickle: bool = False  # RLlib checkpoints and VecNormalize statistics are pickles
    output_kind: str | None = None  # opaque formats (torchscript, onnx): "q" or "logits"; required there
    obs_layout: str = "chw"  # opaque pixel teachers: the frame stack layout the network takes
    obs_scale: float = 1.0  # opaque teachers: the network takes our observations times this (1/255: [0, 1] pixels)
    vecnormalize: Path | None = None  # SB3: the VecNormalize statistics saved beside the zip
    trained_env: str | None = None  # the env id the source was trained on, if the user knows it


@dataclass(frozen=True)
class Converted:
    """One source network in the project's terms. ``weights`` are safetensors bytes for our network
    kinds, or the file's own bytes for the opaque kinds (``policies/opaque.py``)."""
    network: dict[str, Any]
    weights: bytes
    obs_shape: tuple[int, ...]  # the observations the converted network takes, in our pipeline's layout
    num_actions: int
    output_kind: str  # "q" or "logits"
    library: str  # "stable-baselines3", "sb3-contrib", "cleanrl", "ray[rllib]", "torch", "onnx"
    library_version: str  # as recorded in the file where it says, else "unknown"
    algorithm: str  # "DQN", "QR-DQN", "PPO", "A2C", ... or "unknown" for opaque files
    source_params: int  # parameters of the policy path in the source (dueling and quantile heads included)
    # The source library's own forward on our pipeline's observations (numpy in, numpy out), or None
    # when that library is not installed here; reference_name says which forward, or why none.
    reference: Callable[[np.ndarray], np.ndarray] | None
    reference_name: str
    compare: str = COMPARE_OUTPUTS
    protocol: dict[str, Any] = field(default_factory=dict)  # see protocol.py
    notes: tuple[str, ...] = ()  # what a reader of the card should know (folds, assumptions)


# A format module's entry point: ``convert(source, spaces of --env, options) -> Converted``. It raises
# CheckpointError (one line naming the file, the field or layer, and the fix) for anything it
# cannot read; the driver checks the result against the env.
Converter = Callable[[Path, EnvSpaces, ImportOptions], Converted]
