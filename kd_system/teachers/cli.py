"""``kd-system teacher train``: the command line of teacher training (training.py does the work)."""
from __future__ import annotations

import argparse

from kd_system.errors import ConfigError
from kd_system.policies.networks import CNN_PRESETS
from kd_system.teachers.imports.cli import register_import
from kd_system.teachers.rllib_export import HPARAMS
from kd_system.teachers.training import TeacherTrainConfig, cli_flag, train_teacher


def register_cli(subparsers) -> None:
    teacher = subparsers.add_parser("teacher", help="train teacher policies with RLlib, or import them from other libraries")
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
        p.add_argument(cli_flag(name), dest=f"hp_{name}", type=kind, default=None, help=f"{text} ({'/'.join(algos)})")
    p.set_defaults(func=_cli_train)
    register_import(sub)


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
