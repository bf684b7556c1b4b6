"""Whether an env's state can be copied, for lookahead labels (actors/lookahead.py), which roll
the teacher out from ``copy.deepcopy`` copies of the actors' envs.

Rollouts from copies are only a measurement of the teacher's returns if a copy is the same
simulator state: pure-Python classic-control envs copy; LunarLander's Box2D world does not, and
Atari games live in ale-py's C++ vector env, out of Python's reach.
"""
from __future__ import annotations

import copy

import numpy as np

from kd_system.envs import atari
from kd_system.envs.make import make_env
from kd_system.errors import ConfigError

PROBE_STEPS = 40  # steps taken before and after the copy when checking that an env copies exactly


def check_copyable(env_id: str, field_name: str) -> None:
    """Refuse an env whose deep copy does not continue exactly like the original."""
    how = "lookahead labels need an env whose state copy.deepcopy reproduces (CartPole, Acrobot, MountainCar, ...)"
    if atari.is_atari_id(env_id):
        raise ConfigError(f"{field_name}: {env_id} runs in ale-py's C++ vector env, whose state the actors cannot "
                          f"copy; {how}: set it to false")
    env = make_env(env_id)
    rng = np.random.default_rng(0)
    try:
        env.reset(seed=0)
        for _ in range(PROBE_STEPS):
            _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            if terminated or truncated:
                env.reset(seed=1)
        try:
            twin = copy.deepcopy(env)
            for action in rng.integers(env.action_space.n, size=PROBE_STEPS):
                original, copied = env.step(int(action)), twin.step(int(action))
                if not (np.array_equal(original[0], copied[0]) and original[1:4] == copied[1:4]):
                    raise ConfigError(f"{field_name}: {env_id} does not copy exactly (a copy.deepcopy of it diverged "
                                      f"from the original); {how}: set it to false")
                if original[2] or original[3]:
                    break
        except ConfigError:
            raise
        except Exception as exc:  # whatever breaks in a copy, it cannot be rolled out
            raise ConfigError(f"{field_name}: {env_id} does not copy exactly (a copy.deepcopy of it fails to step: "
                              f"{type(exc).__name__}); {how}: set it to false") from None
    finally:
        env.close()


def has_time_limit(env_id: str) -> bool:
    """Whether episodes end by themselves (a TimeLimit): rollouts to the episode's end then stop."""
    env = make_env(env_id)
    try:
        return env.spec is not None and env.spec.max_episode_steps is not None
    finally:
        env.close()
