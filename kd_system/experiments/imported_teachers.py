"""Bring-your-own-teacher acceptance: train CartPole teachers the way users of other libraries do,
import each with one ``kd-system teacher import`` and distil it with ``kd-system run``.

- Stable-Baselines3 DQN with the RL Zoo's CartPole-v1 settings (rl-baselines3-zoo, hyperparams/dqn.yml:
  5e4 steps, lr 2.3e-3, batch 64, buffer 1e5, learning_starts 1000, target_update_interval 10,
  train_freq 256, gradient_steps 128, exploration 0.16 -> 0.04, net_arch [256, 256]);
- RLlib's default DQN (dueling, double-Q) and default PPO (tanh MLP), new API stack, trained until
  their greedy return reaches 475 or a step budget, keeping the best greedy iterate.

Each stage skips work whose output already exists, so an interrupted run resumes where it stopped.
``python -m kd_system.experiments.imported_teachers --out runs/imported-teachers``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ENV = "CartPole-v1"
RL_ZOO_DQN = dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                  target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                  exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]))
TARGET_RETURN = 475.0
RLLIB_MAX_STEPS = {"dqn": 100_000, "ppo": 300_000}  # DQN: ~20 s per 1,000 steps here


def train_sb3_dqn(path: Path, seed: int) -> None:
    """As the RL Zoo trains: its EvalCallback scores the greedy policy every 5,000 steps and keeps
    ``best_model.zip``, which is what the zoo publishes (DQN's last iterate on CartPole can collapse:
    seed 0's scored 17.9 here)."""
    import tempfile

    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.env_util import make_vec_env

    from kd_system.experiments.sb3_logger import without_sb3_logger
    model = DQN("MlpPolicy", ENV, seed=seed, verbose=0, **RL_ZOO_DQN)
    with tempfile.TemporaryDirectory() as tmp:
        best = EvalCallback(make_vec_env(ENV, n_envs=1, seed=seed + 1), best_model_save_path=tmp, eval_freq=5000,
                            n_eval_episodes=10, deterministic=True, verbose=0)
        without_sb3_logger(model).learn(total_timesteps=50_000, callback=best)
        Path(tmp, "best_model.zip").replace(path)


def _greedy_return(module, episodes: int = 20) -> float:
    import gymnasium as gym
    import numpy as np
    import torch
    env, returns = gym.make(ENV), []
    for episode in range(episodes):
        obs, _ = env.reset(seed=10_000 + episode)
        done, total = False, 0.0
        while not done:
            batch = {"obs": torch.as_tensor(obs[None], dtype=torch.float32)}
            with torch.no_grad():  # DQN's forward_inference returns actions only: its Q-values come from compute_q_values
                out = (module.compute_q_values(batch)["qf_preds"] if hasattr(module, "compute_q_values")
                       else module.forward_inference(batch)["action_dist_inputs"])
            obs, reward, terminated, truncated, _ = env.step(int(np.argmax(out[0].numpy())))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def train_rllib(algorithm: str, path: Path, seed: int) -> None:
    """RLlib's defaults for the algorithm: only the env, the seed and in-process sampling are set.
    Like the RL Zoo's EvalCallback, the best greedy iterate is kept (checkpointed when it improves)."""
    import shutil

    import ray
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig
    config = (DQNConfig() if algorithm == "dqn" else PPOConfig()).environment(ENV).env_runners(num_env_runners=0)
    algo = config.debugging(seed=seed, log_level="ERROR").build_algo()
    best_dir = path.with_name(path.name + ".best")  # the checkpoint appears at ``path`` whole, at the end
    shutil.rmtree(best_dir, ignore_errors=True)
    steps, best = 0, float("-inf")
    try:
        while steps < RLLIB_MAX_STEPS[algorithm] and best < TARGET_RETURN:
            steps = int(algo.train()["num_env_steps_sampled_lifetime"])
            score = _greedy_return(algo.get_module())
            print(f"[rllib {algorithm}] {steps} env steps, greedy {score:.1f} (best {max(best, score):.1f})", flush=True)
            if score > best:
                best = score
                shutil.rmtree(best_dir, ignore_errors=True)
                algo.save(str(best_dir.resolve()))  # RLlib takes a URI: a relative path has no scheme
        best_dir.replace(path)
    finally:
        algo.stop()
        ray.shutdown()


def _kd(args: list[str], log: Path) -> None:
    with open(log, "w") as handle:
        subprocess.run([sys.executable, "-m", "kd_system.cli", *args], check=True, stdout=handle, stderr=subprocess.STDOUT)


def import_and_distil(name: str, source: Path, out: Path, trust: bool) -> dict:
    teacher, runs = out / f"{name}-teacher", out / "runs"
    flags = ["--trust-pickle"] if trust else []
    if not (teacher / "spec.json").exists():
        started = time.perf_counter()
        _kd(["teacher", "import", str(source), "--env", ENV, "--out", str(teacher), "--episodes", "100", *flags],
            out / f"{name}-import.log")
        print(f"[{name}] imported in {time.perf_counter() - started:.1f} s", flush=True)
    summary_path = runs / name / "summary.json"
    if not summary_path.exists():
        _kd(["run", "--set", f"teacher.checkpoint={source}", "--set", f"head.runs_dir={runs}",
             "--set", f"head.run_name={name}", *flags], out / f"{name}-run.log")
    card = json.loads((teacher / "spec.json").read_text())["model_card"]
    summary = json.loads(summary_path.read_text())
    return {"teacher": name, "parity": card["parity_max_abs_diff"], "teacher_return": card["eval_return_mean"],
            "random_return": card["random_return_mean"], "teacher_params": card["num_params"],
            "source_params": card["source_params"], "summary": summary}


def table(results: list[dict]) -> str:
    """The README's markdown table."""
    lines = ["| teacher (library, format) | parity | teacher return | student params (% of teacher) | normalized score (95% CI) | wall |",
             "|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        low, high = s["normalized_score_ci95"]
        lines.append(f"| {r['teacher']} | {r['parity']:.1e} | {r['teacher_return']:.1f} (random {r['random_return']:.1f}) | "
                     f"{s['student_params']:,} ({s['student_params'] / s['teacher_params']:.1%}) | "
                     f"{s['normalized_score']:.3f} [{low:.3f}, {high:.3f}] | {s['wall_s']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/imported-teachers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("sb3-dqn", "rllib-dqn", "rllib-ppo"), action="append")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = {"sb3-dqn": (out / "sb3_dqn_cartpole.zip", lambda p: train_sb3_dqn(p, args.seed), False),
              "rllib-dqn": (out / "rllib_dqn_cartpole", lambda p: train_rllib("dqn", p, args.seed), True),
              "rllib-ppo": (out / "rllib_ppo_cartpole", lambda p: train_rllib("ppo", p, args.seed), True)}
    results = []
    for name, (source, train, trust) in stages.items():
        if args.only and name not in args.only:
            continue
        if not source.exists():
            started = time.perf_counter()
            train(source)
            print(f"[{name}] trained in {time.perf_counter() - started:.0f} s", flush=True)
        results.append(import_and_distil(name, source, out, trust))
    print(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
