"""Where a Pong DQN's CPU time goes: RLlib's DQN against Stable-Baselines3's and against the floor.

Issue 18 asks why ``kd-system teacher train --algo dqn`` (RLlib) runs ~50 env steps/s on Pong here
before choosing a trainer. Every figure below is measured in this one process, one after the other,
with the same torch thread count, the same env (``envs.make_training_env``, the actors' frames) and
the same update ratio (one batch-32 update per 4 env steps, Mnih et al. 2015):

- the floor: the env alone (random actions), and one double-Q update of the Nature CNN in plain
  torch (online forward/backward, target forward, Adam);
- RLlib: env steps/s while learning, and while only sampling (learning never starts);
- SB3: the same two.

Per env step, a trainer's cost splits into sampling (1 / sampling-only rate) and the rest
(updates, replay, glue) = 1 / learning rate - 1 / sampling rate; times 4 gives its cost per update,
which is set against the torch floor.

    python -m kd_system.experiments.dqn_cost --out kd_system/experiments/results/pong_teacher
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kd_system.bench.atari_measure import single_steps_per_s
from kd_system.envs.atari import TEACHER_TRAINING
from kd_system.envs.make import make_training_env
from kd_system.experiments.sb3_logger import without_sb3_logger
from kd_system.policies.networks import build_network, cnn_spec

ENV_ID = "ALE/Pong-v5"
UPDATE_EVERY = 4
BATCH = 32


def update_floor(seconds: float) -> float:
    """Seconds per double-Q update of the Nature CNN on a batch of 32 uint8 frame stacks."""
    online, target = (build_network(cnn_spec("nature"), (4, 84, 84), 6) for _ in range(2))
    optimizer = torch.optim.Adam(online.parameters(), lr=1e-4)
    obs = torch.randint(0, 256, (BATCH, 4, 84, 84), dtype=torch.uint8)
    nxt = torch.randint(0, 256, (BATCH, 4, 84, 84), dtype=torch.uint8)
    actions = torch.randint(0, 6, (BATCH,))

    def update() -> None:
        with torch.no_grad():
            best = online(nxt.float() / 255).argmax(1, keepdim=True)
            value = target(nxt.float() / 255).gather(1, best).squeeze(1)
        q = online(obs.float() / 255).gather(1, actions[:, None]).squeeze(1)
        loss = torch.nn.functional.smooth_l1_loss(q, 0.99 * value)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):
        update()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        update()
        count += 1
    return (time.perf_counter() - start) / count


def rllib_rate(learning: bool, steps: int, envs: int = 1) -> float:
    """Env steps/s of RLlib's DQN over ``steps`` steps, after learning started (or never). ``envs``
    per env runner: each sample call then steps them all, and training_intensity keeps the update
    ratio at one batch of 32 per 4 env steps."""
    import ray

    from kd_system.teachers.rllib_cnn import ATARI_DEFAULTS, cnn_model_config, register_training_env
    from kd_system.teachers.rllib_export import build_algo

    warm = 2_000
    hp = {**ATARI_DEFAULTS["dqn"], "buffer_size": 20_000, "steps_per_iter": 1000,
          "learning_starts": warm if learning else 10**9, "num_envs_per_runner": envs,
          "training_intensity": BATCH / UPDATE_EVERY if envs > 1 else 0}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        algo = build_algo(register_training_env(), {"env_id": ENV_ID}, "dqn", cnn_model_config(cnn_spec("nature")),
                          hp, 0, 0)
        done = 0
        while done < warm:
            done = _lifetime_steps(algo.train())
        start, first = time.perf_counter(), done
        while done < first + steps:
            done = _lifetime_steps(algo.train())
        rate = (done - first) / (time.perf_counter() - start)
        algo.stop()
    finally:
        ray.shutdown()
    return rate


def _lifetime_steps(result: dict) -> int:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME
    return int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME])


def sb3_rate(learning: bool, steps: int) -> float:
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback

    warm = 2_000
    marks: dict[str, float] = {}

    class Clock(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == warm:
                marks["start"] = time.perf_counter()
            return True

    model = DQN("CnnPolicy", make_training_env(ENV_ID), buffer_size=20_000, learning_rate=1e-4, batch_size=BATCH,
                learning_starts=warm if learning else 10**9, train_freq=UPDATE_EVERY, gradient_steps=1,
                target_update_interval=1000, n_steps=3, seed=0, device="cpu", verbose=0)
    without_sb3_logger(model).learn(total_timesteps=warm + steps, callback=Clock())
    return steps / (time.perf_counter() - marks["start"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4_000, help="env steps timed per trainer and mode")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    figures: dict[str, float] = {}
    figures["env_steps_per_s"] = single_steps_per_s(ENV_ID, 20, TEACHER_TRAINING)
    figures["torch_update_s"] = update_floor(20)
    print(f"floor: env {figures['env_steps_per_s']:.0f} steps/s, update {figures['torch_update_s'] * 1e3:.1f} ms", flush=True)
    tuned = lambda learning, steps: rllib_rate(learning, steps, envs=8)  # noqa: E731
    for name, measure in (("rllib", rllib_rate), ("rllib_8envs", tuned), ("sb3", sb3_rate)):
        figures[f"{name}_sampling_steps_per_s"] = measure(False, args.steps)
        figures[f"{name}_learning_steps_per_s"] = measure(True, args.steps)
        print(f"{name}: sampling {figures[f'{name}_sampling_steps_per_s']:.0f} steps/s, learning "
              f"{figures[f'{name}_learning_steps_per_s']:.1f} steps/s", flush=True)
    floor_step = 1 / figures["env_steps_per_s"] + figures["torch_update_s"] / UPDATE_EVERY
    figures["floor_learning_steps_per_s"] = 1 / floor_step
    rows = [("floor (env + torch update)", 1 / figures["env_steps_per_s"], figures["torch_update_s"],
             figures["floor_learning_steps_per_s"])]
    version = __import__("ray").__version__
    for name, label in (("rllib", f"RLlib {version} DQN, 1 env per runner (our defaults)"),
                        ("rllib_8envs", f"RLlib {version} DQN, 8 envs per runner, training_intensity 8"),
                        ("sb3", f"Stable-Baselines3 {__import__('stable_baselines3').__version__} DQN")):
        sample = 1 / figures[f"{name}_sampling_steps_per_s"]
        per_update = (1 / figures[f"{name}_learning_steps_per_s"] - sample) * UPDATE_EVERY
        figures[f"{name}_update_s"] = per_update
        rows.append((label, sample, per_update, figures[f"{name}_learning_steps_per_s"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dqn_cost.json").write_text(json.dumps({"threads": args.threads, "steps": args.steps, **figures}, indent=1))
    lines = ["| | sampling, ms per env step | update and the rest, ms per update | env steps/s while learning | vs floor |",
             "|---|---|---|---|---|"]
    for label, sample, update, rate in rows:
        lines.append(f"| {label} | {sample * 1e3:.2f} | {update * 1e3:.1f} | {rate:.1f} | "
                     f"{rate / figures['floor_learning_steps_per_s']:.2f} |")
    (out / "dqn_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
