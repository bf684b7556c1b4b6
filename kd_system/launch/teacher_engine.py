"""The run's labelling engine (teacher.engine): built once per task before Ray and Redis start,
checked against fp32 torch on held-out states, refused below teacher.engine_agreement_floor, and
recorded in the summary. Built here, not in preparation.prepare, which the CLI also calls before
it creates the run directory: the export and the int8 calibration would otherwise run twice."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from kd_system.config import RunConfig
from kd_system.errors import CheckpointError, ConfigError
from kd_system.launch.preparation import Prepared, PreparedTask
from kd_system.learner.losses import resolve_temperature
from kd_system.metrics import say
from kd_system.policies.opaque import is_opaque
from kd_system.teachers.engines import TeacherEngine, check_engine


def _where(config: RunConfig, index: int, task: PreparedTask) -> str:
    return f"teacher.engine={config.teacher.engine}" + (f" (tasks[{index}], {task.env_id})" if config.tasks else "")


def _fix(engine: str) -> str:
    """The nearest faster engine that keeps fp32 labels, else the reference."""
    return "teacher.engine=onnxruntime (fp32) or torch" if engine == "onnxruntime-int8" else "teacher.engine=torch"


def _checked(config: RunConfig, index: int, task: PreparedTask) -> TeacherEngine:
    where, floor = _where(config, index, task), config.teacher.engine_agreement_floor
    network = task.teacher.spec.network
    if config.teacher.engine != "torch" and is_opaque(network):
        raise ConfigError(f"{where}: the teacher {task.teacher_path} is an imported {network['kind']} file, run as it "
                          "is by its own runtime, with no fp32 network to build another engine from; use teacher.engine=torch")
    temperature = resolve_temperature(config.learner.temperature, task.teacher.spec.output_kind)
    try:
        engine = check_engine(task.teacher, config.teacher.engine, task.env_id, temperature,
                              f"the teacher {task.teacher_path}")
    except (CheckpointError, ConfigError) as exc:  # an exporter's hint names `kd-system export`'s flags: drop it
        reason = str(exc).split("; try --format")[0]
        raise ConfigError(f"{where}: {reason}; use {_fix(config.teacher.engine)}") from None
    f = engine.fidelity
    if f.greedy_agreement < floor:
        raise ConfigError(
            f"{where}: greedy agreement with fp32 torch is {f.greedy_agreement:.2%} on {f.states} held-out states of "
            f"{task.env_id} (KL at tau={f.kl_temperature:g}: {f.kl:.2e}), below teacher.engine_agreement_floor "
            f"{floor:g}; use {_fix(engine.name)}, or lower teacher.engine_agreement_floor")
    if engine.name == "torch":
        say(f"teacher engine torch for {task.env_id}: the checkpoint's own fp32 network")
    else:
        calibrated = f", int8 calibrated on {engine.calibration_states} other states" if engine.calibration_states else ""
        say(f"teacher engine {engine.name} for {task.env_id}: greedy agreement {f.greedy_agreement:.2%}, KL at "
            f"tau={f.kl_temperature:g} {f.kl:.2e} with fp32 torch on {f.states} held-out states{calibrated} "
            f"(built in {engine.build_s:.1f} s)")
    return engine


def with_engines(config: RunConfig, prepared: Prepared) -> Prepared:
    """Every task with its engine; the first task below the floor refuses the run (exit 2)."""
    tasks = tuple(replace(task, engine=_checked(config, index, task)) for index, task in enumerate(prepared.tasks))
    return replace(prepared, tasks=tasks)


def engine_record(task: PreparedTask) -> dict[str, Any]:
    """The summary's teacher_engine* fields of one task ({} for a task built without the check)."""
    return task.engine.record() if task.engine is not None else {}


def run_engine_record(prepared: Prepared) -> dict[str, Any]:
    """The top level of summary.json: a single task's fields; for several tasks (one engine for all)
    its name and the worst task's figures, each task's own being in its entry of ``tasks``."""
    engines = [task.engine for task in prepared.tasks if task.engine is not None]
    if not engines:
        return {}
    if len(prepared.tasks) == 1:
        return engines[0].record()
    return {"teacher_engine": engines[0].name,
            "teacher_engine_agreement_min": min(e.fidelity.greedy_agreement for e in engines),
            "teacher_engine_kl_max": max(e.fidelity.kl for e in engines)}
