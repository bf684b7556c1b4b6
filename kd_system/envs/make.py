"""Environment construction. Every env the system touches is made here, so Atari slots in
as one more branch of ``make_env`` with its preprocessing. Callers outside ``envs/`` never ask
"is this Atari?": they read the facts they need from :class:`EnvSpaces` (``pixels`` picks a CNN)
or get the env-specific behaviour from ``envs`` (``vector``, ``copying``, ``protocol``)."""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from kd_system.envs import atari
from kd_system.errors import ConfigError


@dataclass(frozen=True)
class EnvSpaces:
    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int
    # Observations are uint8 frame stacks, channels first (atari.OBS_SHAPE): networks.ConvNet's
    # input. Set by env_spaces from what the env is, not guessed from the shape: a channels-last
    # image would have the same rank and dtype but is no input for the CNN.
    pixels: bool = False


def check_env_id(env_id: str, field_name: str = "env.id") -> None:
    if atari.is_atari_id(env_id):
        atari.game_of(env_id, field_name)
        return
    atari.refuse_legacy_atari_id(env_id, field_name)
    if env_id not in gym.registry:
        atari.register_ale_ids()  # so that "Pong-v5" suggests ALE/Pong-v5
        close = [name for name in gym.registry if env_id.lower().split("-")[0] in name.lower()][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"{field_name}: {env_id!r} is not a registered Gymnasium environment{hint}; "
            "use an id such as CartPole-v1, Acrobot-v1, LunarLander-v3 or ALE/Pong-v5"
        )


def make_env(env_id: str, seed: int | None = None) -> gym.Env:
    if atari.is_atari_id(env_id):  # raw-score protocol: evaluation must see game scores, whole episodes
        env = atari.SingleAtariEnv(env_id, atari.RAW_SCORE)
        if seed is not None:
            env.reset(seed=seed)
            env.action_space.seed(seed)
        return env
    check_env_id(env_id)
    try:
        env = gym.make(env_id)
    except gym.error.DependencyNotInstalled as exc:
        raise ConfigError(f"env.id {env_id!r} needs an extra package: {exc}") from None
    if not isinstance(env.action_space, gym.spaces.Discrete):
        env.close()
        raise ConfigError(f"env.id {env_id!r} has a {type(env.action_space).__name__} action space; "
                          "kd_system distils discrete-action policies only")
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def env_spaces(env_id: str) -> EnvSpaces:
    env = make_env(env_id)
    try:
        space = env.observation_space
        return EnvSpaces(tuple(int(d) for d in space.shape), str(np.dtype(space.dtype)), int(env.action_space.n),
                         pixels=atari.is_atari_id(env_id))
    finally:
        env.close()


def make_training_env(env_id: str) -> gym.Env:
    """The env a teacher learns on. Atari: life loss ends the episode and rewards are clipped to
    their sign (atari.TEACHER_TRAINING; shorter credit assignment, one reward scale across games),
    with the frames exactly as the actors see them. Other envs are the evaluation env itself."""
    if atari.is_atari_id(env_id):
        return atari.SingleAtariEnv(env_id, atari.TEACHER_TRAINING)
    return make_env(env_id)


def vector_env_threads_itself(env_id: str) -> bool:
    """Whether ``make_vector_env`` spreads its envs over the cores itself (ale-py's C++ emulator
    threads) rather than stepping them in this process's one Python thread."""
    return atari.is_atari_id(env_id)


def make_vector_env(env_id: str, num_envs: int, seed: int, num_threads: int | None = None) -> gym.vector.VectorEnv:
    """Synchronous vector env (same-step autoreset) for actors; cheap envs gain nothing from subprocesses.
    Atari ids get ale-py's threaded C++ vector env with the same preprocessing as ``make_env``, with
    ``num_threads`` emulator threads (None: one per core)."""
    if atari.is_atari_id(env_id):
        return atari.make_atari_vector_env(env_id, num_envs, seed, atari.RAW_SCORE, num_threads=num_threads)
    check_env_id(env_id)
    env_fns = [lambda: make_env(env_id) for _ in range(num_envs)]
    vec = gym.vector.SyncVectorEnv(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    vec.action_space.seed(seed)  # not reset here: the caller's reset(seed=) is the only one, as for Atari
    return vec
