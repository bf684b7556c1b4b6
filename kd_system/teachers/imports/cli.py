"""``kd-system teacher import``: convert a teacher from another library into the project's format."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from kd_system.errors import ConfigError
from kd_system.metrics import say
from kd_system.teachers.imports.records import FORMATS, LAYOUTS, ImportOptions


def register_import(sub) -> None:
    p = sub.add_parser("import", help="import a teacher from Stable-Baselines3, CleanRL, RLlib, TorchScript or ONNX",
                       description="Convert a trained agent into a kd_system teacher (spec.json + weights + MODEL_CARD.md), "
                                   "checked against the source library's own forward on 1,000 states of the env.")
    p.add_argument("source", help="SB3 .zip, CleanRL .cleanrl_model, RLlib checkpoint directory, TorchScript .pt or .onnx")
    p.add_argument("--env", required=True, help="the Gymnasium id the teacher plays, e.g. CartPole-v1 or ALE/Pong-v5")
    p.add_argument("--out", required=True, help="directory for the imported teacher")
    p.add_argument("--from", dest="fmt", choices=FORMATS, default=None, help="the source format (default: detected)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow loading pickles (RLlib checkpoints, SB3 vecnormalize.pkl): only for files you trust")
    p.add_argument("--vecnormalize", default=None, help="SB3: the VecNormalize statistics (vecnormalize.pkl; needs --trust-pickle)")
    p.add_argument("--output-kind", choices=("q", "logits"), default=None, help="TorchScript/ONNX: what the network outputs")
    p.add_argument("--obs-layout", choices=LAYOUTS, default="chw",
                   help="TorchScript/ONNX Atari teachers: frame stacks channels first (chw) or last (hwc)")
    p.add_argument("--obs-scale", type=float, default=1.0,
                   help="TorchScript/ONNX: the network takes observations times this (1/255 = 0.00392156862745098 for [0, 1] pixels)")
    p.add_argument("--trained-env", default=None, help="the env id the teacher was trained on, if not --env (e.g. PongNoFrameskip-v4)")
    p.add_argument("--episodes", type=int, default=20, help="episodes for the card's return (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace a teacher already in --out")
    p.add_argument("--training", metavar="JSON", default=None,
                   help="how the source was trained, for the model card: a JSON object with trainer, env_steps and "
                        "wall_s (and optionally hardware, parts, settings, evaluations, evaluation_protocol, command)")
    p.set_defaults(func=_cli_import)


def _cli_import(args: argparse.Namespace) -> int:
    from kd_system.teachers.imports.importer import import_teacher
    from kd_system.teachers.imports.training_record import card_fields, load_training_record
    from kd_system.teachers.imports.writing import check_out, write_imported

    if args.episodes < 0:
        raise ConfigError(f"--episodes {args.episodes} must be 0 (skip) or positive")
    if not args.obs_scale > 0:
        raise ConfigError(f"--obs-scale {args.obs_scale} must be positive")
    out = Path(args.out).expanduser()
    check_out(out, args.force)
    # read before the import's minutes of parity checks and games, so a bad record fails at once
    training = card_fields(load_training_record(Path(args.training).expanduser())) if args.training else None
    options = ImportOptions(env_id=args.env, trust_pickle=args.trust_pickle, output_kind=args.output_kind,
                            obs_layout=args.obs_layout, obs_scale=args.obs_scale,
                            vecnormalize=Path(args.vecnormalize).expanduser() if args.vecnormalize else None,
                            trained_env=args.trained_env)
    command = "kd-system " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["teacher"] else None
    say(f"importing {args.source} for {args.env}")
    bundle = import_teacher(args.source, options, args.fmt, args.episodes, args.seed, command, training)
    write_imported(out, bundle, args.force)
    card = bundle.spec.model_card
    parity = card["parity_max_abs_diff"]
    parity_text = f"parity {parity:.2e}" if parity is not None else "parity not measured"
    score = (f", {'greedy' if not card.get('eval_epsilon') else 'eps-greedy'} {card['eval_return_mean']:.2f} ± "
             f"{card['eval_return_std']:.2f} over {card['eval_episodes']} episodes"
             + (f", 95% CI {card['eval_return_ci95'][0]:.2f} to {card['eval_return_ci95'][1]:.2f}"
                if card.get("eval_return_ci95") else "")
             + f" (random {card['random_return_mean']:.2f})"
             if "eval_return_mean" in card else "")
    say(f"wrote {out}: {card['library']} {card['algorithm']} → {bundle.spec.output_kind} teacher, "
        f"{bundle.spec.num_params:,} params, {parity_text}{score}")
    for line in card["protocol_differences"]:
        say(f"note: {line}")
    return 0
