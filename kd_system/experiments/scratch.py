"""The from-scratch baseline: the student's own network trained with RLlib DQN on the same env.

It answers "how many env steps would this student need without a teacher?". Every evaluation
exports the RLlib module to our network, an MLP or an Atari CNN (the teacher-training path), and
plays greedy episodes on the evaluation env (whole games, raw rewards, for Atari); the
score is normalized with the teacher's and the random policy's returns from the teacher's model
card, so it is on the same scale as the distillation runs. It stops at the threshold or a budget.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from kd_system.envs.make import env_spaces
from kd_system.evaluation.episodes import run_episodes
from kd_system.policies.files import FrozenPolicy, PolicySpec
from kd_system.teachers.rllib_cnn import ATARI_DEFAULTS, cnn_model_config, export_cnn, register_training_env
from kd_system.teachers.rllib_export import DEFAULTS, build_algo, export_mlp, mlp_model_config
from kd_system.evaluation.scores import normalized_score

EVAL_SEED = 2_000_000  # episodes disjoint from the teacher card's and the distillation runs' seeds


@dataclass(frozen=True)
class ScratchBudget:
    max_env_steps: int = 100_000
    max_wall_s: float = 600.0
    eval_every_steps: int = 1_000
    eval_episodes: int = 10
    threshold: float = 0.95
    # None: 1e-3 for MLPs (the shipped CartPole DQN teacher's), ATARI_DEFAULTS' 1e-4 for CNNs; the
    # other DQN settings are DEFAULTS / ATARI_DEFAULTS
    lr: Optional[float] = None


def teacher_card(teacher_dir: Path) -> dict:
    spec = json.loads((teacher_dir / "spec.json").read_text())
    card = spec["model_card"]
    return {"teacher_return": card["eval_return_mean"], "random_return": card["random_return_mean"],
            "teacher_params": spec["num_params"]}


MLP_SCRATCH_LR = 1e-3  # the shipped CartPole DQN teacher's learning rate


def _dqn_setup(env_id: str, network: dict[str, Any], budget: ScratchBudget, seed: int):
    """(algo, its hyper-parameters, export) for RLlib DQN on ``network``; ``export()`` gives our
    network with the algo's current weights."""
    spaces = env_spaces(env_id)
    if network["kind"] == "cnn":  # trains on the teacher-training env, like a CNN (Atari) teacher
        hparams = {**ATARI_DEFAULTS["dqn"], **({"lr": budget.lr} if budget.lr else {}),
                   "steps_per_iter": budget.eval_every_steps}
        algo = build_algo(register_training_env(), {"env_id": env_id}, "dqn", cnn_model_config(network), hparams, seed, 0)
        return algo, hparams, lambda: export_cnn(algo.get_module(), "dqn", network, spaces.obs_shape, spaces.num_actions)
    hparams = {**DEFAULTS["dqn"], "lr": budget.lr or MLP_SCRATCH_LR, "steps_per_iter": budget.eval_every_steps}
    hidden = list(network["hidden"])
    algo = build_algo(env_id, {}, "dqn", mlp_model_config(tuple(hidden)), hparams, seed, 0)
    obs_dim = int(np.prod(spaces.obs_shape))
    return algo, hparams, lambda: export_mlp(algo.get_module(), "dqn", obs_dim, spaces.num_actions, hidden,
                                             network.get("activation", "relu"))


def train_from_scratch(env_id: str, network: dict[str, Any], teacher_dir: Path, budget: ScratchBudget,
                       seed: int = 0) -> dict:
    """Train until the greedy normalized score reaches ``budget.threshold`` or the budget ends.

    Returns the curve (env steps, wall s, score per evaluation) and the first crossing, if any."""
    import ray
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    torch.set_num_threads(2 if network["kind"] == "cnn" else 1)  # a CNN's backward wants both cores here
    card = teacher_card(teacher_dir)
    spaces = env_spaces(env_id)
    spec = PolicySpec("student", env_id, spaces.obs_shape, spaces.obs_dtype, spaces.num_actions, "q", network)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    algo, hparams, export = _dqn_setup(env_id, network, budget, seed)
    label = network.get("preset") or network.get("hidden")
    curve: list[dict] = []
    reached = None
    start = time.monotonic()
    try:
        while True:
            result = algo.train()
            steps = int(result.get(ENV_RUNNER_RESULTS, {}).get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
            policy = FrozenPolicy(spec, export())
            returns = run_episodes(env_id, policy.greedy_actions, budget.eval_episodes, EVAL_SEED)
            score = normalized_score(returns.mean, card["teacher_return"], card["random_return"])
            wall_s = time.monotonic() - start
            curve.append({"env_steps": steps, "wall_s": round(wall_s, 2), "normalized_score": score,
                          "return_mean": returns.mean})
            print(f"[scratch {env_id} {label}] env_steps {steps:7d}  score {score:6.3f}  {wall_s:6.1f}s", flush=True)
            if score >= budget.threshold:
                reached = curve[-1]
                break
            if steps >= budget.max_env_steps or wall_s >= budget.max_wall_s:
                break
    finally:
        algo.stop()
        if started_ray:
            ray.shutdown()
    return {"env_id": env_id, "network": network, "algorithm": "rllib-dqn", "hparams": hparams, "seed": seed,
            "budget": asdict(budget), **card, "curve": curve,
            "env_steps_to_threshold": reached["env_steps"] if reached else None,
            "wall_s_to_threshold": reached["wall_s"] if reached else None,
            "env_steps_end": curve[-1]["env_steps"] if curve else 0, "wall_s_end": curve[-1]["wall_s"] if curve else 0.0}
