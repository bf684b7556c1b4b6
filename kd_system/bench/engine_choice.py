"""The teacher engines the ceiling and system sections measure (``--engines``), each built and
checked against fp32 torch as a run's start checks teacher.engine (teachers/engines.py), and which
one the headline figures name: the fastest whose greedy agreement meets the floor.

The check composes engines.py's own parts (build_engines, rollout_states, fidelity) with the same
seeds and state counts as ``check_engine``, but shares one ONNX export, one calibration rollout and
one held-out rollout among the engines: three ``check_engine`` calls would roll the teacher out
three times for the same states.
"""
from __future__ import annotations

import time
from typing import Any

from kd_system.errors import ConfigError
from kd_system.export.calibration import rollout_states
from kd_system.export.records import CALIBRATION_EPSILON, CALIBRATION_SEED, DEFAULT_CALIBRATION_STATES
from kd_system.policies.files import FrozenPolicy, PolicyBundle
from kd_system.teachers.config import ENGINES
from kd_system.teachers.engines import (HELDOUT_SEED, HELDOUT_STATES, Fidelity, TeacherEngine, build_engines, fidelity,
                                        needs_calibration)

REFERENCE = "torch"  # fp32 torch: what every engine's speed and agreement are measured against
# torch only by default: each engine adds a ceiling sweep, collectors and, for int8, a calibration
# rollout (minutes at the default --seconds); the acceptance run asks for --engines all.
DEFAULT_ENGINES = (REFERENCE,)


def parse_engines(text: str | None) -> tuple[str, ...]:
    """``--engines``: a comma list of teacher.engine values, or ``all``; fp32 torch is always measured
    (every engine's figures are ratios to it), and first."""
    if not text:
        return DEFAULT_ENGINES
    names = list(ENGINES) if text.strip() == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENGINES]
    if unknown or not names:
        raise ConfigError(f"--engines: unknown engine {unknown[0] if unknown else text!r}; give a comma-separated "
                          f"subset of {','.join(ENGINES)}, or all")
    return tuple(name for name in ENGINES if name == REFERENCE or name in names)


def check_engines(teacher: PolicyBundle, names: tuple[str, ...], env_id: str, temperature: float,
                  source: str) -> dict[str, TeacherEngine]:
    """Each named engine with its greedy agreement and KL(tau) against fp32 torch on held-out states."""
    engines = {REFERENCE: TeacherEngine(REFERENCE, teacher, Fidelity(0, 1.0, 0.0, temperature), 0.0)}
    others = [name for name in names if name != REFERENCE]
    if not others:
        return engines
    start = time.perf_counter()
    reference = FrozenPolicy.from_bundle(teacher)
    calibration = (rollout_states(reference, env_id, DEFAULT_CALIBRATION_STATES, CALIBRATION_SEED, CALIBRATION_EPSILON)
                   if any(needs_calibration(teacher.spec, name) for name in others) else None)
    built = build_engines(teacher, others, source, calibration)
    build_s = time.perf_counter() - start  # shared by the engines built together
    heldout = rollout_states(reference, env_id, HELDOUT_STATES, HELDOUT_SEED, CALIBRATION_EPSILON)
    expected = reference.outputs(heldout)
    for name in others:
        measured = fidelity(expected, FrozenPolicy.from_bundle(built[name]).outputs(heldout), temperature)
        used = len(calibration) if calibration is not None and needs_calibration(teacher.spec, name) else 0
        engines[name] = TeacherEngine(name, built[name], measured, build_s, used)
    return engines


def fidelity_record(engine: TeacherEngine, floor: float) -> dict[str, Any]:
    f = engine.fidelity
    return {"agreement": f.greedy_agreement, "kl": f.kl, "kl_temperature": f.kl_temperature,
            "heldout_states": f.states, "meets_floor": f.greedy_agreement >= floor}


def choose_engine(figures: dict[str, dict[str, float]], floor: float, rate: str) -> str | None:
    """The engine with the highest ``rate`` among those whose ``agreement`` meets ``floor``; one
    below the floor is never chosen, however fast (None if none meets it)."""
    eligible = [name for name, f in figures.items() if f["agreement"] >= floor and f.get(rate) is not None]
    return max(eligible, key=lambda name: figures[name][rate], default=None)


def headline(ceiling: dict | None, system: dict | None, floor: float, paired: dict | None = None) -> dict[str, Any]:
    """The top-level JSON figures: fp32 torch's ceiling and system rates and their ratio, and for the
    fastest engine meeting the floor (by forwards/s when the ceiling ran, else by system rate) its
    speed-up over torch, agreement and its own system-vs-ceiling ratio.

    With paired rounds (bench/paired.py) the four ratios are theirs, medians of per-round ratios of
    windows timed back to back, and the two rates are those of torch's median round, so that the top
    level's system / ceiling is its ratio; ``vs_ceiling_from`` says which figures it shows (the
    sweeps' best rates stay in their sections)."""
    out: dict[str, Any] = {}
    engines: dict[str, dict[str, Any]] = {}
    for section, key in ((ceiling, "forward_states_per_s"), (ceiling, "ceiling_states_per_s"),
                         (system, "states_per_s")):
        for name, f in (section or {}).get("engines", {}).items():
            engines.setdefault(name, {"agreement": f["agreement"]})[key] = f[key]
    if ceiling is not None:
        out["ceiling_states_per_s"] = engines[REFERENCE]["ceiling_states_per_s"]
    if system is not None:
        out["system_states_per_s"] = engines[REFERENCE]["states_per_s"]
    if ceiling is not None and system is not None:
        out["system_vs_ceiling"] = out["system_states_per_s"] / out["ceiling_states_per_s"]
        out["vs_ceiling_from"] = "sweeps"
    if paired is not None:
        mid = paired["engines"][REFERENCE]
        out |= {key: mid[key] for key in ("ceiling_states_per_s", "system_states_per_s", "system_vs_ceiling")}
        out["vs_ceiling_from"] = f"median of {paired['rounds']} paired rounds"
    chosen = choose_engine(engines, floor, "forward_states_per_s" if ceiling is not None else "states_per_s")
    if chosen is None:
        return out
    mine, torch = engines[chosen], engines[REFERENCE]
    out |= {"engine": chosen, "engine_agreement": mine["agreement"], "engine_agreement_floor": floor}
    if paired is not None:
        rounds = paired["engines"][chosen]
        return out | {"engine_forward_speedup": rounds["forward_speedup"], "engine_speedup": rounds["system_speedup"],
                      "engine_system_vs_ceiling": rounds["system_vs_ceiling"]}
    if ceiling is not None:
        out["engine_forward_speedup"] = mine["forward_states_per_s"] / torch["forward_states_per_s"]
    if system is not None:
        out["engine_speedup"] = mine["states_per_s"] / torch["states_per_s"]
    if ceiling is not None and system is not None:
        out["engine_system_vs_ceiling"] = mine["states_per_s"] / mine["ceiling_states_per_s"]
    return out
