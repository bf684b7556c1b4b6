"""The experiment grid: which cells to run (env × student size × loss × who acts) and with what settings.

A grid file is YAML::

    settings: [limiter.samples_per_insert=64, ...]   # --set overrides for every cell
    env_settings: {LunarLander-v3: [head.max_updates=6000]}   # extra overrides per env
    groups:                                          # each group is a full cross product
      - {envs: [CartPole-v1], sizes: [0.07, 0.04], losses: [kl], acting: [teacher, student, mixed]}
    scratch: {sizes: [0.07], max_env_steps: 100000, max_wall_s: 600}   # the RLlib DQN baseline

A size is a share of the teacher's parameters; the student is the widest two-layer MLP of equal
widths that stays at or under it, so "7%" means the same thing on every env. Atari envs
(``ALE/<Game>-v5``) get the nearest of Rusu et al.'s CNN students (``rusu-25``, ``rusu-7``,
``rusu-4``, whose sizes are nominal), so their cells compare with the paper's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kd_system.config import PACKAGE_DIR, load_config, resolve_teacher_path
from kd_system.errors import ConfigError
from kd_system.learner.loss_spec import validate_loss_spec
from kd_system.policies.networks import build_network, cnn_spec, count_parameters
from kd_system.experiments.scratch import ScratchBudget

ACTING = ("teacher", "student", "mixed")
STUDENT_LAYERS = 2
RUSU_STUDENTS = ("rusu-25", "rusu-7", "rusu-4", "tiny-1.7")  # and Sun & Fazli's 1.7%


def env_slug(env_id: str) -> str:
    """A file-name-safe env name: ``CartPole-v1`` -> ``cartpole-v1``, ``ALE/Breakout-v5`` -> ``breakout-v5``."""
    return env_id.removeprefix("ALE/").replace("/", "_").lower()


@dataclass(frozen=True)
class Cell:
    env_id: str
    size: float  # share of the teacher's parameters
    loss: str
    acting: str

    @property
    def name(self) -> str:
        loss = self.loss.replace("+", "_plus_").replace("*", "x")
        return f"{env_slug(self.env_id)}-{self.size * 100:g}pct-{loss}-{self.acting}"


@dataclass(frozen=True)
class Grid:
    cells: tuple[Cell, ...]
    settings: tuple[str, ...] = ()
    env_settings: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scratch_sizes: tuple[float, ...] = ()
    scratch_envs: tuple[str, ...] = ()
    scratch_budget: ScratchBudget = ScratchBudget()
    command_line_settings: tuple[str, ...] = ()  # --set on the command line: applied last, so they win

    def overrides(self, cell: Cell) -> list[str]:
        return list(self.settings) + list(self.env_settings.get(cell.env_id, ())) + list(self.command_line_settings)


def shipped_config_name(env_id: str) -> str:
    return env_slug(env_id)


@dataclass(frozen=True)
class StudentShape:
    """The student a cell distils into: a ``networks.build_network`` spec and its size."""
    network: dict[str, Any]
    params: int
    teacher_params: int

    def overrides(self) -> list[str]:
        """``kd-system run --set`` items that make the run's student this network."""
        if self.network["kind"] == "cnn":
            return [f"student.preset={self.network['preset']}"]
        return [f"student.hidden=[{','.join(map(str, self.network['hidden']))}]"]


def student_shape(env_id: str, size: float) -> StudentShape:
    """The student at ``size`` of the shipped teacher: for frame stacks the Rusu CNN nearest to it,
    else the widest equal-width MLP at or under it."""
    config = load_config(shipped_config_name(env_id))
    spec = json.loads((resolve_teacher_path(config.teacher.checkpoint) / "spec.json").read_text())
    obs_shape, actions, teacher_params = tuple(spec["obs_shape"]), spec["num_actions"], spec["num_params"]

    def sized(network: dict[str, Any]) -> StudentShape:
        return StudentShape(network, count_parameters(build_network(network, obs_shape, actions)), teacher_params)

    budget = size * teacher_params
    best = None
    if spec["network"]["kind"] == "cnn":
        # Rusu et al.'s sizes are nominal (rusu-25 is 25.2% of a Nature CNN): take the nearest,
        # unless even that is more than half again off the share asked for
        nearest = min((sized(cnn_spec(name)) for name in RUSU_STUDENTS), key=lambda shape: abs(shape.params - budget))
        best = nearest if abs(nearest.params / budget - 1) <= 0.5 else None
    else:
        for width in range(1, 1025):  # parameters grow with width: stop at the first too big
            shape = sized({"kind": "mlp", "hidden": [width] * STUDENT_LAYERS, "activation": "relu"})
            if shape.params > budget:
                break
            best = shape
    if best is not None:
        return best
    kinds = f"Rusu CNN ({', '.join(RUSU_STUDENTS)})" if spec["network"]["kind"] == "cnn" else f"{STUDENT_LAYERS}-layer MLP"
    raise ConfigError(f"student size {size:g} of {env_id}'s teacher is too small for any {kinds}")


