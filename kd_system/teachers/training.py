"""Train a teacher with RLlib (DQN -> ``q`` teacher, PPO -> ``logits`` teacher) and ship it in our format.

Every evaluation goes through OUR exported network (export -> verify -> FrozenPolicy -> greedy
episodes), so what is selected and reported is exactly what gets shipped. This module selects;
card.py evaluates the selected weights and writes them with their model card; cli.py is
``kd-system teacher train``.
"""
from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from kd_system.envs.make import EnvSpaces, check_env_id, env_spaces, make_env
from kd_system.envs.protocol import quick_eval_max_steps
from kd_system.errors import ConfigError
from kd_system.evaluation.episodes import run_episodes
from kd_system.policies.networks import CNN_PRESETS, cnn_spec
from kd_system.policies.files import FrozenPolicy, PolicySpec
from kd_system.teachers.card import write_teacher
from kd_system.teachers.rllib_cnn import ATARI_DEFAULTS, cnn_model_config, export_cnn, register_training_env, to_rllib_obs
from kd_system.teachers.rllib_export import (ALGORITHMS, DEFAULTS, HPARAMS, build_algo, export_mlp, mlp_model_config,
                           sample_observations, verify_export)


def cli_flag(name: str) -> str:
    """``--lambda`` for the hyper-parameter ``lambda_``: the command line spelling (cli.py, command())."""
    return "--" + name.rstrip("_").replace("_", "-")


