"""``kd-system bench --only inference``: what distillation buys at inference time. The teacher and
its student, each in four engines (torch eager as FrozenPolicy runs it, frozen TorchScript,
onnxruntime fp32 and int8), on two fixed cases whatever --env says: CartPole-v1 with its shipped
teacher and ALE/Breakout-v5 with its shipped Nature-CNN teacher and a rusu-7 (~7%) student.
Baselines come from the same run: the teacher in torch eager, and for CartPole a bare numpy
matmul chain of the student MLP (the floor: the arithmetic with no framework around it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from kd_system.bench.inference_engines import (ENGINES, MAX_CALLS, THREADS, Budget, build_engines, measure,
                                               mlp_floor, network_macs)
from kd_system.config import resolve_teacher_path
from kd_system.envs.make import env_spaces
from kd_system.errors import CheckpointError, ConfigError
from kd_system.export.records import input_dtype
from kd_system.policies.config import StudentConfig
from kd_system.policies.files import PolicyBundle, PolicySpec, load_bundle
from kd_system.policies.network_choice import network_for
from kd_system.policies.networks import build_network, count_parameters
from kd_system.teachers.imports.states import env_states

if TYPE_CHECKING:  # context.py pulls in the collector; the section needs only its options
    from kd_system.bench.context import BenchContext

# (name, env, shipped teacher, observations: batch-1 inputs, batch-64 inputs and int8 calibration)
CASES = (("cartpole", "CartPole-v1", "shipped:cartpole-v1", 512),
         ("atari", "ALE/Breakout-v5", "shipped:breakout-v5", 256))
TARGET_CASE = "atari"  # the targets are for the Atari student
STATES_SEED = 0
STUDENT_SEED = 0
WINDOWS_PER_SECONDS = 5  # --seconds is split: each engine's batch-1 budget and batch-64 window is a fifth


@dataclass(frozen=True)
class Case:
    name: str
    env_id: str
    teacher: PolicyBundle
    teacher_source: str
    student: PolicyBundle
    student_source: str
    states: np.ndarray  # real observations, in the dtype the exported files take


def random_student(teacher: PolicySpec) -> PolicyBundle:
    """The student a run would distil into (StudentConfig's defaults), seeded random weights:
    latency and throughput depend on the network, not on the weights."""
    defaults = StudentConfig()
    network = network_for(env_spaces(teacher.env_id), defaults.hidden, defaults.activation, defaults.preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(STUDENT_SEED)
        module = build_network(network, teacher.obs_shape, teacher.num_actions)
    spec = PolicySpec("student", teacher.env_id, teacher.obs_shape, teacher.obs_dtype, teacher.num_actions,
                      teacher.output_kind, network, count_parameters(module), {"note": "random init, for latency"})
    return PolicyBundle.from_module(spec, module)


def _load_student(path: str) -> PolicyBundle:
    try:
        bundle = load_bundle(Path(path).expanduser())
    except CheckpointError as exc:
        raise ConfigError(f"--student: {exc}") from None
    envs = [env_id for _, env_id, _, _ in CASES]
    if bundle.spec.env_id not in envs:
        raise ConfigError(f"--student {path} plays {bundle.spec.env_id}; the inference section measures "
                          f"{' and '.join(envs)}: pass a student of one of them")
    return bundle


def load_cases(student_path: str | None, log: Callable[[str], None]) -> list[Case]:
    given = _load_student(student_path) if student_path else None  # refused before any slow work
    cases = []
    for name, env_id, shipped, count in CASES:
        teacher = load_bundle(resolve_teacher_path(shipped))
        if given is not None and given.spec.env_id == env_id:
            if (given.spec.obs_shape, given.spec.num_actions) != (teacher.spec.obs_shape, teacher.spec.num_actions):
                raise ConfigError(f"--student {student_path} does not take {env_id}'s observations and actions")
            student, student_source = given, f"checkpoint {student_path}"
        else:
            student, student_source = random_student(teacher.spec), f"random init (seed {STUDENT_SEED})"
        log(f"bench: inference: {count} {env_id} observations (random actions, seed {STATES_SEED}) ...")
        states = np.ascontiguousarray(env_states(env_id, count, STATES_SEED), dtype=input_dtype(teacher.spec))
        cases.append(Case(name, env_id, teacher, shipped, student, student_source, states))
    return cases


def _network(bundle: PolicyBundle, source: str, case: Case, budget: Budget,
             log: Callable[[str], None]) -> dict[str, Any]:
    spec = bundle.spec
    log(f"bench: inference: {case.env_id} {spec.role}: exporting and timing {', '.join(ENGINES)} ...")
    engines = {}
    for engine in build_engines(bundle, f"{spec.role} of {case.env_id}", case.states):
        engines[engine.name] = measure(engine.forward, case.states, budget, spec.network.get("kind", "cnn"))
        engines[engine.name]["bytes"] = engine.nbytes
    return {"source": source, "network": spec.network, "params": spec.num_params,
            "macs": network_macs(spec.network, spec.obs_shape, spec.num_actions), "engines": engines}


def _floor(student: PolicyBundle, states: np.ndarray, budget: Budget) -> dict[str, Any] | None:
    forward = mlp_floor(student.module())
    if forward is None:
        return None
    figures = measure(forward, states.astype(np.float32), budget, "mlp")
    return {"what": "numpy matmul chain of the student MLP, no framework (the hardware's own floor)", **figures}


def _ratios(result: dict[str, Any]) -> None:
    """Each student engine against the teacher in torch eager, measured in the same run."""
    base = result["teacher"]["engines"]["torch_eager"]
    for figures in result["student"]["engines"].values():
        figures["states_per_s_vs_teacher_eager"] = figures["states_per_s"] / base["states_per_s"]
        figures["p50_gain_vs_teacher_eager"] = base["p50_us"] / figures["p50_us"]
    student = result["student"]["engines"]
    fastest = max(student, key=lambda name: student[name]["states_per_s"])
    quickest = min(student, key=lambda name: student[name]["p50_us"])
    macs = (result["teacher"]["macs"], result["student"]["macs"])
    result.update({"macs_ratio": macs[0] / macs[1] if None not in macs else None,
                   "fastest_engine": fastest,
                   "throughput_vs_teacher_eager": student[fastest]["states_per_s_vs_teacher_eager"],
                   "p50_engine": quickest, "p50_gain_vs_teacher_eager": student[quickest]["p50_gain_vs_teacher_eager"]})


def measure_case(case: Case, budget: Budget, log: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"env_id": case.env_id, "states": int(len(case.states)),
                              "random_student": case.student_source.startswith("random"),
                              "teacher": _network(case.teacher, case.teacher_source, case, budget, log),
                              "student": _network(case.student, case.student_source, case, budget, log)}
    _ratios(result)
    floor = _floor(case.student, case.states, budget)
    if floor is not None:
        result["floor"] = floor
    return result


def measure_cases(cases: list[Case], budget: Budget, log: Callable[[str], None]) -> dict[str, Any]:
    """The section's JSON: per case, per network, per engine; the targets' two figures on top."""
    section: dict[str, Any] = {
        "threads": {"torch": THREADS, "onnxruntime_intra_op": THREADS},
        "note": "every engine on one thread, batch 64 included: per-core figures; inputs are real env "
                "observations through FrozenPolicy.outputs (numpy in, numpy out) for every engine",
        "window_s": budget.window_s, "warmup_s": budget.warmup_s, "max_calls": MAX_CALLS,
        "cases": {case.name: measure_case(case, budget, log) for case in cases}}
    target = section["cases"].get(TARGET_CASE)
    if target is not None:
        section["atari_throughput_vs_teacher_eager"] = target["throughput_vs_teacher_eager"]
        section["atari_p50_gain_vs_teacher_eager"] = target["p50_gain_vs_teacher_eager"]
    return section


def budget_for(seconds: float) -> Budget:
    window = seconds / WINDOWS_PER_SECONDS
    return Budget(window, window / 2)


def run_inference(ctx: BenchContext, log: Callable[[str], None]) -> dict[str, Any]:
    """The section runner (bench/command.py): needs neither Redis nor Ray, only ctx's options."""
    return measure_cases(load_cases(ctx.options.student, log), budget_for(ctx.options.seconds), log)
