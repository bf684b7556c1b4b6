"""Atari (ALE v5) environments with the standard DQN preprocessing, for actors and evaluation.

Preprocessing (Mnih et al. 2015, "Human-level control through deep RL", Methods; Machado et al.
2018, "Revisiting the ALE", for sticky actions and no-op starts as evaluation protocol):
frame skip 4 with a max over the last two raw frames, 84x84 grayscale, a stack of the last 4
frames (observation uint8, shape (4, 84, 84), oldest first, newest last), up to 30 no-op
frames at every reset, sticky actions with probability 0.25 (the v5 default), minimal action
set. Terminal-on-life-loss and reward clipping are options of :class:`AtariSettings` for
teacher training only: :data:`RAW_SCORE` (what ``envs.make_env`` / ``envs.make_vector_env``
use) keeps episodes whole and rewards raw, so returns are game scores.

Both paths are ale-py's C++ ``AtariVectorEnv`` (threads inside ALE, no Python per frame):

- actors: :func:`make_atari_vector_env`, ``autoreset_mode=SAME_STEP``. The step that ends an
  episode returns the *next* episode's first observation (the last one is in
  ``info["final_obs"]``) with that step's reward and ``terminated``/``truncated`` set, which is
  the contract ``collector.Collector`` counts returns with. The ale-py default, NEXT_STEP,
  would instead spend one extra step per episode (reward 0, action ignored) to reset, and the
  collector would label and store that terminal frame as if it were a decision.
- evaluation: :class:`SingleAtariEnv`, the same C++ env with one sub-env behind the single-env
  Gymnasium API. Using the same code gives identical observations to the actor path
  (tests/test_atari.py checks it); ``gymnasium.wrappers.AtariPreprocessing`` would need
  OpenCV, which this project does not install, and resizes with its own interpolation.

Seeding: ``reset(seed=s)`` on a vector of N gives sub-env i the seed ``s + i``; ``SingleAtariEnv``
reset with ``s + i`` then replays the same episode (same no-op count, same sticky-action draws).
A seeded reset reloads the ROM (ALE takes its seed at load time): ~0.3 s per env here, once per
evaluation episode and once per actor start; automatic resets between episodes are unseeded
and cheap (the sub-env's own random stream goes on).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from kd_system.errors import ConfigError

ATARI_PREFIX = "ALE/"
FRAME_STACK = 4
FRAME_SIZE = 84
OBS_SHAPE = (FRAME_STACK, FRAME_SIZE, FRAME_SIZE)


@dataclass(frozen=True)
class AtariSettings:
    """What an Atari env does on top of the emulator. Defaults are the raw-score protocol."""
    frame_skip: int = 4
    noop_max: int = 30  # up to this many no-op frames after each reset; 0 turns no-op starts off
    repeat_action_probability: float = 0.25  # sticky actions, per emulator frame (ALE v5 default)
    max_frames_per_episode: int = 108_000  # 30 minutes of play at 60 Hz (v5 default); then truncated
    terminal_on_life_loss: bool = False  # teacher training only: shorter credit assignment
    clip_rewards: bool = False  # teacher training only: sign(reward), one scale across games
    fire_reset: bool = False  # press FIRE after reset in games that need it (not in DQN's protocol)

    def check(self, field_name: str = "atari") -> None:
        if self.frame_skip < 1:
            raise ConfigError(f"{field_name}.frame_skip {self.frame_skip} must be at least 1")
        if self.noop_max < 0:
            raise ConfigError(f"{field_name}.noop_max {self.noop_max} must be 0 (off) or positive")
        if not 0.0 <= self.repeat_action_probability < 1.0:
            raise ConfigError(f"{field_name}.repeat_action_probability {self.repeat_action_probability} "
                              "must be in [0, 1); 0.25 is the ALE v5 default")
        if self.max_frames_per_episode < self.frame_skip:
            raise ConfigError(f"{field_name}.max_frames_per_episode {self.max_frames_per_episode} "
                              f"must be at least frame_skip ({self.frame_skip})")


RAW_SCORE = AtariSettings()  # evaluation and distillation actors: whole episodes, raw rewards
TEACHER_TRAINING = AtariSettings(terminal_on_life_loss=True, clip_rewards=True)


def is_atari_id(env_id: str) -> bool:
    return env_id.startswith(ATARI_PREFIX)


def register_ale_ids() -> None:
    """Gymnasium 1.x no longer registers ALE ids by itself; importing ale_py's plugin does."""
    if f"{ATARI_PREFIX}Pong-v5" not in gym.registry:
        import ale_py
        gym.register_envs(ale_py)


