"""Distillation losses as pure functions of (student outputs, teacher outputs).

``kl`` follows Rusu et al. 2015, "Policy Distillation": KL(softmax(q_T / tau) || softmax(q_S)),
with tau = 0.01 for Q-value teachers (sharpens Q-values into a near-greedy target) and tau = 1
for logit teachers. It is written with log_softmax on both sides for numerical stability and
averaged per state (``batchmean``), which is the true KL divergence per sample.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

DEFAULT_TEMPERATURE = {"q": 0.01, "logits": 1.0}


def kl_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float) -> torch.Tensor:
    teacher_log_probs = F.log_softmax(teacher_out.float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_out.float(), dim=-1)
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)


def mse_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float) -> torch.Tensor:
    """Squared error summed over actions, averaged over states (regresses Q-values or logits)."""
    return (student_out.float() - teacher_out.float()).pow(2).sum(dim=-1).mean()


def nll_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float) -> torch.Tensor:
    """Negative log-likelihood of the teacher's greedy action under softmax(student)."""
    return F.cross_entropy(student_out.float(), teacher_out.argmax(dim=-1))


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "kl": kl_loss,
    "mse": mse_loss,
    "nll": nll_loss,
}


def resolve_temperature(configured: float | None, output_kind: str) -> float:
    return configured if configured is not None else DEFAULT_TEMPERATURE[output_kind]
