"""Which snapshot is the run's best, and when reaching the target score stops the run.

Plain bookkeeping with no Ray in it: the head feeds it every finished evaluation and asks it
whether to stop; ``RunProgress`` keeps its pick in run_state.json so a resumed run knows it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kd_system.metrics import say

NAN = float("nan")


@dataclass(frozen=True)
class BestSnapshot:
    path: str
    score: float | None  # None: no evaluation finished, and the latest snapshot stands in at the end
    updates: int
    agreement: float = 0.0  # with the teacher on held-out states
    score_high: float = NAN  # upper end of the score's 95% CI

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "BestSnapshot | None":
        """The pick run_state.json recorded, if its snapshot is still on disk."""
        if not data or not Path(data["path"]).is_dir():
            return None
        return cls(data["path"], data["score"], data["updates"], data.get("agreement", 0.0), data.get("score_high", NAN))


def selection_key(score: float, agreement: float, score_high: float = NAN, *, target_score: float | None,
                  rank_by_agreement: bool) -> tuple:
    """Which snapshot is best (the higher key). Below the target score: the higher score (a score
    over a few episodes is what tells a weak student from a good one). At the target, meaning the
    score or the upper end of its 95% CI reaches it: the higher agreement with the teacher on
    held-out states. There a few-episode score is mostly noise: ranking by it, a lucky early
    snapshot (Acrobot: 1.010 at 98.8% agreement) beat later ones (0.998 at 99.8%) that play better.
    Students of lookahead labels are ranked by score throughout (``rank_by_agreement`` False): they
    are meant to depart from the teacher where rollouts found better actions, so agreement with it
    is no longer the aim."""
    rank = score if math.isfinite(score) else -math.inf  # NaN compares false with everything
    if rank_by_agreement and target_score is not None and (rank >= target_score or score_high >= target_score):
        return (1, agreement, rank)
    return (0, rank, agreement)


class SnapshotSelection:
    def __init__(self, target_score: float | None, evals_after_target: int, rank_by_agreement: bool,
                 best: BestSnapshot | None = None):
        self.target_score, self.evals_after_target = target_score, evals_after_target
        self.rank_by_agreement = rank_by_agreement
        self.best = best
        self.evaluations = 0  # in this session
        self.target_reached: tuple[int, float, int] | None = None  # (evaluations so far, score, updates)
        self._warned_undefined_score = False

    def key(self, score: float, agreement: float, score_high: float = NAN) -> tuple:
        return selection_key(score, agreement, score_high, target_score=self.target_score,
                             rank_by_agreement=self.rank_by_agreement)

    def record(self, snapshot: Path, updates: int, score: float, agreement: float, score_high: float) -> bool:
        """Count one finished evaluation of ``snapshot``; True if it became the best (a snapshot
        pruned while it was evaluated counts, but cannot be picked)."""
        self.evaluations += 1
        if not math.isfinite(score) and not self._warned_undefined_score:
            self._warned_undefined_score = True
            say("the teacher scored no better than a random policy on the evaluation episodes, so the "
                "teacher-normalized score is undefined (nan); snapshots are ranked by agreement with the teacher")
        best = self.best
        # not "<": a NaN agreement (a multi-task run without held-out states) compares false both ways
        if not snapshot.is_dir() or (best is not None and not self.key(score, agreement, score_high) >=
                                     self.key(best.score, best.agreement, best.score_high)):
            return False
        self.best = BestSnapshot(str(snapshot), score, updates, agreement, score_high)
        return True

    def target_stop(self, score: float, updates: int) -> str | None:
        """After ``record``: why the run stops, once the target score is reached or that many
        evaluations after it (head.evals_after_target); None while it trains on."""
        target, extra = self.target_score, self.evals_after_target
        if target is None:
            return None
        if self.target_reached is None:
            if not score >= target:
                return None
            self.target_reached = (self.evaluations, score, updates)
            if extra:
                say(f"target score {target} reached (score {score:.3f} at update {updates}); "
                    f"training on for {extra} more evaluations to pick the best snapshot")
        at_eval, first_score, first_updates = self.target_reached
        more = self.evaluations - at_eval
        if more < extra:
            return None
        return (f"target score {target} reached (score {first_score:.3f} at update {first_updates})"
                + (f", then {more} more evaluations" if more else ""))

    def best_or_latest(self, latest: Path, updates: int) -> BestSnapshot:
        """The snapshot the final evaluation scores: the best, or ``latest`` when none was evaluated."""
        if self.best is None:
            self.best = BestSnapshot(str(latest), None, updates)
        return self.best
