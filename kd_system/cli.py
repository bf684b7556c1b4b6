"""``kd-system``: run a distillation, resume one, evaluate a checkpoint, train a teacher, benchmark.

Every user error is one line on stderr, naming the file or field and what to do, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kd_system.errors import KDError, RunFailed


def _run(args: argparse.Namespace) -> int:
    from kd_system.launch.run import run as distil
    from kd_system.config import load_config
    from kd_system.launch.secrets import with_secrets
    from kd_system.checkpoints.run_dir import RunDirectory

    if args.trust_pickle:  # the explicit opt-in: an RLlib checkpoint or a VecNormalize file as teacher
        args.set = [*args.set, "teacher.trust_pickle=true"]
    if args.resume:
        if args.config:
            raise KDError("--resume takes the config saved in the run directory; drop --config (use --set to change settings)")
        run, config = RunDirectory.open_existing(args.resume, args.set)
    else:
        config = load_config(args.config, args.set)
        label = "multitask" if config.tasks else config.env.id.replace('/', '_').lower()
        name = config.head.run_name or f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
        from kd_system.launch.preparation import prepare
        prepare(config)  # fail on a bad env, teacher or Redis before creating anything on disk
        url = with_secrets(config).store.redis_url
        if url is not None:
            from kd_system.replay.connection import check_reachable
            check_reachable(url)
        run = RunDirectory.create(config.head.runs_dir, name, config)
    # The run directory keeps env:NAME references; the processes get what they name.
    try:
        summary = distil(with_secrets(config), run, address=args.address, resumed=bool(args.resume))
    except KDError:
        if not args.resume:
            run.remove_if_unused()  # refused before it did anything (e.g. more actors than the cluster): no stub
        raise
    print(json.dumps(summary, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from kd_system.evaluation.checkpoint_eval import evaluate_checkpoint

    if args.episodes < 1:
        raise KDError(f"--episodes {args.episodes} must be at least 1")
    report = evaluate_checkpoint(args.checkpoint, args.env, args.episodes, args.seed)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kd-system", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="distil a teacher into a student (default: the shipped CartPole-v1 teacher)")
    run.add_argument("--config", help="YAML run config, or a shipped config name in kd_system/configs/, e.g. cartpole-v1, multitask-classic, breakout-v5")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one setting, e.g. --set learner.lr=3e-4 (repeatable)")
    run.add_argument("--address", help="join a running Ray cluster (auto or HOST:PORT) instead of starting a local one")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its latest snapshot")
    run.add_argument("--trust-pickle", action="store_true",
                     help="allow a teacher that is a pickle (an RLlib checkpoint, an SB3 vecnormalize.pkl): only files you trust")
    run.set_defaults(func=_run)

    evaluate = commands.add_parser("eval", help="score a checkpoint (student snapshot or teacher) over N episodes")
    evaluate.add_argument("checkpoint", help="a checkpoint directory (spec.json + model.safetensors), or a .onnx/.pt "
                          "written by `kd-system export` (with its .json sidecar)")
    evaluate.add_argument("--episodes", type=int, default=20)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--env", help="env id (default: the one in the checkpoint's spec)")
    evaluate.add_argument("--json", metavar="PATH", help="also write the report to this file")
    evaluate.set_defaults(func=_eval)

    from kd_system.teachers.cli import register_cli
    register_cli(commands)
    from kd_system.export.cli import register_cli as register_export
    register_export(commands)
    from kd_system.experiments.command import register_cli as register_experiment
    register_experiment(commands)
    from kd_system.experiments.repeats import register_cli as register_repeat
    register_repeat(commands)
    from kd_system.bench.command import register_cli as register_bench
    register_bench(commands)
    from kd_system.config_cli import register_cli as register_config
    register_config(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KDError as exc:
        message = " ".join(str(exc).split())
        print(f"kd-system: error: {message}", file=sys.stderr)
        return 2
    except RunFailed as exc:  # the summary is written; the input was not at fault, so not 2
        print(f"kd-system: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kd-system: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
