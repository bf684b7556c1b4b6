"""What the SB3 teacher training keeps about itself beside its weights: the settings text (with the
final epsilon, Adam's learning rate and the bootstrap target of each stretch, since
``--final-epsilon``, ``--learning-rate`` and ``--bootstrap-epsilon`` may change between parts) and
``best.training.json``, how the best evaluation's weights were trained, for ``kd-system teacher
import --training`` to put on the model card."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

RECORD_FILE = "best.training.json"
SETTINGS = ("RL Zoo Atari DQN settings (replay 100k, Adam {rates}, batch 32, train every 4 steps, target sync every "
            "1,000) with epsilon to {epsilons}, learning from {starts:,} steps, 3-step returns bootstrapping on {targets}; "
            "kd_system/experiments/sb3_teacher.py")
ZOO_FINAL_EPSILON = 0.01  # what a state.json from before --final-epsilon trained with
ZOO_LEARNING_RATE = 1e-4  # and one from before --learning-rate


def final_epsilons(state: dict) -> list[list]:
    """[[from env step, final epsilon], ...] of a training so far."""
    return state.get("final_epsilons") or [[0, ZOO_FINAL_EPSILON]]


def learning_rates(state: dict) -> list[list]:
    """[[from env step, Adam's learning rate], ...] of a training so far."""
    return state.get("learning_rates") or [[0, ZOO_LEARNING_RATE]]


def bootstrap_epsilons(state: dict) -> list[list]:
    """[[from env step, bootstrap epsilon], ...]; 0 is SB3's max target, what one from before
    --bootstrap-epsilon trained with."""
    return state.get("bootstrap_epsilons") or [[0, 0.0]]


def with_change(stretches: list[list], step: int, asked: float | None) -> list[list]:
    """The stretches once a part starting at ``step`` trains at ``asked`` (None: the last part's).
    A part that changed it at this same step (stopped before it trained) is replaced, not stacked."""
    if asked is None or asked == stretches[-1][1]:
        return stretches
    kept = [e for e in stretches if e[0] < step]
    return kept if kept and kept[-1][1] == asked else kept + [[step, asked]]


def _changes(stretches: list[list], upto: int, fmt=lambda value: f"{value:g}") -> str:
    """'; 0.05 from 2,192,370 steps' for each part up to env step ``upto`` that changed the value
    (a change at ``upto`` itself, the best evaluation's step, trained none of its weights)."""
    return "".join(f"; {fmt(value)} from {int(at):,} steps" for at, value in stretches[1:] if at < upto)


def _rate(value: float) -> str:
    """1e-4, 5e-5, 2.5e-5: as papers write step sizes (``:g`` would give 0.0001 and 5e-05)."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def epsilon_text(state: dict, explore: int, upto: int) -> str:
    """'0.01 over 250,000 steps', and '; 0.05 from 2,192,370 steps' for each later change."""
    epsilons = final_epsilons(state)
    return f"{epsilons[0][1]:g} over {explore:,} steps" + _changes(epsilons, upto)


def rate_text(state: dict, upto: int) -> str:
    """'1e-4', and '; 5e-5 from 3,100,000 steps' for each later change."""
    rates = learning_rates(state)
    return _rate(rates[0][1]) + _changes(rates, upto, _rate)


def _target(epsilon: float) -> str:
    return "max Q" if epsilon == 0 else f"the value of epsilon-greedy play at {epsilon:g}"


def target_text(state: dict, upto: int) -> str:
    """'max Q', and '; the value of epsilon-greedy play at 0.05 from 3,400,000 steps' for each change."""
    targets = bootstrap_epsilons(state)
    return _target(targets[0][1]) + _changes(targets, upto, _target)


def _hardware() -> str:
    # the core count only: a training resumed across sessions may run its parts on different CPU models
    return f"{len(os.sched_getaffinity(0))} CPU cores, no GPU"


def training_record(state: dict, args: argparse.Namespace) -> dict:
    """How the weights of the best evaluation so far were trained (best.zip is saved at an evaluation
    that ties or beats every earlier one, so it is the last one reaching the best mean)."""
    import stable_baselines3

    from kd_system.envs.protocol import eval_epsilon

    best = [e for e in state["evals"] if e["mean"] == state["best_eval"]][-1]
    return {"trainer": f"Stable-Baselines3 {stable_baselines3.__version__} DQN (CnnPolicy)",
            "env_steps": int(best["env_steps"]), "wall_s": float(best["wall_s"]), "hardware": _hardware(),
            "parts": 1 + sum(1 for r in state["resumes"] if r < best["env_steps"]),
            "settings": SETTINGS.format(epsilons=epsilon_text(state, args.explore_steps, int(best["env_steps"])),
                                        rates=rate_text(state, int(best["env_steps"])),
                                        targets=target_text(state, int(best["env_steps"])),
                                        starts=args.learning_starts),
            "evaluations": [{"env_steps": int(e["env_steps"]), "mean": float(e["mean"])}
                            for e in state["evals"] if e["env_steps"] <= best["env_steps"]],
            "evaluation_protocol": f"{args.eval_episodes} games each, epsilon {eval_epsilon(args.env):g}, sticky actions",
            "command": f"python -m kd_system.experiments.sb3_teacher --env {args.env} --out OUT [--resume]"}


def write_record(out: Path, state: dict, args: argparse.Namespace) -> None:
    tmp = out / f"{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(training_record(state, args), indent=1) + "\n")
    os.replace(tmp, out / RECORD_FILE)
