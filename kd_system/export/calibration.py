"""Calibration states for static int8 (CNNs): fresh rollouts of the teacher, so the activation
ranges are those of the states the student meets when it plays as the teacher does.

``--calibration store`` is refused: a run's replay store lives in its own Redis with persistence
off (replay/redis_server.py) and is gone when the run ends, and a snapshot keeps no states. The
teacher the student's model card records (``distilled_from``) reproduces that distribution anyway:
the store held the teacher's (and the student's) visited states, labelled by the teacher.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kd_system.envs.make import make_vector_env
from kd_system.errors import ConfigError
from kd_system.policies.files import FrozenPolicy

from kd_system.export.records import CalibrationPlan, ExportRequest, Source

ROLLOUT_ENVS = 8

STORE_REFUSAL = ("--calibration store: a run's replay store lives in the run's own Redis, without persistence, "
                 "only while the run is live, and snapshots keep no states, so a finished run has none to read; "
                 "use --calibration teacher (fresh rollouts of the teacher the student was distilled from)")


def needs_calibration(source: Source, request: ExportRequest) -> bool:
    """Static quantization, and so calibration, is for CNNs; MLPs quantize dynamically."""
    return request.int8 and source.spec.network.get("kind") == "cnn"


def _teacher_of(source: Source) -> str | None:
    """A student's recorded teacher; a teacher calibrates on its own rollouts."""
    if source.spec.role == "teacher":
        return str(source.path)
    return source.spec.model_card.get("distilled_from")


def plan_calibration(source: Source, request: ExportRequest) -> CalibrationPlan | None:
    """Checked before any export work, so a missing teacher is refused at once."""
    if not needs_calibration(source, request):
        return None
    teacher = _teacher_of(source)
    if not teacher:
        raise ConfigError(f"--int8 for the CNN {source.path} needs calibration states, but its spec.json records no "
                          "teacher (model_card.distilled_from) to roll out; export it without --int8, or add the "
                          "teacher's checkpoint directory as model_card.distilled_from")
    if not Path(teacher).is_dir():
        raise ConfigError(f"--int8 calibration: the teacher {teacher} recorded in {source.path}'s model card is not "
                          "there; restore it, or export without --int8")
    return CalibrationPlan(Path(teacher).resolve(), source.spec.env_id, request.calibration_states)


def teacher_states(plan: CalibrationPlan, obs_shape: tuple[int, ...]) -> np.ndarray:
    """``plan.count`` states of the teacher playing greedily, epsilon of its actions random."""
    teacher = FrozenPolicy.load(plan.teacher)
    if tuple(teacher.spec.obs_shape) != tuple(obs_shape):
        raise ConfigError(f"--int8 calibration: the teacher {plan.teacher} takes observations "
                          f"{tuple(teacher.spec.obs_shape)}, the student {tuple(obs_shape)}; they play different envs")
    return rollout_states(teacher, plan.env_id, plan.count, plan.seed, plan.epsilon)


def rollout_states(teacher: FrozenPolicy, env_id: str, count: int, seed: int, epsilon: float) -> np.ndarray:
    """``count`` states of ``teacher`` playing ``env_id`` greedily, ``epsilon`` of its actions random.
    Shared with a run's teacher-engine check (teachers/engines.py), which holds the teacher in memory."""
    envs = make_vector_env(env_id, ROLLOUT_ENVS, seed)
    rng = np.random.default_rng(seed)
    try:
        obs, _ = envs.reset(seed=seed)
        kept = [np.asarray(obs)]
        while sum(len(batch) for batch in kept) < count:
            actions = teacher.greedy_actions(obs)
            explore = rng.random(ROLLOUT_ENVS) < epsilon
            actions[explore] = rng.integers(0, teacher.spec.num_actions, size=int(explore.sum()))
            obs, *_ = envs.step(actions)
            kept.append(np.asarray(obs))
    finally:
        envs.close()
    return np.concatenate(kept)[:count]
