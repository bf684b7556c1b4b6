"""``kd-system teacher train``: the command line of teacher training (training.py does the work)."""
from __future__ import annotations

import argparse
from pathlib import Path

from kd_system.errors import ConfigError
from kd_system.policies.networks import CNN_PRESETS
from kd_system.teachers import resume as resume_point
from kd_system.teachers.imports.cli import register_import
from kd_system.teachers.rllib_export import HPARAMS
from kd_system.teachers.training import TeacherTrainConfig, cli_flag, train_teacher


def register_cli(subparsers) -> None:
    teacher = subparsers.add_parser("teacher", help="train teacher policies with RLlib, or import them from other libraries")
    sub = teacher.add_subparsers(dest="teacher_command", required=True)
    p = sub.add_parser("train", help="train a DQN or PPO teacher and export it to the kd_system format")
    # Defaults are None here so that --resume can tell a flag given from one left out (DEFAULTS).
    p.add_argument("--env", help="Gymnasium env id, e.g. CartPole-v1")
    p.add_argument("--algo", help="dqn (q teacher) or ppo (logits teacher)")
    p.add_argument("--out", help="output checkpoint directory")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the training whose --out was DIR, with its settings; only --max-env-steps, "
                        "--max-wall-s (both totals over all parts) and --target-return may change")
    p.add_argument("--hidden", help="MLP teachers: hidden layer widths, comma separated (default 256,256)")
    p.add_argument("--preset", help=f"Atari teachers: CNN preset ({', '.join(CNN_PRESETS)}; default nature)")
    p.add_argument("--max-env-steps", type=int, help="budget of all parts together (default 200000)")
    p.add_argument("--max-wall-s", type=float, help="budget of all parts together, seconds (default 3600)")
    p.add_argument("--target-return", type=float, default=None, help="stop once greedy eval reaches this")
    p.add_argument("--eval-episodes", type=int, help="episodes for selection and the model card (default 100)")
    p.add_argument("--eval-every-iters", type=int, help="default 5")
    p.add_argument("--select-episodes", type=int, help="quick greedy eval before a full one (default 20)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--eval-seed", type=int, help="default 0")
    p.add_argument("--num-env-runners", type=int, help="0 (default) samples in the driver process")
    p.add_argument("--torch-threads", type=int, help="default 1")
    for name, (kind, algos, text) in HPARAMS.items():
        p.add_argument(cli_flag(name), dest=f"hp_{name}", type=kind, default=None, help=f"{text} ({'/'.join(algos)})")
    p.set_defaults(func=_cli_train)
    register_import(sub)


DEFAULTS = dict(hidden="256,256", preset="nature", max_env_steps=200_000, max_wall_s=3600.0, eval_episodes=100,
                eval_every_iters=5, select_episodes=20, seed=0, eval_seed=0, num_env_runners=0, torch_threads=1)
RESUME_CHANGES = ("max_env_steps", "max_wall_s", "target_return")  # budgets; the rest is the training's identity


def _cli_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _cli_resume(args)
    missing = [f"--{name}" for name in ("env", "algo", "out") if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} required: give --env, --algo and --out, or --resume DIR to continue a training")
    values = {name: default if getattr(args, name) is None else getattr(args, name) for name, default in DEFAULTS.items()}
    try:
        hidden = tuple(int(h) for h in str(values["hidden"]).split(",") if h.strip())
    except ValueError:
        raise ConfigError(f"--hidden: {values['hidden']!r} must be comma-separated integers, e.g. 256,256") from None
    hparams = {name: getattr(args, f"hp_{name}") for name in HPARAMS if getattr(args, f"hp_{name}") is not None}
    if resume_point.exists(args.out):
        raise ConfigError(f"--out {args.out} holds a teacher training already; continue it with --resume {args.out}, "
                          "or choose another --out")
    values.pop("hidden")
    cfg = TeacherTrainConfig(env_id=args.env, algorithm=args.algo, out_dir=args.out, hidden=hidden,
                             target_return=args.target_return, hparams=hparams, **values)
    train_teacher(cfg)
    return 0


def _cli_resume(args: argparse.Namespace) -> int:
    point = resume_point.load(args.resume)  # one line naming the directory if there is nothing to resume
    given = [name for name in ("env", "algo", "hidden", "preset", "eval_episodes", "eval_every_iters", "select_episodes",
                               "seed", "eval_seed", "num_env_runners", "torch_threads")
             if getattr(args, name) is not None]
    given += [f"hp_{name}" for name in HPARAMS if getattr(args, f"hp_{name}") is not None]
    if given:
        flags = ", ".join(cli_flag(name.removeprefix("hp_")) for name in given)
        raise ConfigError(f"--resume continues with the settings saved in {args.resume}; drop {flags} "
                          f"(only --max-env-steps, --max-wall-s and --target-return may change)")
    if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ConfigError(f"--out {args.out}: a resumed training writes where it started ({args.resume}); drop --out")
    changes = {name: getattr(args, name) for name in RESUME_CHANGES if getattr(args, name) is not None}
    # The directory may have moved since: the resumed part writes where it was found.
    cfg = TeacherTrainConfig.from_record(point.config, out_dir=str(args.resume), **changes)
    done = point.progress
    if done.env_steps >= cfg.max_env_steps or done.wall_s >= cfg.max_wall_s or (
            cfg.target_return is not None and done.best.get("full", -float("inf")) >= cfg.target_return):
        raise ConfigError(f"--resume {args.resume}: the training already spent its budget ({done.env_steps} env steps "
                          f"of --max-env-steps {cfg.max_env_steps}, {done.wall_s:.0f} s of --max-wall-s "
                          f"{cfg.max_wall_s:g}, best {done.best.get('full', float('nan')):.2f}); raise the budget "
                          "(or --target-return) to continue it")
    train_teacher(cfg, point)
    return 0
