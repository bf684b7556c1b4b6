"""Parsing ``learner.loss``: one loss name or a weighted sum such as ``kl+0.1*mse``.

Kept free of torch so that config validation (and so the CLI's first error) stays fast.
"""
from __future__ import annotations

import math
import re

from kd_system.errors import ConfigError

LOSS_NAMES = ("kl", "mse", "nll", "maxgap", "mi", "adv")
HOW_TO_WRITE = (f"write one of {', '.join(LOSS_NAMES)}, or a weighted sum of distinct names with positive "
                "weights such as kl+0.1*mse or 0.5*nll+2*maxgap")

_TERM = re.compile(r"\s*(?:(?P<weight>[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z_]\w*)\s*")
# Split on '+' except the sign of an exponent written as 1e+2.
_PLUS = re.compile(r"(?<![0-9][eE])\+")


def _bad(spec: object, why: str) -> ConfigError:
    return ConfigError(f"learner.loss {spec!r} {why}; {HOW_TO_WRITE}")


def parse_loss_spec(spec: str) -> tuple[tuple[str, float], ...]:
    """``"kl+0.1*mse"`` -> ``(("kl", 1.0), ("mse", 0.1))``; raises ConfigError naming learner.loss."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(spec, "is empty or not a string")
    pieces = _PLUS.split(spec)
    terms: list[tuple[str, float]] = []
    for piece in pieces:
        match = _TERM.fullmatch(piece)
        if match is None:
            raise _bad(spec, f"has a term {piece.strip()!r} that is not NAME or WEIGHT*NAME")
        name = match["name"]
        if name not in LOSS_NAMES:
            raise _bad(spec, "is unknown" if len(pieces) == 1 else f"has an unknown loss {name!r}")
        try:
            weight = 1.0 if match["weight"] is None else float(match["weight"])
        except ValueError:
            raise _bad(spec, f"has a weight {match['weight']!r} that is not a number") from None
        if not (weight > 0 and math.isfinite(weight)):
            raise _bad(spec, f"gives {name} the weight {weight:g}; weights must be positive and finite")
        if any(name == seen for seen, _ in terms):
            raise _bad(spec, f"names {name} twice; give each loss once with its total weight")
        terms.append((name, weight))
    return tuple(terms)


def validate_loss_spec(spec: str) -> None:
    """Up-front config check: raises the same ConfigError the learner would."""
    parse_loss_spec(spec)


# Terms that regress the teacher's numbers (adv: up to a per-state offset, which no greedy action sees).
REGRESSION_LOSSES = ("mse", "maxgap", "adv")


def student_output_kind(spec: str, teacher_output_kind: str) -> str:
    """A student trained only to regress the teacher's outputs (mse, maxgap, adv) produces the same kind
    of numbers as its teacher; any kl, nll or mi term makes its outputs logits of a policy."""
    regresses_only = all(name in REGRESSION_LOSSES for name, _ in parse_loss_spec(spec))
    return teacher_output_kind if regresses_only else "logits"
