"""Measure the Atari env paths and the stored size of Atari states on this machine.

    python -m kd_system.bench.atari_measure [--env ALE/Pong-v5] [--num-envs 16] [--seconds 5]

Prints agent steps/s (each step is 4 emulator frames) of the actors' threaded vector env and of
the single-env evaluation path, both with random actions, and the bytes one labelled state
(4x84x84 uint8 stack + float32 teacher outputs + int32 action) takes in a 256-state chunk as the
replay store encodes it. Setup (ROM loads, seeded resets) is outside the timed loops.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from kd_system.envs.atari import RAW_SCORE, AtariSettings, SingleAtariEnv, default_env_threads, make_atari_vector_env
from kd_system.replay.codec import encode_chunk

CHUNK_STATES = 256


def vector_steps_per_s(env_id: str, num_envs: int, num_threads: int, seconds: float) -> float:
    vec = make_atari_vector_env(env_id, num_envs, seed=0, num_threads=num_threads)
    vec.reset(seed=0)
    rng = np.random.default_rng(0)
    num_actions = int(vec.single_action_space.n)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        vec.step(rng.integers(0, num_actions, size=num_envs))
        steps += num_envs
    return steps / (time.perf_counter() - start)


def single_steps_per_s(env_id: str, seconds: float, settings: AtariSettings = RAW_SCORE) -> float:
    """One env stepping random actions (``settings``: the raw-score protocol, or teacher training's)."""
    env = SingleAtariEnv(env_id, settings)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        steps += 1
        if terminated or truncated:
            env.reset()  # unseeded: the cheap reset the actors' autoreset does too
    env.close()
    return steps / (time.perf_counter() - start)


def stored_bytes_per_state(env_id: str, num_envs: int) -> dict:
    vec = make_atari_vector_env(env_id, num_envs, seed=0)
    obs, _ = vec.reset(seed=0)
    rng = np.random.default_rng(0)
    num_actions = int(vec.single_action_space.n)
    frames = []
    for _ in range(200):  # past the static opening frames, into play
        obs = vec.step(rng.integers(0, num_actions, size=num_envs))[0]
    while sum(len(f) for f in frames) < CHUNK_STATES:
        frames.append(obs)
        obs = vec.step(rng.integers(0, num_actions, size=num_envs))[0]
    chunk = {"obs": np.concatenate(frames)[:CHUNK_STATES],
             "teacher_out": rng.normal(size=(CHUNK_STATES, num_actions)).astype(np.float32),
             "action": rng.integers(0, num_actions, size=CHUNK_STATES).astype(np.int32)}
    raw = sum(a.nbytes for a in chunk.values()) / CHUNK_STATES
    stored = len(encode_chunk(chunk, {"actor_id": 0})) / CHUNK_STATES
    return {"raw_bytes_per_state": round(raw), "stored_bytes_per_state": round(stored),
            "ratio": round(raw / stored, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/Pong-v5", help="ALE v5 id")
    parser.add_argument("--num-envs", type=int, default=16, help="sub-envs in the actors' vector env")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each timed loop")
    args = parser.parse_args()
    threads = default_env_threads(args.num_envs)
    figures = {
        "env": args.env,
        f"vector_{args.num_envs}_envs_{threads}_threads_steps_per_s":
            round(vector_steps_per_s(args.env, args.num_envs, threads, args.seconds)),
        f"vector_{args.num_envs}_envs_1_thread_steps_per_s":
            round(vector_steps_per_s(args.env, args.num_envs, 1, args.seconds)),
        "single_env_steps_per_s": round(single_steps_per_s(args.env, args.seconds)),
        **stored_bytes_per_state(args.env, args.num_envs),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
