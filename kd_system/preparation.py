"""Everything checked before Ray or Redis start: env, teacher, student. Errors name the field."""
from __future__ import annotations

from dataclasses import dataclass

from .config import RunConfig, resolve_teacher_path
from .envs import env_spaces, check_env_id
from .errors import CheckpointError, ConfigError
from .loss_spec import student_output_kind
from .metrics import say
from .networks import build_network, count_parameters
from .policy_files import PolicyBundle, PolicySpec, load_bundle


@dataclass(frozen=True)
class Prepared:
    teacher: PolicyBundle
    teacher_path: str
    student_spec: PolicySpec
    teacher_params: int
    student_params: int


def prepare(config: RunConfig) -> Prepared:
    check_env_id(config.env.id)
    teacher_path = resolve_teacher_path(config.teacher.checkpoint)
    try:
        teacher = load_bundle(teacher_path)
    except CheckpointError as exc:
        raise CheckpointError(f"teacher.checkpoint: {exc}") from None
    spaces = env_spaces(config.env.id)
    t = teacher.spec
    if tuple(t.obs_shape) != spaces.obs_shape or t.num_actions != spaces.num_actions:
        raise ConfigError(
            f"teacher.checkpoint {teacher_path} expects observations {tuple(t.obs_shape)} and {t.num_actions} actions "
            f"but env.id {config.env.id} has {spaces.obs_shape} and {spaces.num_actions}; use a teacher trained on {config.env.id}")
    if t.env_id != config.env.id:
        say(f"note: teacher was trained on {t.env_id} but env.id is {config.env.id} (spaces match, continuing)")
    teacher_params = count_parameters(teacher.module())
    network = {"kind": "mlp", "hidden": list(config.student.hidden), "activation": config.student.activation}
    student_params = count_parameters(build_network(network, spaces.obs_shape, spaces.num_actions))
    fraction = student_params / teacher_params
    if fraction > config.student.max_param_fraction:
        raise ConfigError(
            f"student.hidden {list(config.student.hidden)} gives {student_params} parameters, {fraction:.1%} of the "
            f"teacher's {teacher_params}, above student.max_param_fraction {config.student.max_param_fraction}; "
            "use smaller layers or raise the fraction")
    output_kind = student_output_kind(config.learner.loss, t.output_kind)
    student_spec = PolicySpec(
        role="student", env_id=config.env.id, obs_shape=spaces.obs_shape, obs_dtype=spaces.obs_dtype,
        num_actions=spaces.num_actions, output_kind=output_kind, network=network, num_params=student_params,
        model_card={"distilled_from": str(teacher_path), "teacher_params": teacher_params,
                    "param_fraction_of_teacher": fraction, "loss": config.learner.loss})
    return Prepared(teacher, str(teacher_path), student_spec, teacher_params, student_params)
