"""How episodes of an env are scored: the evaluation protocol's per-env settings.

Atari games are played epsilon-greedy with epsilon 0.05, the evaluation protocol of Mnih et al.
(2015) that Rusu et al. (2015) also scored students with. A purely greedy policy can stall
forever where the game needs FIRE to serve (Breakout after each lost life), and the score would
then say nothing about how it plays. Classic-control envs are played greedily.
"""
from __future__ import annotations

from kd_system.envs import atari

ATARI_EVAL_EPSILON = 0.05
# Quick evaluations that only rank snapshots (teacher selection) cut Atari games at 5 minutes of
# play (18,000 frames), as Mnih et al. (2015) evaluated: a greedy policy that never presses FIRE
# (early Breakout) otherwise stalls until ALE's 30-minute cap, and every such evaluation would
# cost minutes. Scores that are reported play whole games.
ATARI_QUICK_EVAL_MAX_STEPS = 4_500


def eval_epsilon(env_id: str) -> float:
    """The share of evaluation steps that take a uniformly random action instead of the policy's."""
    return ATARI_EVAL_EPSILON if atari.is_atari_id(env_id) else 0.0


def quick_eval_max_steps(env_id: str) -> int | None:
    """The episode cap of an evaluation that only ranks snapshots; None: whole episodes."""
    return ATARI_QUICK_EVAL_MAX_STEPS if atari.is_atari_id(env_id) else None
