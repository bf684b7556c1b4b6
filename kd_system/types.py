"""Frozen records for everything that crosses a process or the replay store.

A misspelt field fails where the record is built, not three processes later where a dict key
would have been missing. Records hold plain values and numpy arrays only, so Ray can ship them
and the store can encode them without pickle.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only named in annotations: types.py stays importable without torch
    from kd_system.policies.files import PolicyBundle


@dataclass(frozen=True)
class LabelledStates:
    """States with the teacher's labels and the actions taken: a chunk's payload or a sampled batch."""
    obs: np.ndarray
    teacher_out: np.ndarray  # the labels: the teacher's outputs, or the improved policy's logits (lookahead)
    action: np.ndarray

    def __post_init__(self) -> None:
        sizes = {len(self.obs), len(self.teacher_out), len(self.action)}
        if len(sizes) != 1:
            raise ValueError(f"labelled states disagree on their count: obs {len(self.obs)}, "
                             f"teacher_out {len(self.teacher_out)}, action {len(self.action)}")

    def __len__(self) -> int:
        return len(self.action)

    def arrays(self) -> dict[str, np.ndarray]:
        """The named arrays as the chunk codec stores them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def head(self, count: int) -> "LabelledStates":
        return LabelledStates(self.obs[:count], self.teacher_out[:count], self.action[:count])

    def tail(self, start: int) -> "LabelledStates":
        return LabelledStates(self.obs[start:], self.teacher_out[start:], self.action[start:])

    @staticmethod
    def concatenate(parts: list["LabelledStates"]) -> "LabelledStates":
        return LabelledStates(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(LabelledStates)))


@dataclass(frozen=True)
class ChunkMeta:
    """Who labelled a chunk and how: the JSON header beside its arrays."""
    actor_id: int
    task_id: int = 0
    behaviour: str = "teacher"  # who acted: teacher | student | mixed
    policy_version: int = -1  # the student weight version that acted (-1: the teacher)
    teacher_share: float = 1.0  # mixed acting: the probability that the teacher acted
    labels: str = "teacher"  # teacher | lookahead

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelledChunk:
    """One actor's write to the replay store: up to store.chunk_states labelled states."""
    states: LabelledStates
    meta: ChunkMeta

    def __len__(self) -> int:
        return len(self.states)


# ---- what the components' calls return to the head ---------------------------------------------
# Ray ships these between processes. Where a dict is wanted (the metrics log, summary.json) they are
# turned into one with dataclasses.asdict, so the logged keys are the field names below.

@dataclass(frozen=True)
class CollectReport:
    """A collector's counters since it started (cumulative), and the episodes finished since its last call."""
    actor_id: int
    env_steps: int
    rollout_steps: int  # env steps the lookahead labeller simulated (0 without lookahead)
    states_written: int
    episode_returns: list[float]
    time_env_s: float
    time_teacher_s: float
    time_store_s: float
    time_wait_limiter_s: float
    policy_version: int  # the student weight version that acted (-1: the teacher)


@dataclass(frozen=True)
class TrainReport:
    """One learner call: its counters in all, and what this call did and waited for."""
    updates: int
    samples: int
    loss: float | None  # mean over this call's updates; None when it made none
    updates_in_call: int
    replay_ratio: float
    call_s: float
    wait_input_frac: float
    wait_limiter_frac: float
    device: str
    precision: str  # bf16 | fp32
    corrupt_chunks: int = 0  # replay chunks that failed to decode and were skipped, in all


@dataclass(frozen=True)
class LearnerState:
    """Everything a snapshot needs from the learner, as plain bytes and numbers (no live objects)."""
    students: list[PolicyBundle]  # one per task
    optimizer: bytes
    updates: int
    samples: int


@dataclass(frozen=True)
class Baselines:
    """Teacher and random-policy returns on seeds [seed, seed + episodes)."""
    teacher_return_mean: float
    teacher_return_std: float
    random_return_mean: float
    random_return_std: float
    episodes: int
    seed: int
    kl_temperature: float
    heldout_states: int


@dataclass(frozen=True)
class EvalReport:
    """A student's greedy episodes, scored against the teacher's on the same seeds. The figures on
    teacher / student states are None when there were no such states to compare on."""
    student_return_mean: float
    student_return_std: float
    student_returns: list[float]
    episodes: int
    seed: int
    env_steps: int
    teacher_return_mean: float
    random_return_mean: float
    normalized_score: float
    normalized_score_ci95: list[float]  # [low, high]
    # the bounds again as scalars: TensorBoard plots scalars only
    normalized_score_ci95_low: float
    normalized_score_ci95_high: float
    # what a multi-task run needs to put an interval on its mean over tasks
    normalized_score_se: float
    normalized_score_dof: int
    agreement_teacher_states: float | None = None
    kl_teacher_states: float | None = None
    disagreement_margin_teacher_states: float | None = None
    agreement_student_states: float | None = None
    kl_student_states: float | None = None
    disagreement_margin_student_states: float | None = None

    def record(self) -> dict:
        """The report as metrics.jsonl and eval.json keep it: figures that could not be measured
        are left out rather than written as null, as they always were."""
        return {key: value for key, value in asdict(self).items() if value is not None}
