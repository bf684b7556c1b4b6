"""The states parity is measured on: real observations from kd_system's own pipeline (the env
the teacher will label), visited by a uniformly random policy, so both the converted network
and the source library's forward see exactly what actors will feed them."""
from __future__ import annotations

import numpy as np

from kd_system.envs.make import make_vector_env

PARITY_STATES = 1000


def env_states(env_id: str, count: int = PARITY_STATES, seed: int = 0, num_envs: int = 8) -> np.ndarray:
    """``count`` observations from ``num_envs`` envs stepped with random actions (same-step autoreset)."""
    envs = make_vector_env(env_id, num_envs, seed)
    rng = np.random.default_rng(seed)
    try:
        obs, _ = envs.reset(seed=seed)
        kept = [np.asarray(obs)]
        while sum(len(batch) for batch in kept) < count:
            actions = rng.integers(0, int(envs.single_action_space.n), size=num_envs)
            obs, *_ = envs.step(actions)
            kept.append(np.asarray(obs))
    finally:
        envs.close()
    return np.concatenate(kept)[:count]
