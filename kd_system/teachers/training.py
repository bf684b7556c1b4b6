"""Train a teacher with RLlib (DQN -> ``q`` teacher, PPO -> ``logits`` teacher) and ship it in our format.

Every evaluation goes through OUR exported network (export -> verify -> FrozenPolicy -> greedy
episodes), so what is selected and reported is exactly what gets shipped. This module selects;
card.py evaluates the selected weights and writes them with their model card; cli.py is
``kd-system teacher train``.

Training goes in parts: after every iteration the resume point (resume.py) is rewritten in
``OUT/.training``, and ``kd-system teacher train --resume OUT`` continues from the last one, with
the counters, the best snapshot and the wall budget of all parts. A finished training keeps its
resume point, so raising its budget continues it. SIGTERM acts as Ctrl-C; both stop
the part at once and stop the Ray it started (its watchdog ends that Ray if this process is killed).
"""
from __future__ import annotations

import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
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
from kd_system.teachers import resume as resume_point
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

    def to_record(self) -> dict[str, Any]:
        """The config as JSON (the resume point keeps it, so ``--resume`` needs no other flag)."""
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_record(cls, record: dict[str, Any], **changes: Any) -> "TeacherTrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ConfigError(f"the resume point's config has unknown fields {unknown}: it was written by another version")
        return cls(**{**record, "hidden": tuple(record.get("hidden", (256, 256))), **changes})

    def resumed_hparams(self, env_steps: int) -> dict[str, Any]:
        """The hyper-parameters of a part that starts ``env_steps`` into the training: DQN's epsilon
        goes on from where its schedule left off, and learning waits until the replay buffer (not
        kept in the resume point) holds ``learning_starts`` fresh steps again."""
        hp = self.resolved_hparams()
        if self.algorithm != "dqn" or env_steps <= 0:
            return hp
        total, final = int(hp["epsilon_steps"]), float(hp["epsilon_final"])
        done = min(env_steps / max(total, 1), 1.0)
        return {**hp, "epsilon_start": 1.0 + (final - 1.0) * done, "epsilon_steps": max(total - env_steps, 1),
                "learning_starts": min(int(hp["learning_starts"]), int(hp["buffer_size"]))}

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


LEARNER_PARTS = ("rl_module", "optimizer")  # of the learner's state: what a resumed part needs


def train_teacher(cfg: TeacherTrainConfig, resume: resume_point.ResumePoint | None = None) -> Path:
    """Train (or go on from ``resume``), select the best greedy export, write ``spec.json``/
    ``model.safetensors``/``MODEL_CARD.md``."""
    cfg.validate()
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

    from kd_system.launch.run import _stop_ray
    from kd_system.launch.topology import connect_ray
    from kd_system.launch.watchdog import Watchdog

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
    progress = resume.progress if resume else resume_point.Progress()
    best_state = dict(resume.best_state) if resume and resume.best_state is not None else None
    offset_steps, offset_wall = progress.env_steps, progress.wall_s
    if resume:
        progress.resumed_at.append(offset_steps)
        print(f"[teacher {cfg.env_id} {cfg.algorithm}] resuming at iteration {progress.iteration}, env steps "
              f"{offset_steps}, {offset_wall:.0f} s so far", flush=True)

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

    # Ray started here is stopped here, whatever happens; SIGTERM raises KeyboardInterrupt like Ctrl-C.
    select_seed = cfg.eval_seed + 1_000_000  # selection episodes never overlap the reported ones
    hparams = cfg.resumed_hparams(offset_steps)
    seed = cfg.seed + len(progress.resumed_at)  # a resumed part does not replay the first part's episodes
    started_ray = connect_ray(None, num_cpus=max(2, cfg.num_env_runners + 1), quiet=True)
    algo, watchdog, start = None, None, time.monotonic()
    try:
        if started_ray and not os.environ.get("RAY_ADDRESS"):  # a Ray it started; never a cluster it joined
            watchdog = Watchdog.for_local_ray()
        if cnn:  # RLlib gets the teacher-training env (envs.make_training_env) in its image layout
            algo = build_algo(register_training_env(), {"env_id": cfg.env_id}, cfg.algorithm, cnn_model_config(network),
                              hparams, seed, cfg.num_env_runners)
        else:
            algo = build_algo(cfg.env_id, {}, cfg.algorithm, mlp_model_config(cfg.hidden), hparams, seed,
                              cfg.num_env_runners)
        if resume:
            algo.set_state({"learner_group": {"learner": resume.learner_state}})
        latest = float("nan")
        while True:
            result = algo.train()
            progress.iteration += 1
            progress.env_steps = offset_steps + int(_metric(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME))
            progress.wall_s = offset_wall + time.monotonic() - start
            done = progress.env_steps >= cfg.max_env_steps or progress.wall_s >= cfg.max_wall_s
            best = progress.best
            if progress.iteration % cfg.eval_every_iters == 0 or done:
                net, diff = export_now()
                latest = greedy(net, cfg.select_episodes, select_seed).mean
                if latest >= best.get("quick", -math.inf):
                    full = greedy(net, cfg.eval_episodes, select_seed + 100_000).mean
                    if full >= best.get("full", -math.inf):  # ties: the later, longer-trained weights
                        progress.best = best = dict(quick=latest, full=full, steps=progress.env_steps,
                                                    wall=progress.wall_s, iteration=progress.iteration, diff=diff)
                        best_state = {k: v.detach().clone().numpy() for k, v in net.state_dict().items()}
                    if cfg.target_return is not None and full >= cfg.target_return:
                        done = True
            learner = algo.get_state(components=["learner_group"])["learner_group"]["learner"]
            resume_point.save(cfg.out_dir, cfg.to_record(), progress, {k: learner[k] for k in LEARNER_PARTS},
                              best_state)
            print(f"[teacher {cfg.env_id} {cfg.algorithm}] iter {progress.iteration:4d}  env_steps {progress.env_steps:8d}  "
                  f"train_return {_metric(result, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN):8.2f}  "
                  f"greedy_eval {latest:8.2f}  best {best.get('full', float('nan')):8.2f}  "
                  f"elapsed {progress.wall_s:7.1f}s", flush=True)
            if done:
                break
    except KeyboardInterrupt:
        print(f"[teacher {cfg.env_id} {cfg.algorithm}] stopped at iteration {progress.iteration} (env steps "
              f"{progress.env_steps}); continue with: kd-system teacher train --resume {shlex.quote(cfg.out_dir)}",
              flush=True)
        raise
    finally:
        try:
            if algo is not None:
                algo.stop()
        finally:
            if started_ray:
                _stop_ray(watchdog)
    if best_state is None:
        raise ConfigError(f"max_env_steps/max_wall_s: the training at {cfg.out_dir} ended before its first evaluation; "
                          "raise the budget and continue with --resume")
    best = {**progress.best, "state": {k: torch.from_numpy(v) for k, v in best_state.items()}}
    return write_teacher(cfg, spec, best, progress.env_steps, progress.wall_s, progress.resumed_at)
