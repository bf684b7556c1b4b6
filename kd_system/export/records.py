"""The export stage's records and fixed settings: what is asked, what is exported, what was measured."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_system.policies.files import PolicyBundle, PolicySpec

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
CALIBRATIONS = ("teacher", "store")
INPUT_NAME = "obs"
OPSET = 18  # >= 17 asked for; 18 is what onnxruntime >= 1.14 and TensorRT 8.6 all run
PARITY_STATES = 1000
PARITY_SEED = 12345  # held out: calibration rollouts use CALIBRATION_SEED, env_states seeds seed..seed+7
CALIBRATION_SEED = 0
CALIBRATION_EPSILON = 0.05  # the Atari evaluation protocol's epsilon (envs/protocol.py), for every env
DEFAULT_CALIBRATION_STATES = 1024
FP32_TOLERANCE = 1e-4
SIDECAR_FORMAT = "kd_system.export"
SIDECAR_VERSION = 1


@dataclass(frozen=True)
class ExportRequest:
    checkpoint: Path
    fmt: str
    out: Path
    int8: bool = False
    calibration: str | None = None  # None: the recorded teacher, where one is needed and recorded
    calibration_states: int = DEFAULT_CALIBRATION_STATES
    force: bool = False


@dataclass(frozen=True)
class Source:
    """One network to export: a single-task checkpoint, or one task of a multi-task snapshot."""
    bundle: PolicyBundle
    path: Path  # the checkpoint directory holding this network
    task: str | None = None

    @property
    def spec(self) -> PolicySpec:
        return self.bundle.spec


@dataclass(frozen=True)
class CalibrationPlan:
    teacher: Path
    env_id: str
    count: int
    seed: int = CALIBRATION_SEED
    epsilon: float = CALIBRATION_EPSILON

    def to_json(self) -> dict[str, Any]:
        return {"kind": "teacher", "teacher": str(self.teacher), "env_id": self.env_id, "count": self.count,
                "seed": self.seed, "epsilon": self.epsilon, "policy": "teacher greedy, epsilon-random actions"}


@dataclass(frozen=True)
class Exported:
    """A file's bytes, held in memory until parity passes, so a refusal writes nothing."""
    data: bytes
    fmt: str
    exporter: str
    opset: int | None
    quantization: dict[str, Any] | None = None


@dataclass(frozen=True)
class Parity:
    env_id: str
    states: int
    seed: int
    max_abs_diff: float
    max_abs_output: float  # the source's largest |output|: the scale max_abs_diff is read against
    greedy_agreement: float
    disagreements: int
    # argmax changes where the source's own top actions are within FP32_TOLERANCE: ties, which
    # float rounding may break either way, so they do not fail the fp32 gate
    disagreements_at_ties: int
    kl_mean: float | None  # logits only: mean KL(softmax(source) || softmax(exported)), tau = 1

    @property
    def fp32_limit(self) -> float:
        """FP32_TOLERANCE in the outputs' units: float32 rounding grows with their magnitude (Q-values
        in the hundreds differ by ~1e-5 from reordered sums alone), so it scales above |output| 1."""
        return FP32_TOLERANCE * max(1.0, self.max_abs_output)

    def passes_fp32(self) -> bool:
        return self.max_abs_diff <= self.fp32_limit and self.disagreements == self.disagreements_at_ties


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    parity: Parity
    precision: str


def input_dtype(spec: PolicySpec) -> str:
    """What the exported file takes: uint8 pixels as they come (the graph scales them), else float32."""
    return "uint8" if spec.obs_dtype == "uint8" else "float32"


def exported_network(fmt: str, dtype: str) -> dict[str, Any]:
    """The policy-runtime spec (policies/opaque.py) of an exported file: scaling is inside the file."""
    return {"kind": fmt, "input_layout": "chw", "input_scale": 1.0, "input_dtype": dtype}
