"""Writing an imported teacher: the checkpoint (spec.json + weights) and MODEL_CARD.md, staged in a
sibling directory and moved into ``--out`` only once complete. An ``--out`` that already holds a
teacher is refused unless ``--force``, and then only the teacher's own files are replaced."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kd_system.errors import CheckpointError
from kd_system.policies.files import SPEC_FILE, WEIGHTS_FILE, PolicyBundle, PolicySpec, save_bundle
from kd_system.policies.opaque import OPAQUE_FILES
from kd_system.teachers.ensemble import is_ensemble
from kd_system.teachers.ensemble import markdown as ensemble_markdown
from kd_system.teachers.imports.training_record import markdown_rows

CARD_FILE = "MODEL_CARD.md"
TEACHER_FILES = (SPEC_FILE, WEIGHTS_FILE, *OPAQUE_FILES.values(), CARD_FILE)


def check_out(out: Path, force: bool) -> None:
    """Refuse before any work is done, so a long import never ends in a refusal."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file; pass a directory for the teacher")
    held = [name for name in TEACHER_FILES if (out / name).exists()]
    if held and not force:
        raise CheckpointError(f"--out {out} already holds a teacher ({', '.join(held)}); pass --force to replace "
                              "it, or another --out")


def write_imported(out: Path, bundle: PolicyBundle, force: bool) -> Path:
    check_out(out, force)
    staging = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_bundle(staging, bundle)
        (staging / CARD_FILE).write_text(markdown(bundle.spec))
        out.mkdir(parents=True, exist_ok=True)
        for name in TEACHER_FILES:  # a forced import may change kinds: no stale weights of another kind
            if (out / name).exists() and not (staging / name).exists():
                (out / name).unlink()
        for name in (n for n in TEACHER_FILES if n != SPEC_FILE and (staging / n).exists()):
            os.replace(staging / name, out / name)
        os.replace(staging / SPEC_FILE, out / SPEC_FILE)  # the spec last: a half-written teacher has none
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _parity_text(card: dict) -> str:
    diff = card.get("parity_max_abs_diff")
    if diff is None:
        return f"not measured ({card['parity_reference']})"
    what = "log-probabilities" if card.get("parity_compared") == "log_probs" else "outputs"
    return f"max abs diff **{diff:.2e}** on {what} vs {card['parity_reference']}"


def _return_text(card: dict, key: str) -> str:
    if f"{key}_mean" not in card:
        return "not evaluated at import (`--episodes 0`)"
    interval = card.get(f"{key}_ci95")
    return (f"{card[f'{key}_mean']:.2f} ± {card[f'{key}_std']:.2f} (std)"
            + (f", 95% CI of the mean {interval[0]:.2f} to {interval[1]:.2f}" if interval else ""))


def markdown(spec: PolicySpec) -> str:
    if is_ensemble(spec):  # a run writes its ensemble teacher through here too
        return ensemble_markdown(spec)
    card = spec.model_card
    episodes = card.get("eval_episodes")
    epsilon = card.get("eval_epsilon") or 0.0
    policy = f"epsilon-greedy ({epsilon:g})" if epsilon else "greedy"
    differences = card.get("protocol_differences") or []
    protocol = ("\n".join(f"- {line}" for line in differences) if differences
                else "- none known: observations and env as kd_system plays them")
    notes = "\n".join(f"- {line}" for line in card.get("notes", [])) or "- none"
    return f"""# Teacher: {spec.env_id} ({card['algorithm']}, imported from {card['library']})

Imported by `kd-system teacher import` from `{card['imported_from']}` ({card['source_format']}; {card['library']}
{card['library_version']}). Outputs {'Q-values' if spec.output_kind == 'q' else 'policy logits'}.

| | |
|---|---|
| Source sha256 | `{card['source_sha256']}` |
| Parity on {card['parity_states']:,} states of {spec.env_id} | {_parity_text(card)} |
| {policy.capitalize()} return ({episodes or 0} episodes, seeds {card.get('eval_seed', 0)}..) | **{_return_text(card, 'eval_return')}** |
| Random policy, same seeds | {_return_text(card, 'random_return')} |
| Network | `{json.dumps(spec.network)}` |
| Parameters | {spec.num_params:,} here; {card['source_params']:,} in the source's acting path |
| Created | {card['created']} |
{markdown_rows(card.get('training') or {})}
Where the teacher's training protocol differs from how kd_system plays {spec.env_id}:
{protocol}

Notes:
{notes}
""" + (f"\nReproduce with:\n\n```\n{card['command']}\n```\n" if card.get("command") else "")
