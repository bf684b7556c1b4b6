"""Train an Atari DQN teacher with Stable-Baselines3, resumably, on the project's own training env.

Issue 18's route when RLlib's DQN is too slow on these CPUs: SB3's ``DQN`` with the RL Zoo Atari
settings (rl-baselines3-zoo ``hyperparams/dqn.yml``, ``atari``: CnnPolicy, replay 100k, Adam 1e-4,
batch 32, train every 4 steps, target sync every 1,000 steps, final epsilon 0.01), except that
epsilon anneals over ``--explore-steps`` (250k) instead of 10% of 10M steps and learning starts at
``--learning-starts`` (20k) instead of 100k: a budget of a few CPU hours, not 10M steps. The
env is ours (``envs.make_training_env``: the actors' exact frames, life loss ends the episode,
rewards clipped), so the result imports with ``kd-system teacher import`` at parity and is
evaluated under our protocol there.

``--final-epsilon`` (the Zoo's 0.01 for a new training; a resume keeps the last part's) and
``--learning-rate`` (the Zoo's 1e-4, likewise) may change between parts; ``state.json`` and the
training record keep from which step each value held. The evaluation protocol plays at 0.05, and a
network trained at 0.01 scored 5-7 points a game less at 0.05 than at 0.01 (2026-12-07).
``--bootstrap-epsilon`` (0, SB3's own max target, for a new training) bootstraps each target on
the value of epsilon-greedy play instead (``sb3_dqn``), likewise recorded from the step it held.

It uses 3-step returns (``n_steps=3``, as our RLlib defaults do; Hessel et al. 2018 found them
among Rainbow's most useful parts), also not in the Zoo's file.

Resumable in parts (``--resume``): every ``--save-every`` steps, and on SIGTERM/SIGINT, it
writes the Q-network's weights (safetensors) and ``state.json`` (steps, wall time, evaluations)
into ``OUT/checkpoint`` by rename, so a killed job loses at most one interval. The replay buffer
(5.6 GB) and Adam's moments are not kept: a resume refills ``--refill-steps`` (the whole replay)
by playing the restored network, epsilon where the schedule left it, then learns on with a fresh
Adam. That keeps a resume point small enough to carry between machines, and nothing in it is a
pickle. (Until 2026-12-07 the refill was SB3's warm-up, 20k steps of uniformly random play: the
training episodes right after each resume fell from about +1 to -15, and the evaluations took
100-150k steps to recover.)

    python -m kd_system.experiments.sb3_teacher --env ALE/Pong-v5 --out runs/pong-sb3 --resume

Beside ``best.zip`` it keeps ``best.training.json``: how those weights were trained (trainer, env
steps, wall time, parts, its evaluations), for ``kd-system teacher import --training`` to put on the
model card. ``--record`` writes it again from ``checkpoint/state.json`` without training.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kd_system.envs.make import make_training_env
from kd_system.evaluation.episodes import run_episodes
from kd_system.experiments.sb3_dqn import dqn_classes
from kd_system.experiments.sb3_logger import without_sb3_logger
from kd_system.experiments.sb3_record import (RECORD_FILE, bootstrap_epsilons, final_epsilons, learning_rates,
                                              with_change, write_record)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="ALE/Pong-v5")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if it exists")
    p.add_argument("--total-steps", type=int, default=None,
                   help="the step budget and the schedule's horizon: 3M for a new training, the last part's on "
                        "--resume (raise it to train on past it)")
    p.add_argument("--explore-steps", type=int, default=250_000)
    p.add_argument("--final-epsilon", type=float, default=None,
                   help="epsilon once annealed: the Zoo's 0.01 for a new training, the last part's on --resume; "
                        "a resumed part may change it, and state.json and the training record say from which step")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="Adam's step size: the Zoo's 1e-4 for a new training, the last part's on --resume; "
                        "a resumed part may change it, recorded as --final-epsilon is")
    p.add_argument("--bootstrap-epsilon", type=float, default=None,
                   help="bootstrap each target on the value of epsilon-greedy play at this epsilon instead of the "
                        "max (0, SB3's own update, for a new training; the last part's on --resume); recorded as "
                        "--final-epsilon is. 0.05 is the evaluation protocol's")
    p.add_argument("--learning-starts", type=int, default=20_000)
    p.add_argument("--refill-steps", type=int, default=REPLAY_SIZE,
                   help="on --resume, steps the restored network plays into the empty replay before learning again")
    p.add_argument("--save-every", type=int, default=50_000)
    p.add_argument("--eval-every", type=int, default=50_000)
    p.add_argument("--eval-episodes", type=int, default=8)
    p.add_argument("--target", type=float, default=19.5, help="stop once the periodic evaluation reaches this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--record", action="store_true",
                   help=f"only write OUT/{RECORD_FILE} (how best.zip was trained, for `teacher import --training`) "
                        "from OUT/checkpoint/state.json, and exit")
    return p.parse_args(argv)


REPLAY_SIZE = 100_000
DEFAULT_TOTAL_STEPS = 3_000_000


class _Stop:
    """SIGTERM/SIGINT ask the training loop to stop at its next step; the driver then saves."""

    def __init__(self) -> None:
        self.asked = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._ask)

    def _ask(self, signum, frame) -> None:
        self.asked = True


def _q_values(model, obs: np.ndarray) -> torch.Tensor:
    with torch.no_grad():  # uint8 frames as they are: SB3's QNetwork scales image spaces itself
        return model.q_net(torch.as_tensor(obs))


def _greedy(model) -> callable:
    return lambda obs: _q_values(model, obs).argmax(dim=1).numpy()


def _channels_last(model) -> None:
    """Both Q-networks' conv weights, and the frames they see, in channels-last (NHWC) order. On this
    AVX2 CPU SB3's batch-32 update (replay sample, online forward and backward, target forward,
    Adam) took 65.5 ms so against 73.0 ms (10 of 10 alternating windows, 2 threads; the bare
    network update 55 against 67 ms). The layout is only how tensors sit in memory: Q-values, the
    saved weights (``contiguous()``) and the optimizer's Parameters are the same ones."""
    for net in (model.q_net, model.q_net_target):
        net.to(memory_format=torch.channels_last)
        net.features_extractor.cnn.register_forward_pre_hook(
            lambda _module, args: (args[0].contiguous(memory_format=torch.channels_last),))