def game_of(env_id: str, field_name: str = "env.id") -> str:
    """The ROM name (``pong``, ``ms_pacman``) of an ALE v5 id, or a ConfigError saying what to use."""
    register_ale_ids()
    if not env_id.endswith("-v5") or env_id not in gym.registry:
        raise ConfigError(f"{field_name}: {env_id!r} is not an ALE v5 id; use one such as ALE/Pong-v5 or "
                          "ALE/Breakout-v5 (any game ale-py ships, listed by gymnasium.registry)")
    kwargs = gym.spec(env_id).kwargs
    if kwargs.get("full_action_space") or kwargs.get("obs_type", "rgb") != "rgb" or "mode" in kwargs:
        raise ConfigError(f"{field_name}: {env_id!r} asks for options kd_system's Atari pipeline does not "
                          "support (full action space, RAM observations or a game mode); use the plain "
                          "ALE/<Game>-v5 id")
    return str(kwargs["game"])


def refuse_legacy_atari_id(env_id: str, field_name: str = "env.id") -> None:
    """v0/v4 and NoFrameskip ids would bypass the preprocessing (raw RGB frames): point to v5."""
    if env_id not in gym.registry:
        register_ale_ids()
    spec = gym.registry.get(env_id)
    if spec is not None and str(spec.entry_point).startswith("ale_py"):
        game = str(spec.kwargs.get("game", "pong"))
        raise ConfigError(f"{field_name}: {env_id!r} is a legacy Atari id without kd_system's preprocessing; "
                          f"use ALE/{game.title().replace('_', '')}-v5")


def _vector(game: str, num_envs: int, settings: AtariSettings, num_threads: int,
            autoreset_mode: AutoresetMode):
    import ale_py
    from ale_py.vector_env import AtariVectorEnv
    settings.check()
    # ALE prints a banner per ROM load, i.e. per sub-env and per seeded reset: it would flood actor logs.
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    return AtariVectorEnv(
        game, num_envs,
        num_threads=num_threads,
        batch_size=num_envs,  # synchronous: every step answers for all envs, in order
        frameskip=settings.frame_skip, maxpool=True,
        img_height=FRAME_SIZE, img_width=FRAME_SIZE, grayscale=True, stack_num=FRAME_STACK,
        noop_max=settings.noop_max,
        repeat_action_probability=settings.repeat_action_probability,
        max_num_frames_per_episode=settings.max_frames_per_episode,
        full_action_space=False,
        episodic_life=settings.terminal_on_life_loss,
        reward_clipping=settings.clip_rewards,  # ale-py's default is True: always say which
        use_fire_reset=settings.fire_reset,  # ale-py's default is True: always say which
        autoreset_mode=autoreset_mode,
    )


def default_env_threads(num_envs: int) -> int:
    """One emulator thread per usable core, never more than envs (idle threads only add switching)."""
    return max(1, min(num_envs, len(os.sched_getaffinity(0))))


def make_atari_vector_env(env_id: str, num_envs: int, seed: int, settings: AtariSettings = RAW_SCORE,
                          num_threads: int | None = None) -> gym.vector.VectorEnv:
    """ale-py's threaded vector env with same-step autoreset (the collector's contract).

    Not reset here, unlike the Gymnasium path: a seeded reset reloads the ROM in every sub-env
    (~0.3 s each on the 2-core machine), so the caller's ``reset(seed=)`` is the only one.
    """
    if num_envs < 1:
        raise ConfigError(f"actors.num_envs {num_envs} must be at least 1")
    vec = _vector(game_of(env_id), num_envs, settings, num_threads or default_env_threads(num_envs),
                  AutoresetMode.SAME_STEP)
    vec.action_space.seed(int(seed))
    return vec


class SingleAtariEnv(gym.Env):
    """One Atari game behind the single-env Gymnasium API, preprocessed exactly as the actors' vector.

    Steps with the caller's own ``reset`` at episode ends (as ``evaluation.run_episodes`` does):
    the step that ends an episode returns that episode's real last observation.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, env_id: str, settings: AtariSettings = RAW_SCORE):
        # NEXT_STEP: a terminal step's observation is the episode's own last frame, not the next
        # episode's first; the caller resets before stepping again.
        self._vector = _vector(game_of(env_id), 1, settings, 1, AutoresetMode.NEXT_STEP)
        self.env_id = env_id
        self.settings = settings
        self.observation_space = self._vector.single_observation_space
        self.action_space = self._vector.single_action_space
        self._actions = np.zeros(1, dtype=np.int32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self._vector.reset(seed=None if seed is None else int(seed))
        return obs[0], {key: value[0] for key, value in info.items()}

    def step(self, action):
        self._actions[0] = int(action)
        obs, rewards, terminated, truncated, info = self._vector.step(self._actions)
        return (obs[0], float(rewards[0]), bool(terminated[0]), bool(truncated[0]),
                {key: value[0] for key, value in info.items()})

    def close(self):
        self._vector = None  # frees the emulator and its thread now, not at garbage collection
