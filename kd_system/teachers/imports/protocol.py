"""The env protocol a teacher was trained under, recorded in its spec (``PolicySpec.protocol``) and
compared with the one kd_system plays (``envs/atari.py``: ALE v5, sticky actions 0.25, up to 30
no-op starts, whole episodes, 4 grey 84x84 frames stacked oldest first, channels first).

The observation layout and pixel scaling are not differences: the converted network (or the
opaque adapter) takes our observations exactly as our pipeline makes them, and the parity check
proves it. The env dynamics are: a teacher trained without sticky actions plays a v5 env worse
than its own training curve says, and its card must say so.
"""
from __future__ import annotations

from typing import Any

from kd_system.envs.atari import RAW_SCORE

# Stable-Baselines3's AtariWrapper and CleanRL's Atari scripts: NoFrameskip-v4 ids (no sticky
# actions, frame skip 4 in the wrapper), up to 30 no-ops, life loss ends training episodes.
V4_DEFAULTS = {"sticky_actions": 0.0, "frame_skip": 4, "noop_max": 30, "terminal_on_life_loss": True}


def atari_protocol(library: str, source_layout: str, trained_env: str | None,
                   pixel_scaling: str = "inside the network (/255)") -> dict[str, Any]:
    """What an SB3 or CleanRL Atari teacher was trained on. Without ``trained_env`` the library's
    NoFrameskip-v4 default is assumed, and the protocol says it is an assumption."""
    protocol: dict[str, Any] = {"library_default": library, "obs_layout": source_layout,
                                "frame_stack": "4 frames, oldest first", "pixel_scaling": pixel_scaling}
    if trained_env is None or "NoFrameskip-v4" in trained_env or trained_env.endswith("-v4"):
        protocol |= {"trained_env": trained_env or "<Game>NoFrameskip-v4", "assumed": trained_env is None, **V4_DEFAULTS}
    else:
        protocol |= {"trained_env": trained_env, "assumed": False, "sticky_actions": RAW_SCORE.repeat_action_probability}
    return protocol


def differences(protocol: dict[str, Any], env_id: str) -> list[str]:
    """Where the teacher's training protocol differs from how kd_system plays ``env_id``."""
    found = []
    sticky = protocol.get("sticky_actions")
    if sticky is not None and abs(float(sticky) - RAW_SCORE.repeat_action_probability) > 1e-9:
        found.append(f"trained with sticky actions {float(sticky):g}, played here ({env_id}) with "
                     f"{RAW_SCORE.repeat_action_probability:g} (ALE v5, Machado et al. 2018)")
    noop = protocol.get("noop_max")
    if noop is not None and int(noop) != RAW_SCORE.noop_max:
        found.append(f"trained with up to {noop} no-op starts, played here with up to {RAW_SCORE.noop_max}")
    if protocol.get("assumed"):
        found.append(f"training env not recorded in the file; assumed {protocol.get('trained_env')} (source: "
                     f"{protocol.get('library_default')}); pass --trained-env if it was another")
    return found
