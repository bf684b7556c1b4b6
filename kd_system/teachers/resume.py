"""Teacher training's resume point: ``OUT/.training/`` holds what a later part needs to go on.

- ``progress.json``: the training config, the counters (iterations, env steps and wall time of
  all parts so far), the best greedy snapshot's figures, and the learner state's layout;
- ``learner.safetensors``: the learner's network (with DQN's target network) and its optimizer's
  moments, as RLlib's ``Algorithm.get_state`` gives them;
- ``best.safetensors``: the best snapshot's weights in our network's layout.

No pickle anywhere: RLlib's own checkpoints (``save_to_path``) pickle their state and their
constructor arguments, and a resume directory is a path the user hands in. The replay buffer is
not kept either (100k Atari frames are gigabytes): a resumed DQN refills it with the restored
network before learning again (training.py shifts its schedules).

A finished training keeps it (raising the budget continues it); .gitignore and the image build
keep it out of the repository and the image, since on Atari it is tens of MB beside the teacher.

A part is replaced whole: written beside the old one, then renamed over it, so a kill during the
write leaves the previous part readable (``.training.old`` during the swap).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from kd_system.errors import CheckpointError

STATE_DIR = ".training"
FORMAT = 1


@dataclass
class Progress:
    """The counters and the best snapshot of all parts so far (mutable: the training loop updates it)."""
    iteration: int = 0
    env_steps: int = 0
    wall_s: float = 0.0
    best: dict[str, Any] = field(default_factory=dict)  # quick, full, steps, wall, iteration, diff (no weights)
    resumed_at: list[int] = field(default_factory=list)  # env steps at the start of each resumed part


def state_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / STATE_DIR


def exists(out_dir: str | Path) -> bool:
    """A training to continue is there (either name of the swap)."""
    final = state_dir(out_dir)
    return final.exists() or final.with_name(STATE_DIR + ".old").exists()



def _flatten(tree: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    """The tree as JSON, every array replaced by a reference into ``arrays``. Dicts keep their keys'
    types (the optimizer's state is keyed by int), so they are written as [key, value] pairs."""
    if isinstance(tree, dict):
        return {"dict": [[key, _flatten(value, arrays, f"{path}/{key}")] for key, value in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return {"list": [_flatten(value, arrays, f"{path}/{i}") for i, value in enumerate(tree)]}
    if isinstance(tree, np.ndarray) or hasattr(tree, "numpy"):
        arrays[path] = np.ascontiguousarray(tree.numpy() if hasattr(tree, "numpy") else tree)
        return {"array": path}
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise CheckpointError(f"cannot keep a {type(tree).__name__} at {path} in a resume point")


def _unflatten(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(tree, dict):
        if "dict" in tree:
            return {key: _unflatten(value, arrays) for key, value in tree["dict"]}
        if "list" in tree:
            return [_unflatten(value, arrays) for value in tree["list"]]
        return arrays[tree["array"]]
    return tree


def save(out_dir: str | Path, config: dict[str, Any], progress: Progress, learner_state: dict[str, Any],
         best_state: dict[str, np.ndarray] | None) -> None:
    """Write the resume point of the part that has just finished an iteration."""
    final = state_dir(out_dir)
    tmp, old = final.with_name(STATE_DIR + ".tmp"), final.with_name(STATE_DIR + ".old")
    if not final.exists() and old.exists():  # the last part was killed between the renames: it is the one to keep
        old.rename(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays: dict[str, np.ndarray] = {}
    layout = _flatten(learner_state, arrays, "learner")
    save_file(arrays, str(tmp / "learner.safetensors"))
    if best_state is not None:
        save_file({k: np.ascontiguousarray(v) for k, v in best_state.items()}, str(tmp / "best.safetensors"))
    record = {"format": FORMAT, "config": config, "progress": asdict(progress), "learner_layout": layout}
    (tmp / "progress.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class ResumePoint:
    config: dict[str, Any]
    progress: Progress
    learner_state: dict[str, Any]
    best_state: dict[str, np.ndarray] | None


def load(out_dir: str | Path) -> ResumePoint:
    """The last complete part's resume point; one line naming the directory if there is none."""
    final = state_dir(out_dir)
    where = final if (final / "progress.json").exists() else final.with_name(STATE_DIR + ".old")
    if not (where / "progress.json").exists():
        raise CheckpointError(f"--resume {out_dir}: no teacher training to continue there ({final} is missing); "
                              "give the --out directory of an earlier `kd-system teacher train`")
    try:
        record = json.loads((where / "progress.json").read_text())
        if record.get("format") != FORMAT:
            raise CheckpointError(f"{where}/progress.json: format {record.get('format')!r}, this version reads {FORMAT}")
        arrays = load_file(str(where / "learner.safetensors"))
        best_path = where / "best.safetensors"
        best_state = load_file(str(best_path)) if best_path.exists() else None
        learner = _unflatten(record["learner_layout"], arrays)
        progress = Progress(**record["progress"])
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"--resume {out_dir}: the resume point in {where} is unreadable ({exc}); "
                              "start the training again without --resume into a new --out") from None
    return ResumePoint(record["config"], progress, learner, best_state)
