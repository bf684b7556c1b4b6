"""``kd-system eval``: score a checkpoint, or a file written by ``kd-system export``, over N episodes.

A student is scored against its teacher (the card's ``distilled_from``) and a random policy on the
same episode seeds: the normalized score and its paired 95% CI (scores.py). An exported file is
also compared with the fp32 checkpoint it came from, on held-out states: greedy agreement and the
largest output difference, so an int8 file's cost is visible beside its return.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kd_system.envs.make import env_spaces
from kd_system.errors import ConfigError
from kd_system.evaluation.episodes import random_act_fn, run_episodes
from kd_system.evaluation.scores import greedy_agreement, normalized_score, normalized_score_ci95
from kd_system.export.loading import is_exported, load_exported
from kd_system.export.parity import held_out_states
from kd_system.policies.files import FrozenPolicy


def _load(path: str) -> FrozenPolicy:
    return FrozenPolicy.from_bundle(load_exported(path)) if is_exported(path) else FrozenPolicy.load(path)


def _against_source(policy: FrozenPolicy, env_id: str) -> dict[str, Any]:
    """Greedy agreement and max abs difference with the fp32 checkpoint an exported file came from."""
    exported = policy.spec.model_card.get("exported", {})
    source = exported.get("source_checkpoint")
    if not source or not Path(source, "spec.json").is_file():
        return {"source_checkpoint": source, "agreement_with_source": None}
    reference = FrozenPolicy.load(source)
    states = held_out_states(env_id)
    ours, theirs = policy.outputs(states), reference.outputs(states)
    return {"source_checkpoint": source, "held_out_states": len(states),
            "agreement_with_source": greedy_agreement(ours, theirs),
            "max_abs_diff_to_source": float(np.max(np.abs(ours - theirs)))}


def evaluate_checkpoint(path: str, env_id: str | None, episodes: int, seed: int) -> dict[str, Any]:
    policy = _load(path)
    env_id = env_id or policy.spec.env_id
    spaces = env_spaces(env_id)
    if tuple(policy.spec.obs_shape) != spaces.obs_shape or policy.spec.num_actions != spaces.num_actions:
        raise ConfigError(f"{path} does not fit {env_id} (observations {tuple(policy.spec.obs_shape)} vs "
                          f"{spaces.obs_shape}, actions {policy.spec.num_actions} vs {spaces.num_actions}); "
                          "pass --env with the env it was trained on")
    result = run_episodes(env_id, policy.greedy_actions, episodes, seed)
    random = run_episodes(env_id, random_act_fn(spaces.num_actions, seed), episodes, seed)
    report: dict[str, Any] = {
        "checkpoint": str(path), "role": policy.spec.role, "env_id": env_id,
        "params": policy.num_params or policy.spec.num_params, "episodes": episodes, "seed": seed,
        "return_mean": result.mean, "return_std": result.std, "random_return_mean": random.mean}
    if "exported" in policy.spec.model_card:
        report |= {"file_format": policy.spec.model_card["exported"]["file_format"],
                   "precision": policy.spec.model_card["exported"].get("precision"), **_against_source(policy, env_id)}
    teacher_dir = policy.spec.model_card.get("distilled_from")
    if policy.spec.role == "student" and teacher_dir and Path(teacher_dir).is_dir():
        teacher = FrozenPolicy.load(teacher_dir)
        played = run_episodes(env_id, teacher.greedy_actions, episodes, seed)
        low, high = normalized_score_ci95(result.returns, played.returns, random.returns)
        report |= {"teacher": teacher_dir, "teacher_return_mean": played.mean,
                   "normalized_score": normalized_score(result.mean, played.mean, random.mean),
                   "normalized_score_ci95": [low, high]}
    return report
