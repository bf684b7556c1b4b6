"""A Stable-Baselines3 logger that writes nothing anywhere.

SB3's default logger (``stable_baselines3.common.logger.configure``) makes a ``SB3-<time>`` folder
in the system temp dir on every ``learn()``, even at ``verbose=0`` when it writes nothing there,
so each training left an empty folder in /tmp. Our drivers keep their own progress logs.
"""
from __future__ import annotations

from typing import Any


def without_sb3_logger(model: Any) -> Any:
    """``model`` with a logger that has no folder and no outputs; returns it for chaining."""
    from stable_baselines3.common.logger import Logger
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model
