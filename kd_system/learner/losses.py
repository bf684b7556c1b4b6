"""Distillation losses as pure functions of (student outputs, teacher outputs), and ``build_loss``,
the one entry point the learner calls.

Every loss takes ``(batch, num_actions)`` tensors and returns a scalar averaged over states, and
applies to ``q`` and ``logits`` teachers alike; only the default teacher temperature differs.

``kl`` follows Rusu et al. 2015, "Policy Distillation": KL(softmax(q_T / tau) || softmax(q_S)),
with tau = 0.01 for Q-value teachers (sharpens Q-values into a near-greedy target) and tau = 1
for logit teachers. It is written with log_softmax on both sides for numerical stability and
averaged per state (``batchmean``), which is the true KL divergence per sample.

Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", soften the student as well:
KL(softmax(t / T) || softmax(s / T)) * T². The squared factor is the *student* temperature
T_s here (in Hinton's setting both sides share one T, so it is their T): dividing the student's
outputs by T_s scales the loss's gradient with respect to them by about 1 / T_s² (1 / T_s from
the chain rule, 1 / T_s from how little softened probabilities move), and multiplying by T_s²
keeps that gradient comparable when the temperature or the mix of terms changes. The argument
assumes T_s >= 1; below 1 the factor shrinks the term (1e-4 at T_s = 0.01), which matters only
in weighted sums since Adam ignores a constant factor on a lone loss. Without a student
temperature the student is not softened and nothing is scaled (Rusu's form).

Weighted sums mixing ``kl`` with ``mse`` or ``maxgap`` agree on a target only when T_s equals
the teacher temperature: the value terms pull the student's outputs towards s = t, the KL term
towards s = t * T_s / tau + c. Both keep the teacher's action ordering, so the greedy action is
not contested, but for a ``q`` teacher (tau = 0.01) set learner.student_temperature to tau as
well to make the terms consistent.

``mi`` maximises the mutual information between the student's and the teacher's actions over a
batch, after IIC (Ji et al. 2019, "Invariant Information Clustering"); ``adv`` regresses advantages
(``mse`` after removing each state's mean over actions). Their docstrings say what each keeps and
loses against ``kl``.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from kd_system.errors import ConfigError
from kd_system.learner.loss_spec import LOSS_NAMES, parse_loss_spec, validate_loss_spec

__all__ = ["DEFAULT_TEMPERATURE", "LOSS_NAMES", "LossFn", "advantage_loss", "build_loss", "kl_divergence", "kl_loss",
           "max_gap_loss", "mse_loss", "mutual_information", "mutual_information_loss", "nll_loss", "parse_loss_spec",
           "resolve_temperature", "validate_loss_spec"]

DEFAULT_TEMPERATURE = {"q": 0.01, "logits": 1.0}

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kl_divergence(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float,
                  student_temperature: float = 1.0) -> torch.Tensor:
    """Mean over states of KL(softmax(teacher / temperature) || softmax(student / student_temperature)).

    Unscaled, so the evaluator can report it as a measurement."""
    teacher_log_probs = F.log_softmax(teacher_out.float() / temperature, dim=-1)
    student_log_probs = F.log_softmax(student_out.float() / student_temperature, dim=-1)
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)


def kl_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float,
            student_temperature: float | None = None) -> torch.Tensor:
    """Rusu's KL when ``student_temperature`` is None; Hinton's T_s² * KL(... || softmax(s / T_s)) otherwise."""
    if student_temperature is None:
        return kl_divergence(student_out, teacher_out, temperature)
    return student_temperature ** 2 * kl_divergence(student_out, teacher_out, temperature, student_temperature)


def mse_loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """Squared error summed over actions, averaged over states (regresses Q-values or logits)."""
    return (student_out.float() - teacher_out.float()).pow(2).sum(dim=-1).mean()


def nll_loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the teacher's greedy action under softmax(student)."""
    return F.cross_entropy(student_out.float(), teacher_out.argmax(dim=-1))


def max_gap_loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """max_a (teacher_a - student_a)², averaged over states: penalises the single worst-fitted action."""
    return (teacher_out.float() - student_out.float()).pow(2).amax(dim=-1).mean()