def _list(data: dict, key: str, where: str, kind: type | tuple = str) -> list:
    value = data.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        what = "numbers" if kind != str else "strings"
        raise ConfigError(f"{where}.{key}: expected a non-empty list of {what}, got {value!r}")
    return value


def _check_cell_axes(envs: list, sizes: list, losses: list, acting: list, where: str) -> None:
    for env_id in envs:
        try:
            load_config(shipped_config_name(env_id))
        except ConfigError:
            raise ConfigError(f"{where}.envs: {env_id!r} has no shipped config and teacher (kd_system/configs/)") from None
    for size in sizes:
        if not 0 < size <= 1:
            raise ConfigError(f"{where}.sizes: {size!r} must be a share of the teacher's parameters in (0, 1], e.g. 0.07")
    for loss in losses:
        try:
            validate_loss_spec(loss)
        except ConfigError as exc:
            raise ConfigError(f"{where}.losses: {exc}") from None
    for who in acting:
        if who not in ACTING:
            raise ConfigError(f"{where}.acting: {who!r} is unknown; use {', '.join(ACTING)}")


def cross(envs: list, sizes: list, losses: list, acting: list, where: str) -> list[Cell]:
    _check_cell_axes(envs, sizes, losses, acting, where)
    return [Cell(e, float(s), l, a) for e in envs for s in sizes for l in losses for a in acting]


def _unique(cells: list[Cell]) -> tuple[Cell, ...]:
    return tuple(dict.fromkeys(cells))


def load_grid(path: str | Path) -> Grid:
    path = Path(path)
    if not path.is_file():
        shipped = PACKAGE_DIR / "experiments" / f"{str(path).removesuffix('.yaml')}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"grid file {path} does not exist; pass a YAML path or a shipped grid (classic_control)")
        path = shipped
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise ConfigError(f"{path}: malformed YAML; fix the file's syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with groups, settings, env_settings, scratch")
    unknown = sorted(set(data) - {"groups", "settings", "env_settings", "scratch"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]}; valid keys are groups, settings, env_settings, scratch")
    try:
        return _parse(data, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _parse(data: dict[str, Any], path: Path) -> Grid:
    groups = data.get("groups")
    if not isinstance(groups, list) or not groups:
        raise ConfigError("groups: expected a non-empty list of {envs, sizes, losses, acting}")
    cells: list[Cell] = []
    for index, group in enumerate(groups):
        where = f"groups[{index}]"
        if not isinstance(group, dict):
            raise ConfigError(f"{where}: expected a mapping with envs, sizes, losses, acting")
        extra = sorted(set(group) - {"envs", "sizes", "losses", "acting"})
        if extra:
            raise ConfigError(f"{where}.{extra[0]}: unknown key; use envs, sizes, losses, acting")
        cells += cross(_list(group, "envs", where), _list(group, "sizes", where, (int, float)),
                       _list(group, "losses", where), _list(group, "acting", where), where)
    settings = data.get("settings") or []
    if not isinstance(settings, list) or not all(isinstance(s, str) and "=" in s for s in settings):
        raise ConfigError("settings: expected a list of section.key=value strings")
    env_settings = data.get("env_settings") or {}
    if not isinstance(env_settings, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) and "=" in s for s in v) for v in env_settings.values()):
        raise ConfigError("env_settings: expected {env id: [section.key=value, ...]}")
    scratch = data.get("scratch") or {}
    if not isinstance(scratch, dict):
        raise ConfigError("scratch: expected a mapping (sizes, envs, max_env_steps, max_wall_s, eval_every_steps, ...)")
    sizes = [float(s) for s in scratch.pop("sizes", [])]
    envs = scratch.pop("envs", sorted({c.env_id for c in cells}))
    try:
        budget = ScratchBudget(**scratch)
    except TypeError:
        raise ConfigError(f"scratch: unknown key among {sorted(scratch)}; valid: sizes, envs, "
                          f"{', '.join(ScratchBudget.__dataclass_fields__)}") from None
    return Grid(_unique(cells), tuple(settings), {k: tuple(v) for k, v in env_settings.items()},
                tuple(sizes), tuple(envs), budget)