@dataclass(frozen=True)
class TeacherTrainConfig:
    env_id: str
    algorithm: str
    out_dir: str
    hidden: tuple[int, ...] = (256, 256)  # MLP teachers (flat observations)
    preset: str = "nature"  # CNN teachers (pixel frame stacks, i.e. Atari): networks.CNN_PRESETS
    max_env_steps: int = 200_000
    max_wall_s: float = 3600.0
    target_return: Optional[float] = None
    eval_episodes: int = 100
    eval_every_iters: int = 5
    select_episodes: int = 20
    seed: int = 0
    eval_seed: int = 0
    num_env_runners: int = 0
    torch_threads: int = 1
    hparams: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def spaces(self) -> EnvSpaces:
        """The env's spaces, read once (validate checks the env id first)."""
        return env_spaces(self.env_id)

    @property
    def cnn(self) -> bool:
        """Pixel observations get a CNN teacher (``preset``), flat ones an MLP (``hidden``): the one
        decision everything else (defaults, training env, export, card) follows."""
        return self.spaces.pixels

    def validate(self) -> None:
        check_env_id(self.env_id, "env_id")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm: {self.algorithm!r} is not supported; use one of {', '.join(ALGORITHMS)}")
        if not self.out_dir:
            raise ConfigError("out_dir: give the directory to write the teacher to")
        if self.cnn and self.preset not in CNN_PRESETS:
            raise ConfigError(f"preset: {self.preset!r} is not a CNN preset; use one of {', '.join(CNN_PRESETS)}")
        if not self.hidden or any(int(h) <= 0 for h in self.hidden):
            raise ConfigError(f"hidden: {list(self.hidden)} must be positive layer widths, e.g. 256,256")
        for name, low in [("max_env_steps", 1), ("max_wall_s", 1e-9), ("eval_episodes", 1), ("eval_every_iters", 1),
                          ("select_episodes", 1), ("torch_threads", 1), ("num_env_runners", 0), ("seed", 0), ("eval_seed", 0)]:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < low:
                raise ConfigError(f"{name}: {value!r} must be a number >= {low}")
        if self.target_return is not None and not math.isfinite(self.target_return):
            raise ConfigError(f"target_return: {self.target_return!r} must be a finite number")
        for name, value in self.hparams.items():
            if name not in HPARAMS or self.algorithm not in HPARAMS[name][1]:
                known = sorted(k for k, v in HPARAMS.items() if self.algorithm in v[1])
                raise ConfigError(f"hparams.{name}: not a {self.algorithm} hyper-parameter; use one of {', '.join(known)}")
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"hparams.{name}: {value!r} must be a finite number >= 0")

    def resolved_hparams(self) -> dict[str, Any]:
        defaults = ATARI_DEFAULTS if self.cnn else DEFAULTS
        return {**defaults[self.algorithm], **self.hparams}

    def network(self) -> dict[str, Any]:
        if self.cnn:
            return cnn_spec(self.preset)
        return {"kind": "mlp", "hidden": [int(h) for h in self.hidden], "activation": "relu"}

    def command(self) -> str:
        """The ``kd-system teacher train`` command line equivalent to this config."""
        args = ["kd-system", "teacher", "train", "--env", self.env_id, "--algo", self.algorithm, "--out", self.out_dir,
                *(["--preset", self.preset] if self.cnn else ["--hidden", ",".join(str(h) for h in self.hidden)]),
                "--max-env-steps", str(self.max_env_steps),
                "--max-wall-s", f"{self.max_wall_s:g}", "--eval-episodes", str(self.eval_episodes),
                "--eval-every-iters", str(self.eval_every_iters), "--select-episodes", str(self.select_episodes),
                "--seed", str(self.seed), "--eval-seed", str(self.eval_seed),
                "--num-env-runners", str(self.num_env_runners), "--torch-threads", str(self.torch_threads)]
        if self.target_return is not None:
            args += ["--target-return", f"{self.target_return:g}"]
        for name, value in sorted(self.hparams.items()):
            args += [cli_flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
        return shlex.join(args)


def _metric(result: dict, *keys: str) -> float:
    for key in keys:
        result = result.get(key, {}) if isinstance(result, dict) else {}
    return float(result) if isinstance(result, (int, float, np.number)) else float("nan")


def train_teacher(cfg: TeacherTrainConfig) -> Path:
    """Train, select the best greedy export, write ``spec.json``/``model.safetensors``/``MODEL_CARD.md``."""
    cfg.validate()
    import ray
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

    torch.set_num_threads(cfg.torch_threads)
    spaces = cfg.spaces
    probe = make_env(cfg.env_id)
    check_obs = sample_observations(probe.observation_space, 512, cfg.seed)
    probe.close()
    obs_dim = int(np.prod(spaces.obs_shape))
    network = cfg.network()
    cnn = cfg.cnn
    output_kind = "q" if cfg.algorithm == "dqn" else "logits"
    spec = PolicySpec("teacher", cfg.env_id, spaces.obs_shape, spaces.obs_dtype, spaces.num_actions, output_kind, network)

    def export_now():  # -> (our verified network, max abs diff vs RLlib)
        module = algo.get_module()
        if cnn:
            ours = export_cnn(module, cfg.algorithm, network, spaces.obs_shape, spaces.num_actions)
            return ours, verify_export(module, cfg.algorithm, ours, check_obs, to_rllib=to_rllib_obs)
        ours = export_mlp(module, cfg.algorithm, obs_dim, spaces.num_actions, list(cfg.hidden), "relu")
        return ours, verify_export(module, cfg.algorithm, ours, check_obs)

    def greedy(net, episodes: int, seed: int):
        policy = FrozenPolicy(spec, net)
        return run_episodes(cfg.env_id, policy.greedy_actions, episodes, seed,
                            max_episode_steps=quick_eval_max_steps(cfg.env_id))  # the card's evaluation: whole games

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=max(2, cfg.num_env_runners + 1), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
    start = time.monotonic()
    best: dict[str, Any] = {}
    select_seed = cfg.eval_seed + 1_000_000  # selection episodes never overlap the reported ones
    if cnn:  # RLlib gets the teacher-training env (envs.make_training_env) in its image layout
        algo = build_algo(register_training_env(), {"env_id": cfg.env_id}, cfg.algorithm, cnn_model_config(network),
                          cfg.resolved_hparams(), cfg.seed, cfg.num_env_runners)
    else:
        algo = build_algo(cfg.env_id, {}, cfg.algorithm, mlp_model_config(cfg.hidden), cfg.resolved_hparams(),
                          cfg.seed, cfg.num_env_runners)
    try:
        iteration, steps, latest = 0, 0, float("nan")
        while True:
            result = algo.train()
            iteration += 1
            steps = int(_metric(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME))
            elapsed = time.monotonic() - start
            done = steps >= cfg.max_env_steps or elapsed >= cfg.max_wall_s
            if iteration % cfg.eval_every_iters == 0 or done:
                net, diff = export_now()
                latest = greedy(net, cfg.select_episodes, select_seed).mean
                if latest >= best.get("quick", -math.inf):
                    full = greedy(net, cfg.eval_episodes, select_seed + 100_000).mean
                    if full >= best.get("full", -math.inf):  # ties: the later, longer-trained weights
                        best = dict(quick=latest, full=full, state={k: v.clone() for k, v in net.state_dict().items()},
                                    steps=steps, wall=time.monotonic() - start, iteration=iteration, diff=diff)
                    if cfg.target_return is not None and full >= cfg.target_return:
                        done = True
            print(f"[teacher {cfg.env_id} {cfg.algorithm}] iter {iteration:4d}  env_steps {steps:8d}  "
                  f"train_return {_metric(result, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN):8.2f}  "
                  f"greedy_eval {latest:8.2f}  best {best.get('full', float('nan')):8.2f}  "
                  f"elapsed {time.monotonic() - start:7.1f}s", flush=True)
            if done:
                break
        total_steps, total_wall = steps, time.monotonic() - start
    finally:
        algo.stop()
        if started_ray:
            ray.shutdown()
    return write_teacher(cfg, spec, best, total_steps, total_wall)