def main(argv: list[str] | None = None) -> int:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor

    args = _args(argv)
    if args.final_epsilon is not None and not 0.0 <= args.final_epsilon <= 1.0:
        print(f"[sb3-teacher] --final-epsilon {args.final_epsilon}: an epsilon lies in [0, 1]", file=sys.stderr)
        return 2
    if args.bootstrap_epsilon is not None and not 0.0 <= args.bootstrap_epsilon <= 1.0:
        print(f"[sb3-teacher] --bootstrap-epsilon {args.bootstrap_epsilon}: an epsilon lies in [0, 1] "
              "(0.05 is the evaluation protocol's)", file=sys.stderr)
        return 2
    if args.total_steps is not None and args.total_steps <= 0:
        print(f"[sb3-teacher] --total-steps {args.total_steps}: give a budget above 0 env steps", file=sys.stderr)
        return 2
    if args.learning_rate is not None and not 0.0 < args.learning_rate < 1.0:
        print(f"[sb3-teacher] --learning-rate {args.learning_rate}: give a step size above 0 and below 1 "
              "(the Zoo's is 1e-4)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    ckpt = out / "checkpoint"
    if args.record:
        if not (ckpt / "state.json").exists() or not (out / "best.zip").exists():
            print(f"[sb3-teacher] --record: {ckpt / 'state.json'} or {out / 'best.zip'} is missing; "
                  "train first", file=sys.stderr)
            return 2
        write_record(out, json.loads((ckpt / "state.json").read_text()), args)
        print(f"[sb3-teacher] wrote {out / RECORD_FILE}", flush=True)
        return 0
    state = {"wall_s": 0.0, "env_steps": 0, "best_eval": None, "evals": [], "resumes": []}
    if ckpt.exists() and not args.resume:
        print(f"[sb3-teacher] {ckpt} exists: pass --resume to continue it, or remove it", file=sys.stderr)
        return 2
    if args.resume and (ckpt / "state.json").exists():
        state = json.loads((ckpt / "state.json").read_text())
    resumed_at = int(state["env_steps"])
    total = state["total_steps"] = args.total_steps or state.get("total_steps", DEFAULT_TOTAL_STEPS)
    if resumed_at >= total:  # nothing to train: leave the resume point as it is
        print(f"[sb3-teacher] {ckpt} is at {resumed_at} steps, its budget is {total}: pass --total-steps above "
              f"{resumed_at} to train on", file=sys.stderr)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "progress.jsonl", "a", buffering=1)
    stop = _Stop()
    env = Monitor(make_training_env(args.env))
    if resumed_at:
        state["resumes"].append(resumed_at)  # before the seed: a resumed part does not replay the first's
    state["final_epsilons"] = with_change(final_epsilons(state), resumed_at, args.final_epsilon)
    final_eps = state["final_epsilons"][-1][1]  # the refill already plays at it
    state["learning_rates"] = with_change(learning_rates(state), resumed_at, args.learning_rate)
    rate = state["learning_rates"][-1][1]  # Adam starts afresh at each part, at this step size
    state["bootstrap_epsilons"] = with_change(bootstrap_epsilons(state), resumed_at, args.bootstrap_epsilon)
    fresh, resumed = dqn_classes(state["bootstrap_epsilons"][-1][1])
    warmup = args.refill_steps if resumed_at else args.learning_starts
    dqn = resumed if resumed_at else fresh
    model = dqn("CnnPolicy", env, buffer_size=REPLAY_SIZE, learning_rate=rate, batch_size=32, n_steps=3,
                learning_starts=resumed_at + warmup, target_update_interval=1000, train_freq=4,
                gradient_steps=1, exploration_fraction=args.explore_steps / total,
                exploration_final_eps=final_eps, seed=args.seed + len(state["resumes"]), device="cpu", verbose=0)
    without_sb3_logger(model)
    _channels_last(model)
    if resumed_at:
        weights = load_file(ckpt / "q_net.safetensors")
        model.q_net.load_state_dict(weights)
        model.q_net_target.load_state_dict(weights)
        model.num_timesteps = resumed_at
        print(f"[sb3-teacher] resumed at {resumed_at} steps, {state['wall_s']:.0f} s so far; "
              f"refilling {warmup} steps of replay with its network before learning", flush=True)
    started = time.monotonic()
    wall0 = float(state["wall_s"])
    mark = {"steps": model.num_timesteps, "time": started, "episodes": 0}

    def wall() -> float:
        return wall0 + time.monotonic() - started

    def save() -> None:
        if not ckpt.exists() and (out / "checkpoint.old").exists():  # a kill between the renames: keep it
            os.rename(out / "checkpoint.old", ckpt)
        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file({k: v.detach().contiguous() for k, v in model.q_net.state_dict().items()}, tmp / "q_net.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "wall_s": wall(), "env_steps": model.num_timesteps}))
        old = out / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if ckpt.exists():
            os.rename(ckpt, old)
        os.rename(tmp, ckpt)
        shutil.rmtree(old, ignore_errors=True)

    def evaluate() -> bool:
        stats = run_episodes(args.env, _greedy(model), args.eval_episodes, 10_000_000 + model.num_timesteps)
        record = {"kind": "eval", "env_steps": model.num_timesteps, "wall_s": round(wall(), 1),
                  "mean": stats.mean, "returns": stats.returns.tolist()}
        state["evals"].append({k: record[k] for k in ("env_steps", "wall_s", "mean")})
        log.write(json.dumps(record) + "\n")
        if state["best_eval"] is None or stats.mean >= state["best_eval"]:
            state["best_eval"] = stats.mean
            model.save(out / "best.zip")  # the weights that get imported (the buffer is not needed)
            write_record(out, {**state, "wall_s": wall()}, args)
        print(f"[sb3-teacher] eval at {model.num_timesteps}: {stats.mean:+.2f} over {args.eval_episodes} games "
              f"(best {state['best_eval']:+.2f})", flush=True)
        return stats.mean >= args.target

    class Loop(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    mark["episodes"] += 1
                    log.write(json.dumps({"kind": "episode", "env_steps": self.num_timesteps,
                                          "return": info["episode"]["r"], "length": info["episode"]["l"],
                                          "epsilon": round(model.exploration_rate, 4)}) + "\n")
            steps = self.num_timesteps
            if steps % 10_000 == 0:
                now = time.monotonic()
                rate = (steps - mark["steps"]) / max(now - mark["time"], 1e-9)
                mark.update(steps=steps, time=now)
                print(f"[sb3-teacher] env_steps {steps:8d}  {rate:6.1f} steps/s  eps {model.exploration_rate:.3f}  "
                      f"wall {wall():7.0f}s", flush=True)
                log.write(json.dumps({"kind": "rate", "env_steps": steps, "steps_per_s": round(rate, 2),
                                      "wall_s": round(wall(), 1)}) + "\n")
            done = False
            if steps % args.eval_every == 0:
                done = evaluate()
                mark["time"] = time.monotonic()  # the rate counts training only
            if steps % args.save_every == 0:
                save()
                mark["time"] = time.monotonic()
            return not (done or stop.asked)

    remaining = total - model.num_timesteps
    if remaining > 0 and not stop.asked:
        # reset_num_timesteps=False: SB3 sets its horizon to num_timesteps + remaining = total_steps,
        # so the epsilon schedule continues where it stopped.
        model.learn(total_timesteps=remaining, callback=Loop(), reset_num_timesteps=False, progress_bar=False)
    save()
    print(f"[sb3-teacher] stopped at {model.num_timesteps} steps ({'signal' if stop.asked else 'done'}), "
          f"wall {wall():.0f}s, best eval {state['best_eval']}", flush=True)
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
