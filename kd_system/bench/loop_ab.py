"""Two layouts of the actors' labelling loop, timed window by window in turn: which one labels more?

    python -m kd_system.bench.loop_ab --a envs=64 --b envs=128 --pairs 4
    python -m kd_system.bench.loop_ab --a pin=0 --b pin=1 --pairs 4

A layout is ``envs`` (per loop), ``groups`` (1 or 2, envs.vector) and ``pin`` (each loop's process
and its emulator threads on one core). ``--loops`` of them (default one per core) run at once in
spawned processes, with no Ray, Redis or chunking, so the figure is the loop's own (the system
section of ``kd-system bench`` adds those). Why alternate: on a shared VM the machine's speed moves
by a third within minutes, so a layout timed minutes after another tells nothing; a pair's ratio,
and the median of those, does. The order flips every pair (AB, BA, ...) so a steady drift cancels.
Each window also records the host's idle share: near 0 means the loops kept every core busy.
Emulator threads follow the actors' rule (envs.vector): per group, the loop's cores (its CPU share,
or the one it is pinned to) over its groups, at least one; with a loop per core both give one.
The teacher is the shipped one for the env, or a seeded random Nature CNN for Atari (bench.context).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from kd_system.bench.core_workers import CoreWorkers, Job
from kd_system.errors import KDError


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")
_EVERY_CORE: frozenset[int] | None = None  # a worker's cores before any pinning


@dataclass(frozen=True)
class Layout:
    envs: int = 64
    groups: int = 2
    pin: bool = False

    def describe(self) -> str:
        return f"{self.envs} envs, {self.groups} group(s){', pinned' if self.pin else ''}"


def parse_layout(text: str, base: Layout = Layout()) -> Layout:
    """'envs=128,groups=1,pin=1' over the defaults; ValueError names the bad part."""
    known = {f.name for f in fields(Layout)}
    changes = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in known or not value:
            raise ValueError(f"{part!r}: write KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        if key == "pin":
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"{part!r}: pin takes 1 or 0")
            changes[key] = value.lower() in _TRUE
            continue
        try:
            changes[key] = int(value)
        except ValueError:
            raise ValueError(f"{part!r}: {key} takes a whole number") from None
    layout = replace(base, **changes)
    if layout.envs < 1 or layout.groups not in (1, 2):
        raise ValueError(f"{text!r}: envs must be at least 1 and groups 1 or 2")
    return layout


def labelling_loop(env_id: str, bundle, layout: Layout, index: int, cpus: float):
    """In a worker: one loop as an actor runs it, pinned to core ``index`` (mod cores) if asked."""
    from kd_system.actors.behaviour import make_acting_policy
    from kd_system.actors.labelling import LabellingLoop
    from kd_system.policies.files import FrozenPolicy

    global _EVERY_CORE
    if _EVERY_CORE is None:  # a reused worker may have been pinned by its previous job: remember the first
        _EVERY_CORE = frozenset(os.sched_getaffinity(0))
    cores = sorted(_EVERY_CORE)
    os.sched_setaffinity(0, {cores[index % len(cores)]} if layout.pin else _EVERY_CORE)  # threads made next inherit it
    teacher = FrozenPolicy.from_bundle(bundle)
    acting = make_acting_policy("teacher", 0.0, bundle.spec.num_actions, index)
    loop = LabellingLoop(env_id, layout.envs, 1000 * index, teacher, acting, cpus=cpus, groups=layout.groups)
    return (lambda: len(loop.step()[2])), loop.close


def run(env_id: str, a: Layout, b: Layout, pairs: int, loops: int, warmup_s: float, window_s: float,
        log=print) -> dict:
    from kd_system.bench.context import choose_teacher
    from kd_system.envs.make import env_spaces

    teacher = choose_teacher(env_id, None, env_spaces(env_id))
    cores = len(os.sched_getaffinity(0))
    cpus = max(1.0, cores / loops)
    windows = []
    with CoreWorkers(loops) as workers:
        for pair in range(pairs):
            order = (("a", a), ("b", b)) if pair % 2 == 0 else (("b", b), ("a", a))
            for name, layout in order:
                jobs = [Job(labelling_loop, (env_id, teacher.bundle, layout, i, cpus)) for i in range(loops)]
                rate, idle = workers.timed_rate(jobs, warmup_s, window_s)
                windows.append({"pair": pair + 1, "layout": name, "states_per_s": rate, "host_idle": idle})
                log(f"pair {pair + 1}, {name} ({layout.describe()}): {rate:,.0f} labelled states/s")
    rate = {(w["pair"], w["layout"]): w["states_per_s"] for w in windows}
    ratios = [rate[(p, "b")] / rate[(p, "a")] for p in range(1, pairs + 1)]
    return {"env_id": env_id, "teacher": teacher.source, "loops": loops, "cores": cores,
            "a": a.describe(), "b": b.describe(), "windows": windows, "b_over_a_by_pair": ratios,
            "b_over_a_median": statistics.median(ratios), "b_wins": sum(r > 1 for r in ratios)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="ALE/Pong-v5")
    p.add_argument("--a", default="", help="layout A over the defaults (envs=64,groups=2,pin=0)")
    p.add_argument("--b", default="", help="layout B, the same way")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--loops", type=int, default=None, help="loops at once (default: one per core)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--json", default=None, help="also write the windows and ratios here")
    args = p.parse_args(argv)
    try:
        a, b = parse_layout(args.a), parse_layout(args.b)
        if args.pairs < 1 or args.seconds <= 0 or args.warmup < 0 or (args.loops is not None and args.loops < 1):
            raise ValueError("--pairs and --loops take at least 1, --seconds more than 0")
        result = run(args.env, a, b, args.pairs, args.loops or len(os.sched_getaffinity(0)), args.warmup, args.seconds)
    except (ValueError, KDError) as exc:
        print(f"loop_ab: {exc}", file=sys.stderr)
        return 2
    print(f"B ({result['b']}) / A ({result['a']}) per pair: "
          + ", ".join(f"{r:.3f}" for r in result["b_over_a_by_pair"])
          + f"; median {result['b_over_a_median']:.3f}, B ahead in {result['b_wins']} of {args.pairs}; host idle "
          + ", ".join("?" if w["host_idle"] is None else f"{w['host_idle']:.1%}" for w in result["windows"]))
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
