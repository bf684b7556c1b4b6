"""What every config section shares, and how a failed check reads.

Each stage's section (``kd_system/<stage>/config.py``) is a frozen pydantic model built on
:class:`Section`. pydantic checks types and ranges; :func:`config_error` turns its report into
the project's one-line :class:`ConfigError` naming the field, e.g. ``learner.batch_size must be
>= 1`` or ``unknown key learner.lrr; valid keys here are: loss, ...``. Checks pydantic cannot
express raise ``ValueError`` with the whole message, field name included, and it is kept verbatim.
"""
from __future__ import annotations

import typing
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictFloat, ValidationError
from pydantic.fields import FieldInfo

from kd_system.errors import ConfigError


class Section(BaseModel):
    """Frozen, so a config is hashable and equal by value; a misspelt key is an error, not ignored."""
    model_config = ConfigDict(frozen=True, extra="forbid")


def _yaml_number(value: Any) -> Any:
    if isinstance(value, str):  # YAML 1.1 (PyYAML) reads 3e-4, with no dot, as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


# Strict: true/false is not a number; an int becomes a float (32 -> 32.0).
Number = Annotated[StrictFloat, BeforeValidator(_yaml_number)]

_EXPECTED = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
             "string_type": "a string", "tuple_type": "a list", "list_type": "a list"}
_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def count_or_auto(value: object, field: str, minimum: int) -> object:
    """A before-validator's body for ``int >= minimum | "auto"`` fields: one message for both
    options, where pydantic would report each option's failure separately."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field}: expected an integer or auto, got {value!r}")
    if value < minimum:
        raise ValueError(f"{field} (a number or auto) must be >= {minimum}")
    return value


def one_of(names: tuple[str, ...]) -> str:
    """``a, b or c``: the choices an error message offers."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def _where(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class at ``loc`` (indices into tuples of models are skipped); None past the models."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, str):
            if model is None or part not in model.model_fields:
                return None
            annotation = model.model_fields[part].annotation
            model = next((a for a in (annotation, *typing.get_args(annotation))
                          if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def _range(root: type[BaseModel], loc: tuple[int | str, ...], broken: dict[str, Any]) -> str:
    """``in [0, 1]`` when the field has both bounds, else ``>= 1``: the whole rule, not only the side broken."""
    model = _model_at(root, loc[:-1]) if isinstance(loc[-1], str) else None  # a list item has no field
    field: FieldInfo | None = model.model_fields.get(str(loc[-1])) if model else None
    bounds = {key: getattr(m, key) for m in (field.metadata if field else ()) for key in _SIGNS
              if getattr(m, key, None) is not None} or {key: broken[key] for key in _SIGNS if key in broken}
    low = next((key for key in ("ge", "gt") if key in bounds), None)
    high = next((key for key in ("le", "lt") if key in bounds), None)
    if low and high:
        return f"in {'[' if low == 'ge' else '('}{bounds[low]:g}, {bounds[high]:g}{']' if high == 'le' else ')'}"
    return " and ".join(f"{_SIGNS[key]} {value:g}" for key, value in bounds.items())


def config_error(exc: ValidationError, root: type[BaseModel]) -> ConfigError:
    """One line for the first problem; unknown keys first, as a misspelt key explains the rest."""
    errors = exc.errors()
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, kind, value = error["loc"], error["type"], error.get("input")
    where = _where(loc) or "config"
    if kind == "extra_forbidden":
        keys = _model_at(root, loc[:-1]).model_fields  # type: ignore[union-attr]  # pydantic names a model's keys
        return ConfigError(f"unknown key {where}; valid keys here are: {', '.join(keys)}")
    if kind == "value_error":
        return ConfigError(str(error["ctx"]["error"]))
    if kind in _EXPECTED:
        return ConfigError(f"{where}: expected {_EXPECTED[kind]}, got {value!r}")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return ConfigError(f"{where}: expected a mapping of keys, got {type(value).__name__}")
    if kind == "literal_error":
        return ConfigError(f"{where}: expected {error['ctx']['expected']}, got {value!r}")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return ConfigError(f"{where} must be {_range(root, loc, error['ctx'])}, got {value!r}")
    return ConfigError(f"{where}: {error['msg']}")
