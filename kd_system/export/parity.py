"""Parity of an exported file with its source checkpoint on held-out states, measured through the
policy runtime that ``kd-system eval`` runs the file with (policies/opaque.py)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from kd_system.errors import CheckpointError
from kd_system.learner.losses import kl_divergence
from kd_system.policies.files import PolicySpec
from kd_system.policies.opaque import load_opaque
from kd_system.teachers.imports.states import env_states

from kd_system.export.records import (FP32_TOLERANCE, PARITY_SEED, PARITY_STATES, Exported, Parity,
                                      exported_network, input_dtype)


@lru_cache(maxsize=4)
def _cached_states(env_id: str) -> np.ndarray:
    states = env_states(env_id, PARITY_STATES, seed=PARITY_SEED)
    states.setflags(write=False)  # shared between callers: each gets its own copy
    return states


def held_out_states(env_id: str) -> np.ndarray:
    """Random-policy states of the env (seeds apart from calibration's), collected once per env and
    process: the tasks of a multi-task snapshot and repeated exports share them."""
    return _cached_states(env_id).copy()


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(other)) over states, temperature 1: the learner's own
    measure (losses.kl_divergence), as the evaluator reports it."""
    return float(kl_divergence(torch.from_numpy(np.asarray(other)), torch.from_numpy(np.asarray(reference)), 1.0))


def compare(spec: PolicySpec, reference: np.ndarray, outputs: np.ndarray) -> Parity:
    greedy, exported_greedy = reference.argmax(axis=1), outputs.argmax(axis=1)
    differ = greedy != exported_greedy
    rows = np.flatnonzero(differ)
    # a tie: the exported file's pick is, in the source's own outputs, within tolerance of the best
    ties = int(np.sum(reference[rows, greedy[rows]] - reference[rows, exported_greedy[rows]] <= FP32_TOLERANCE))
    kl = mean_kl(reference, outputs) if spec.output_kind == "logits" else None
    return Parity(spec.env_id, len(reference), PARITY_SEED, float(np.max(np.abs(reference - outputs))),
                  float(np.max(np.abs(reference))), float(1.0 - differ.mean()), int(differ.sum()), ties, kl)


def measure(spec: PolicySpec, module: torch.nn.Module, exported: Exported, source: str) -> Parity:
    """The source network and the exported file on the same held-out states."""
    states = held_out_states(spec.env_id)
    runtime = load_opaque(exported_network(exported.fmt, input_dtype(spec)), spec.num_actions, exported.data,
                          f"the {exported.fmt} export of {source}")
    batch = torch.from_numpy(states)
    with torch.inference_mode():
        reference = module.eval()(batch).float().numpy()
        outputs = runtime(batch).float().numpy()
    return compare(spec, reference, outputs)


def check_fp32(parity: Parity, fmt: str, source: str) -> None:
    """fp32 files must act as the checkpoint does; int8 files are reported, never refused."""
    if parity.passes_fp32():
        return
    raise CheckpointError(
        f"the {fmt} export of {source} does not match it on {parity.states} held-out states of {parity.env_id}: "
        f"max abs diff {parity.max_abs_diff:.2e} (limit {parity.fp32_limit:.2g}), greedy agreement "
        f"{parity.greedy_agreement:.2%} (100% needed); nothing was written; try the other --format")
