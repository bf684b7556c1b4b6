"""Everything checked before Ray or Redis start: envs, teachers, student. Errors name the field."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kd_system.config import RunConfig, TaskConfig, resolve_teacher_path
from kd_system.envs.copying import check_copyable, has_time_limit
from kd_system.envs.make import EnvSpaces, env_spaces, check_env_id
from kd_system.errors import CheckpointError, ConfigError
from kd_system.actors.lookahead import LookaheadSettings
from kd_system.learner.loss_spec import student_output_kind
from kd_system.learner.losses import resolve_temperature
from kd_system.metrics import say
from kd_system.policies.network_choice import network_for
from kd_system.policies.networks import SharedTrunkMLPs, build_network, count_parameters
from kd_system.policies.files import PolicyBundle, PolicySpec, load_bundle
from kd_system.teachers.imports.importer import import_on_the_fly, is_project_checkpoint
from kd_system.teachers.imports.records import ImportOptions
from kd_system.teachers.ensemble import Member, ensemble_bundle, is_ensemble, member_sources, size_reference

if TYPE_CHECKING:  # built after prepare (launch/teacher_engine.py); the CLI's early check needs no exporter
    from kd_system.teachers.engines import TeacherEngine


def label_kind(teacher_kind: str, lookahead: LookaheadSettings | None) -> str:
    """What a task's stored labels are: the teacher's own outputs, or logits of the improved policy."""
    return "logits" if lookahead is not None else teacher_kind


@dataclass(frozen=True)
class PreparedTask:
    name: str
    env_id: str
    teacher: PolicyBundle
    teacher_path: str
    teacher_params: int  # what the student's share is measured against: an ensemble's largest member
    student_spec: PolicySpec  # this task's view of the student: a plain MLP checkpoint
    lookahead: LookaheadSettings | None = None  # set: states are labelled by the rollout-improved teacher
    imported: bool = False  # an imported file or an ensemble: run.py keeps the teacher's copy in the run
    engine: TeacherEngine | None = None  # teacher.engine, once built and checked; None: label with the teacher

    @property
    def labelling_teacher(self) -> PolicyBundle:
        """What the collectors label with; the evaluator and the run directory keep the fp32 teacher."""
        return self.engine.bundle if self.engine is not None else self.teacher

    @property
    def label_kind(self) -> str:
        return label_kind(self.teacher.spec.output_kind, self.lookahead)

    @property
    def label_temperature(self) -> float | None:
        """The learner's temperature for this task's labels (None: its configured one). Improved
        logits already carry the teacher's temperature, so the learner reads them at 1."""
        return 1.0 if self.lookahead is not None else None


@dataclass(frozen=True)
class Prepared:
    tasks: tuple[PreparedTask, ...]
    teacher_params: int  # all tasks' teachers together (an ensemble counts its largest member)
    student_params: int  # the student's distinct parameters (a shared trunk counts once)

    @property
    def multi_task(self) -> bool:
        return len(self.tasks) > 1

    @property
    def env_label(self) -> str:
        return "+".join(task.env_id for task in self.tasks)


def _field(config: RunConfig, index: int, key: str) -> str:
    """The config field a task came from, for error messages."""
    if config.tasks:
        return f"tasks[{index}].{key}"
    return {"env": "env.id", "teacher": "teacher.checkpoint", "lookahead": "lookahead.enabled"}[key]


def _import_options(config: RunConfig, env_id: str) -> ImportOptions:
    t = config.teacher
    return ImportOptions(env_id=env_id, trust_pickle=t.trust_pickle, output_kind=t.output_kind, obs_layout=t.obs_layout,
                         obs_scale=t.obs_scale, vecnormalize=Path(t.vecnormalize).expanduser() if t.vecnormalize else None,
                         trained_env=t.trained_env)


def _load_one(config: RunConfig, where: str, env_id: str, checkpoint: str) -> tuple[PolicyBundle, str, bool]:
    """One checkpoint's bundle, where it came from, and whether it was imported from another library."""
    try:
        teacher_path = resolve_teacher_path(checkpoint)
        if is_project_checkpoint(teacher_path) or not teacher_path.exists():
            return load_bundle(teacher_path), str(teacher_path), False
        say(f"importing {teacher_path} as the teacher of {env_id}")
        bundle = import_on_the_fly(teacher_path, _import_options(config, env_id), config.teacher.format)
        return bundle, str(teacher_path), True
    except (CheckpointError, ConfigError) as exc:
        message = str(exc).removeprefix("teacher.checkpoint: ").removeprefix("--env ")
        raise type(exc)(f"{where}: {message}") from None


def _load_teacher(config: RunConfig, index: int, task: TaskConfig) -> tuple[PolicyBundle, str, bool]:
    """The teacher's bundle, where it came from, and whether the run must keep a copy of it (an
    import, or an ensemble of a list of checkpoints: both exist only in this run until written)."""
    where = _field(config, index, "teacher")
    checkpoints = [task.teacher] if isinstance(task.teacher, str) else list(task.teacher)
    if len(checkpoints) == 1:
        return _load_one(config, where, task.env, checkpoints[0])
    members = [Member(path, bundle) for bundle, path, _ in
               (_load_one(config, f"{where}[{i}]", task.env, checkpoint) for i, checkpoint in enumerate(checkpoints))]
    weights = None if config.tasks else config.teacher.weights  # tasks' lists are weighted equally
    bundle = ensemble_bundle(members, weights, config.learner.temperature, where)
    return bundle, f"ensemble of {', '.join(member.source for member in members)}", True