def advantage_loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """``mse`` on advantages A = Q - mean_a Q, student's against teacher's: each state's offset, which
    a Q-network may set freely without changing its policy, no longer counts.

    For a ``logits`` teacher the same centring gives centred logits, log pi_T - mean_a log pi_T: its
    policy up to the per-state normaliser, so the student regresses log-probability differences
    (with no temperature: the scale of the teacher's numbers is kept, as in ``mse``)."""
    student, teacher = student_out.float(), teacher_out.float()
    return mse_loss(student - student.mean(dim=-1, keepdim=True), teacher - teacher.mean(dim=-1, keepdim=True))


# Floor under probabilities before their logarithm, as IIC does (it uses float64's machine epsilon):
# an empty cell of the joint contributes 0 * log(floor) = 0 instead of NaN.
MI_EPSILON = 2.220446049250313e-16


def mutual_information(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """I(a_s; a_t) in nats for the batch joint P(a_s, a_t) = mean_i pi_s(a_s|s_i) pi_T(a_t|s_i) (IIC, Ji
    et al. 2019): sum P log(P / (P_s P_t)) with P_s, P_t its marginals.

    Not symmetrised. IIC symmetrises, (P + P^T) / 2, because its two variables are one network's
    clusters on two views of an image: the true joint is symmetric and averaging only removes noise.
    Here rows are the student's actions and columns the teacher's, two different policies (one of
    them fixed), so P has no reason to be symmetric and averaging it would change what is measured."""
    joint = student_probs.float().T @ teacher_probs.float() / student_probs.shape[0]  # (A_s, A_t)
    student_marginal = joint.sum(dim=1, keepdim=True)
    teacher_marginal = joint.sum(dim=0, keepdim=True)
    return (joint * (_log(joint) - _log(student_marginal) - _log(teacher_marginal))).sum()


def _log(probs: torch.Tensor) -> torch.Tensor:
    return probs.clamp_min(MI_EPSILON).log()


def mutual_information_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, temperature: float,
                            student_temperature: float | None = None) -> torch.Tensor:
    """-I(a_s; a_t), with pi_T = softmax(teacher / temperature) as in ``kl`` and pi_s =
    softmax(student / student_temperature) (unsoftened when None; no T^2 factor: that scaling is
    KL's). A batch-level loss: it needs the batch's states together, not one state at a time.

    It is blind to relabelling: a student that plays action j wherever the teacher plays i has the
    same information as one that copies it (I <= H(a_t), reached by any one-to-one map), so ``mi``
    alone may settle on a permuted policy; a ``kl`` (or ``nll``) term fixes the labels."""
    teacher_probs = F.softmax(teacher_out.float() / temperature, dim=-1)
    student_probs = F.softmax(student_out.float() / (student_temperature or 1.0), dim=-1)
    return -mutual_information(student_probs, teacher_probs)


TEMPERATURE_FREE_LOSSES: dict[str, LossFn] = {"mse": mse_loss, "nll": nll_loss, "maxgap": max_gap_loss,
                                              "adv": advantage_loss}
TEMPERED_LOSSES = {"kl": kl_loss, "mi": mutual_information_loss}
assert set(LOSS_NAMES) == {*TEMPERED_LOSSES, *TEMPERATURE_FREE_LOSSES}, "loss_spec.LOSS_NAMES and the loss table disagree"


def resolve_temperature(configured: float | None, output_kind: str) -> float:
    return configured if configured is not None else DEFAULT_TEMPERATURE[output_kind]


def build_loss(spec: str, output_kind: str, temperature: float | None = None,
               student_temperature: float | None = None) -> LossFn:
    """The learner's loss: ``spec`` is a name or a weighted sum ("kl+0.1*mse"); ``output_kind`` is the
    teacher's (``q`` or ``logits``) and picks the default ``temperature``."""
    if output_kind not in DEFAULT_TEMPERATURE:
        raise ConfigError(f"teacher output kind {output_kind!r} is unknown; expected one of {', '.join(DEFAULT_TEMPERATURE)}")
    tau = resolve_temperature(temperature, output_kind)
    terms = [(weight, partial(TEMPERED_LOSSES[name], temperature=tau, student_temperature=student_temperature)
              if name in TEMPERED_LOSSES else TEMPERATURE_FREE_LOSSES[name]) for name, weight in parse_loss_spec(spec)]

    def loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        total = terms[0][0] * terms[0][1](student_out, teacher_out)
        for weight, term in terms[1:]:
            total = total + weight * term(student_out, teacher_out)
        return total

    return loss
