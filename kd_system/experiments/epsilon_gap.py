"""What the evaluation's random actions cost a DQN teacher: one Q-network scored on the same games at
several evaluation epsilons (each game's reset seed and exploration draws are its own, so the games
are paired).

    python -m kd_system.experiments.epsilon_gap runs/pong-sb3/checkpoint/q_net.safetensors --epsilons 0.05 0

The weights are the SB3 training's safetensors (no pickle). On 2026-12-08 the Pong teacher at
3,357,967 env steps scored +14.06 at 0.05 and +18.00 greedily over the same 16 games: the network
already played at the target, and the protocol's 5% random actions cost it 4 points a game.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="q_net.safetensors written by kd_system.experiments.sb3_teacher")
    p.add_argument("--env", default="ALE/Pong-v5")
    p.add_argument("--games", type=int, default=16)
    p.add_argument("--seed", type=int, default=777_000)
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.05, 0.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the scores here")
    args = p.parse_args(argv)
    bad = [e for e in args.epsilons if not 0.0 <= e <= 1.0]
    if bad or args.games < 2:
        print(f"[epsilon-gap] {'--epsilons ' + str(bad[0]) if bad else '--games ' + str(args.games)}: "
              "give epsilons in [0, 1] and at least 2 games", file=sys.stderr)
        return 2
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from stable_baselines3 import DQN

    from kd_system.envs.make import make_training_env
    from kd_system.evaluation.episodes import run_episodes
    from kd_system.evaluation.scores import t_interval95
    from kd_system.experiments.sb3_teacher import _greedy

    torch.set_num_threads(args.threads)
    env = make_training_env(args.env)
    model = DQN("CnnPolicy", env, buffer_size=1, device="cpu")  # the Q-network's shape for this env
    env.close()
    try:
        model.q_net.load_state_dict(load_file(args.weights))
    except (OSError, SafetensorError, RuntimeError) as e:
        print(f"[epsilon-gap] {args.weights}: not the Q-network of an SB3 CnnPolicy DQN on {args.env} "
              f"({str(e).splitlines()[0][:120]}); give sb3_teacher's checkpoint/q_net.safetensors", file=sys.stderr)
        return 2
    rows = []
    for epsilon in args.epsilons:
        stats = run_episodes(args.env, _greedy(model), args.games, args.seed, epsilon=epsilon)
        error = float(np.std(stats.returns, ddof=1) / np.sqrt(args.games))
        low, high = t_interval95(stats.mean, error, args.games - 1)
        rows.append({"epsilon": epsilon, "mean": stats.mean, "ci95": [low, high], "returns": stats.returns.tolist()})
        print(f"[epsilon-gap] epsilon {epsilon:<5g} {stats.mean:+6.2f} over {args.games} games "
              f"(95% CI {low:+.2f} to {high:+.2f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": args.weights, "env": args.env, "seed": args.seed,
                                               "scores": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