def _prepare_task(config: RunConfig, index: int, task: TaskConfig, spaces: EnvSpaces, network: dict) -> PreparedTask:
    teacher, teacher_path, imported = _load_teacher(config, index, task)
    t = teacher.spec
    if tuple(t.obs_shape) != spaces.obs_shape or t.num_actions != spaces.num_actions:
        raise ConfigError(
            f"{_field(config, index, 'teacher')} {teacher_path} expects observations {tuple(t.obs_shape)} and "
            f"{t.num_actions} actions but {_field(config, index, 'env')} {task.env} has {spaces.obs_shape} and "
            f"{spaces.num_actions}; use a teacher trained on {task.env}")
    if t.env_id != task.env:
        say(f"note: teacher was trained on {t.env_id} but the env is {task.env} (spaces match, continuing)")
    lookahead = _lookahead_settings(config, index, task, t.output_kind)
    # an ensemble's students are sized against its largest member (teachers/ensemble.py says why)
    teacher_params = size_reference(t, count_parameters(teacher.module()))
    view_params = count_parameters(build_network(network, spaces.obs_shape, spaces.num_actions))
    card = {"distilled_from": teacher_path, "teacher_params": teacher_params,
            "param_fraction_of_teacher": view_params / teacher_params, "loss": config.learner.loss,
            "labels": "teacher" if lookahead is None else
            f"lookahead (rollout-improved teacher, eta={lookahead.eta:g}, horizon={lookahead.horizon_steps or 'episode'})"}
    if is_ensemble(t):  # distilled_from becomes the ensemble's copy in the run directory (launch/run.py)
        card |= {"teacher_members": member_sources(t), "teacher_weights": t.network["weights"],
                 "ensemble_params": t.num_params}
    output_kind = student_output_kind(config.learner.loss, label_kind(t.output_kind, lookahead))
    student_spec = PolicySpec(
        role="student", env_id=task.env, obs_shape=spaces.obs_shape, obs_dtype=spaces.obs_dtype,
        num_actions=spaces.num_actions, output_kind=output_kind, network=network, num_params=view_params,
        model_card=card)
    return PreparedTask(task.name, task.env, teacher, teacher_path, teacher_params, student_spec, lookahead, imported)


def _lookahead_settings(config: RunConfig, index: int, task: TaskConfig, teacher_kind: str) -> LookaheadSettings | None:
    if not task.lookahead:
        return None
    where = _field(config, index, "lookahead")
    check_copyable(task.env, where)
    horizon = config.lookahead.horizon_steps
    if horizon is None and not has_time_limit(task.env):
        raise ConfigError(f"{where}: {task.env} has no time limit, so rollouts to the episode's end may never stop; "
                          "set lookahead.horizon_steps")
    return LookaheadSettings(config.lookahead.eta, resolve_temperature(config.learner.temperature, teacher_kind), horizon)


def _task_spaces(config: RunConfig) -> list[EnvSpaces]:
    spaces = []
    for index, task in enumerate(config.task_list()):
        check_env_id(task.env, _field(config, index, "env"))
        spaces.append(env_spaces(task.env))
    return spaces


def prepare(config: RunConfig) -> Prepared:
    spaces = _task_spaces(config)  # every env is checked before any teacher is loaded
    s = config.student
    networks = [network_for(task_spaces, s.hidden, s.activation, s.preset) for task_spaces in spaces]
    if len(networks) > 1 and any(network["kind"] != "mlp" for network in networks):
        raise ConfigError("tasks: multi-task students are MLP-only so far; give one Atari task per run")
    network = networks[0]  # one student: a multi-task one is one MLP trunk with a head per task
    tasks = tuple(_prepare_task(config, i, task, spaces[i], network) for i, task in enumerate(config.task_list()))
    teacher_params = sum(task.teacher_params for task in tasks)
    if len(tasks) == 1:
        student_params = tasks[0].student_spec.num_params
    else:
        shapes = [(math.prod(task.student_spec.obs_shape), task.student_spec.num_actions) for task in tasks]
        student_params = count_parameters(SharedTrunkMLPs(shapes, list(config.student.hidden), config.student.activation))
    fraction = student_params / teacher_params
    if fraction > config.student.max_param_fraction:
        whose = ("the teachers' combined" if len(tasks) > 1 else
                 "the ensemble's largest member's" if is_ensemble(tasks[0].teacher.spec) else "the teacher's")
        raise ConfigError(
            f"{'student.preset ' + config.student.preset if network['kind'] == 'cnn' else 'student.hidden ' + str(list(config.student.hidden))} gives {student_params} parameters, {fraction:.1%} of "
            f"{whose} {teacher_params}, above student.max_param_fraction {config.student.max_param_fraction}; "
            "use smaller layers or raise the fraction")
    return Prepared(tasks, teacher_params, student_params)
