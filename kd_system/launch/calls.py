"""What the head remembers about each remote call in flight, so that its result is handled as the
call it answers. A record per kind of call: a misspelt field fails where the call is made."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class CollectCall:
    actor_index: int  # into Components.collectors


@dataclass(frozen=True)
class TrainCall:
    pass


@dataclass(frozen=True)
class BaselinesCall:
    task_index: int


@dataclass(frozen=True)
class SnapshotCall:
    """The learner's state, for a snapshot."""


@dataclass(frozen=True)
class RestoreCall:
    """A replacement learner loading the latest snapshot; it trains once this is done."""
    snapshot: Path | None  # None: no snapshot yet, it starts from scratch


@dataclass(frozen=True)
class EvalCall:
    """One task's evaluation of a snapshot; the snapshot is scored once every task's is in."""
    snapshot: Path
    updates: int
    env_steps: int
    task_index: int


Call = Union[CollectCall, TrainCall, BaselinesCall, SnapshotCall, RestoreCall, EvalCall]
LEARNER_CALLS = (TrainCall, SnapshotCall, RestoreCall)
