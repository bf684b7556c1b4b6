"""Train a teacher with RLlib (DQN -> ``q`` teacher, PPO -> ``logits`` teacher) and ship it in our format.

Every evaluation goes through OUR exported network (export -> verify -> FrozenPolicy -> greedy
episodes), so what is selected and reported is exactly what gets shipped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from kd_system.envs.atari import is_atari_id
from kd_system.envs.make import check_env_id, env_spaces, make_env
from kd_system.errors import ConfigError
from kd_system.evaluation.episodes import eval_epsilon, random_act_fn, run_episodes
from kd_system.policies.networks import CNN_PRESETS, build_network, cnn_spec, count_parameters
from kd_system.policies.files import FrozenPolicy, PolicySpec, save_policy
from kd_system.teachers.rllib_cnn import ATARI_DEFAULTS, cnn_model_config, export_cnn, register_training_env, to_rllib_obs
from kd_system.teachers.rllib_export import (ALGORITHMS, DEFAULTS, HPARAMS, build_algo, export_mlp, mlp_model_config,
                           sample_observations, verify_export)

# Selection evaluations cut Atari games at 5 minutes of play (18,000 frames), as Mnih et al.
# (2015) evaluated: a greedy policy that never presses FIRE (early Breakout) otherwise stalls
# until ALE's 30-minute cap, and every selection evaluation would cost minutes of training time.
# The model card's evaluation plays whole games.
SELECTION_MAX_STEPS_ATARI = 4_500


def _flag(name: str) -> str:
    return "--" + name.rstrip("_").replace("_", "-")


@dataclass(frozen=True)
class TeacherTrainConfig:
    env_id: str
    algorithm: str
    out_dir: str
    hidden: tuple[int, ...] = (256, 256)  # MLP teachers (flat observations)
    preset: str = "nature"  # CNN teachers (Atari frame stacks): networks.CNN_PRESETS
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

    def validate(self) -> None:
        check_env_id(self.env_id, "env_id")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm: {self.algorithm!r} is not supported; use one of {', '.join(ALGORITHMS)}")
        if not self.out_dir:
            raise ConfigError("out_dir: give the directory to write the teacher to")
        if is_atari_id(self.env_id) and self.preset not in CNN_PRESETS:
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
        defaults = ATARI_DEFAULTS if is_atari_id(self.env_id) else DEFAULTS
        return {**defaults[self.algorithm], **self.hparams}

    def network(self) -> dict[str, Any]:
        if is_atari_id(self.env_id):
            return cnn_spec(self.preset)
        return {"kind": "mlp", "hidden": [int(h) for h in self.hidden], "activation": "relu"}

    def command(self) -> str:
        """The ``kd-system teacher train`` command line equivalent to this config."""
        args = ["kd-system", "teacher", "train", "--env", self.env_id, "--algo", self.algorithm, "--out", self.out_dir,
                *(["--preset", self.preset] if is_atari_id(self.env_id) else ["--hidden", ",".join(str(h) for h in self.hidden)]),
                "--max-env-steps", str(self.max_env_steps),
                "--max-wall-s", f"{self.max_wall_s:g}", "--eval-episodes", str(self.eval_episodes),
                "--eval-every-iters", str(self.eval_every_iters), "--select-episodes", str(self.select_episodes),
                "--seed", str(self.seed), "--eval-seed", str(self.eval_seed),
                "--num-env-runners", str(self.num_env_runners), "--torch-threads", str(self.torch_threads)]
        if self.target_return is not None:
            args += ["--target-return", f"{self.target_return:g}"]
        for name, value in sorted(self.hparams.items()):
            args += [_flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
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
    spaces = env_spaces(cfg.env_id)
    probe = make_env(cfg.env_id)
    check_obs = sample_observations(probe.observation_space, 512, cfg.seed)
    probe.close()
    obs_dim = int(np.prod(spaces.obs_shape))
    network = cfg.network()
    atari = is_atari_id(cfg.env_id)
    output_kind = "q" if cfg.algorithm == "dqn" else "logits"
    spec = PolicySpec("teacher", cfg.env_id, spaces.obs_shape, spaces.obs_dtype, spaces.num_actions, output_kind, network)

    def export_now():  # -> (our verified network, max abs diff vs RLlib)
        module = algo.get_module()
        if atari:
            ours = export_cnn(module, cfg.algorithm, network, spaces.obs_shape, spaces.num_actions)
            return ours, verify_export(module, cfg.algorithm, ours, check_obs, to_rllib=to_rllib_obs)
        ours = export_mlp(module, cfg.algorithm, obs_dim, spaces.num_actions, list(cfg.hidden), "relu")
        return ours, verify_export(module, cfg.algorithm, ours, check_obs)

    def greedy(net, episodes: int, seed: int):
        policy = FrozenPolicy(spec, net)
        return run_episodes(cfg.env_id, policy.greedy_actions, episodes, seed,
                            max_episode_steps=SELECTION_MAX_STEPS_ATARI if atari else None)

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=max(2, cfg.num_env_runners + 1), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=False)
    start = time.monotonic()
    best: dict[str, Any] = {}
    select_seed = cfg.eval_seed + 1_000_000  # selection episodes never overlap the reported ones
    if atari:  # RLlib gets the teacher-training settings (life loss, clipped rewards) in its image layout
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
    return _write_teacher(cfg, spec, best, total_steps, total_wall)


def _eval_policy_text(env_id: str) -> str:
    epsilon = eval_epsilon(env_id)
    return "greedy argmax of the exported network" + (f", a random action with probability {epsilon:g} "
                                                      "(Mnih et al. 2015)" if epsilon else "")


def _return_label(card: dict) -> str:
    epsilon = card.get("eval_epsilon", 0.0)
    return f"Epsilon-greedy ({epsilon:g}) return" if epsilon else "Greedy return"


def _write_teacher(cfg: TeacherTrainConfig, spec: PolicySpec, best: dict, total_steps: int, total_wall: float) -> Path:
    import ray

    out = Path(cfg.out_dir)
    with tempfile.TemporaryDirectory() as tmp:  # round-trip through the file format before evaluating
        net = build_network(spec.network, spec.obs_shape, spec.num_actions)
        net.load_state_dict(best["state"])
        save_policy(tmp, spec, net)
        policy = FrozenPolicy.load(tmp)
    stats = run_episodes(cfg.env_id, policy.greedy_actions, cfg.eval_episodes, cfg.eval_seed)
    rand = run_episodes(cfg.env_id, random_act_fn(spec.num_actions, cfg.eval_seed), cfg.eval_episodes, cfg.eval_seed)
    num_params = count_parameters(policy.module)
    card = {
        "eval_return_mean": round(stats.mean, 3), "eval_return_std": round(stats.std, 3),
        "eval_return_min": float(np.min(stats.returns)), "eval_episodes": cfg.eval_episodes,
        "eval_seed": cfg.eval_seed, "eval_policy": _eval_policy_text(cfg.env_id), "eval_epsilon": eval_epsilon(cfg.env_id),
        "random_return_mean": round(rand.mean, 3), "random_return_std": round(rand.std, 3),
        "train_env_steps": best["steps"], "train_wall_s": round(best["wall"], 1),
        "train_env_steps_total": total_steps, "train_wall_s_total": round(total_wall, 1),
        "selected_iteration": best["iteration"], "selection_eval_mean": round(best["full"], 3),
        **({"selection_max_episode_steps": SELECTION_MAX_STEPS_ATARI} if is_atari_id(cfg.env_id) else {}),
        "export_max_abs_diff": best["diff"], "algorithm": cfg.algorithm, "rllib_version": ray.__version__,
        "torch_version": torch.__version__, "network": spec.network, "num_params": num_params,
        **({} if is_atari_id(cfg.env_id) else {"hidden": list(cfg.hidden)}),
        "weights_bytes": num_params * 4, "hparams": cfg.resolved_hparams(), "seed": cfg.seed,
        "command": cfg.command(), "created": datetime.date.today().isoformat(),
    }
    final = PolicySpec(**{**spec.__dict__, "num_params": num_params, "model_card": card})
    save_policy(out, final, policy.module)
    (out / "MODEL_CARD.md").write_text(_markdown(final, card))
    print(f"[teacher {cfg.env_id}] wrote {out}: greedy {stats.mean:.2f} ± {stats.std:.2f} over {cfg.eval_episodes} "
          f"episodes (random {rand.mean:.2f}), {num_params} params", flush=True)
    return out


def _network_text(spec: PolicySpec) -> str:
    net = spec.network
    if net["kind"] == "cnn":
        convs = ", ".join(f"{c}x{k}x{k}/{s}" for c, k, s in zip(net["channels"], net["kernels"], net["strides"]))
        return (f"CNN `{net.get('preset', 'custom')}` on {spec.obs_shape} uint8 frame stacks: conv {convs} "
                f"→ fc {' → '.join(str(h) for h in net['fc'])} → {spec.num_actions}, ReLU")
    return f"MLP {spec.obs_shape} → {' → '.join(str(h) for h in net['hidden'])} → {spec.num_actions}, ReLU"


def _markdown(spec: PolicySpec, card: dict) -> str:
    kind = "Q-values (DQN, double-Q, n-step, no dueling)" if spec.output_kind == "q" else "policy logits (PPO actor)"
    return f"""# Teacher: {spec.env_id} ({card['algorithm'].upper()})

