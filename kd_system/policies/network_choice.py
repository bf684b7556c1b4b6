"""Which network a policy gets for an env's observations: a CNN preset for pixel frame stacks, an
MLP of ``hidden`` layers for flat vectors. The env says what its observations are
(``EnvSpaces.pixels``); this module decides what reads them."""
from __future__ import annotations

from typing import Any, Sequence

from kd_system.envs.make import EnvSpaces, env_spaces
from kd_system.policies.networks import cnn_spec


def network_for(spaces: EnvSpaces, hidden: Sequence[int], activation: str = "relu",
                preset: str = "rusu-7") -> dict[str, Any]:
    """The network spec for ``spaces``: ``preset`` for pixels (``hidden`` is unused there), else an
    MLP. rusu-7 is Rusu et al.'s ~7% student."""
    if spaces.pixels:
        return cnn_spec(preset, activation)
    return {"kind": "mlp", "hidden": list(hidden), "activation": activation}


def student_network_for(env_id: str, hidden: Sequence[int], activation: str = "relu",
                        preset: str = "rusu-7") -> dict[str, Any]:
    """``network_for`` an env id (makes the env once to read its spaces)."""
    return network_for(env_spaces(env_id), hidden, activation, preset)
