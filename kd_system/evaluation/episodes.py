"""Greedy episode evaluation: many envs in lockstep with one batched forward per step.

Seeds are fixed per episode index, so a teacher, a student and the random policy evaluated with
the same ``seed`` face the same initial states (paired comparison).

Some envs are played epsilon-greedy (Atari, at 0.05: envs/protocol.py says which and why); the
others greedily.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from kd_system.envs.make import make_env
from kd_system.envs.protocol import eval_epsilon

ActFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EpisodeStats:
    returns: np.ndarray
    lengths: np.ndarray
    visited_obs: np.ndarray | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def env_steps(self) -> int:
        return int(np.sum(self.lengths))


def random_act_fn(num_actions: int, seed: int) -> ActFn:
    rng = np.random.default_rng(seed)
    return lambda obs: rng.integers(0, num_actions, size=len(obs))


def run_episodes(env_id: str, act_fn: ActFn, episodes: int, seed: int, max_parallel: int = 32,
                 record_obs_limit: int = 0, max_episode_steps: int | None = None,
                 epsilon: float | None = None) -> EpisodeStats:
    """Run ``episodes`` full episodes, or cut each at ``max_episode_steps``; optionally keep up to
    ``record_obs_limit`` visited states. Episode i's exploration draws come from its own seed, so
    they are the same whichever policy plays it, and at whichever ``epsilon`` (None: the protocol's)."""
    returns = np.zeros(episodes, dtype=np.float64)
    lengths = np.zeros(episodes, dtype=np.int64)
    recorded: list[np.ndarray] = []
    recorded_count = 0
    next_episode = 0
    active: dict[int, tuple] = {}  # episode index -> (env, obs)
    epsilon = eval_epsilon(env_id) if epsilon is None else epsilon
    explore: dict[int, np.random.Generator] = {}
    envs = [make_env(env_id) for _ in range(min(max_parallel, episodes))]
    free_envs = list(envs)
    try:
        while next_episode < episodes or active:
            while free_envs and next_episode < episodes:
                env = free_envs.pop()
                obs, _ = env.reset(seed=seed + next_episode)
                active[next_episode] = (env, obs)
                if epsilon:
                    explore[next_episode] = np.random.default_rng([seed + next_episode, 0x5EED])
                next_episode += 1
            indices = list(active)
            obs_batch = np.stack([active[i][1] for i in indices])
            if recorded_count < record_obs_limit:
                take = obs_batch[: record_obs_limit - recorded_count]
                recorded.append(take.copy())
                recorded_count += len(take)
            actions = act_fn(obs_batch)
            for i, action in zip(indices, actions):
                env = active[i][0]
                if epsilon and explore[i].random() < epsilon:
                    action = explore[i].integers(env.action_space.n)
                obs, reward, terminated, truncated, _ = env.step(int(action))
                returns[i] += float(reward)
                lengths[i] += 1
                if terminated or truncated or (max_episode_steps is not None and lengths[i] >= max_episode_steps):
                    del active[i]
                    free_envs.append(env)
                else:
                    active[i] = (env, obs)
    finally:
        for env in envs:
            env.close()
    visited = np.concatenate(recorded) if recorded else None
    return EpisodeStats(returns, lengths, visited)