Trained with RLlib {card['rllib_version']} (new API stack) by `kd_system.teachers.training`, exported to the
kd_system policy format and verified against RLlib's own forward (max abs diff {card['export_max_abs_diff']:.2e}).

| | |
|---|---|
| {_return_label(card)} ({card['eval_episodes']} episodes, seeds {card['eval_seed']}..) | **{card['eval_return_mean']:.2f} ± {card['eval_return_std']:.2f}** (min {card['eval_return_min']:.1f}) |
| Random policy, same seeds | {card['random_return_mean']:.2f} ± {card['random_return_std']:.2f} |
| Network | {_network_text(spec)}; outputs {kind} |
| Parameters | {card['num_params']:,} ({card['weights_bytes'] / 1024:.0f} KiB float32) |
| Env steps to the shipped weights | {card['train_env_steps']:,} ({card['train_wall_s']:.0f} s); run total {card['train_env_steps_total']:,} ({card['train_wall_s_total']:.0f} s) |
| Created | {card['created']} |

The shipped weights are the best greedy snapshot (selected on episodes disjoint from the ones reported above).

Hyper-parameters: `{json.dumps(card['hparams'], sort_keys=True)}`

Reproduce with:

```
{card['command']}
```
"""


def register_cli(subparsers) -> None:
    teacher = subparsers.add_parser("teacher", help="train teacher policies with RLlib")
    sub = teacher.add_subparsers(dest="teacher_command", required=True)
    p = sub.add_parser("train", help="train a DQN or PPO teacher and export it to the kd_system format")
    p.add_argument("--env", required=True, help="Gymnasium env id, e.g. CartPole-v1")
    p.add_argument("--algo", required=True, help="dqn (q teacher) or ppo (logits teacher)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--hidden", default="256,256", help="MLP teachers: hidden layer widths, comma separated")
    p.add_argument("--preset", default="nature", help=f"Atari teachers: CNN preset ({', '.join(CNN_PRESETS)})")
    p.add_argument("--max-env-steps", type=int, default=200_000)
    p.add_argument("--max-wall-s", type=float, default=3600.0)
    p.add_argument("--target-return", type=float, default=None, help="stop once greedy eval reaches this")
    p.add_argument("--eval-episodes", type=int, default=100, help="episodes for selection and the model card")
    p.add_argument("--eval-every-iters", type=int, default=5)
    p.add_argument("--select-episodes", type=int, default=20, help="quick greedy eval before a full one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--num-env-runners", type=int, default=0, help="0 samples in the driver process")
    p.add_argument("--torch-threads", type=int, default=1)
    for name, (kind, algos, text) in HPARAMS.items():
        p.add_argument(_flag(name), dest=f"hp_{name}", type=kind, default=None, help=f"{text} ({'/'.join(algos)})")
    p.set_defaults(func=_cli_train)


def _cli_train(args: argparse.Namespace) -> int:
    try:
        hidden = tuple(int(h) for h in str(args.hidden).split(",") if h.strip())
    except ValueError:
        raise ConfigError(f"--hidden: {args.hidden!r} must be comma-separated integers, e.g. 256,256") from None
    hparams = {name: getattr(args, f"hp_{name}") for name in HPARAMS if getattr(args, f"hp_{name}") is not None}
    cfg = TeacherTrainConfig(env_id=args.env, algorithm=args.algo, out_dir=args.out, hidden=hidden,
                             preset=args.preset, max_env_steps=args.max_env_steps, max_wall_s=args.max_wall_s,
                             target_return=args.target_return, eval_episodes=args.eval_episodes,
                             eval_every_iters=args.eval_every_iters, select_episodes=args.select_episodes,
                             seed=args.seed, eval_seed=args.eval_seed, num_env_runners=args.num_env_runners,
                             torch_threads=args.torch_threads, hparams=hparams)
    train_teacher(cfg)
    return 0
