"""Losses against values computed by hand (see each comment for the arithmetic)."""
import math

import pytest
import torch

from kd_system.losses import DEFAULT_TEMPERATURE, kl_loss, mse_loss, nll_loss, resolve_temperature

# softmax([1, 2]) = [e/(e+e^2), e^2/(e+e^2)] = [0.268941, 0.731059]
# KL(p || [0.5, 0.5]) = 0.268941*ln(0.537883) + 0.731059*ln(1.462117) = 0.110944
KL_12_VS_UNIFORM = 0.11094407167172735


def test_kl_logits_teacher_at_temperature_one():
    loss = kl_loss(torch.zeros(1, 2), torch.tensor([[1.0, 2.0]]), temperature=1.0)
    assert loss.item() == pytest.approx(KL_12_VS_UNIFORM, rel=1e-6)


def test_kl_q_teacher_at_rusu_temperature_sharpens_small_q_gaps():
    # Q = [1.00, 1.01] at tau = 0.01 is softmax([100, 101]) = softmax([1, 2]): same KL as above.
    loss = kl_loss(torch.zeros(1, 2), torch.tensor([[1.00, 1.01]]), temperature=0.01)
    assert loss.item() == pytest.approx(KL_12_VS_UNIFORM, rel=1e-4)


def test_kl_is_batchmean_and_zero_when_matched():
    teacher = torch.tensor([[1.0, 2.0], [3.0, 3.0]])
    student = torch.tensor([[0.0, 0.0], [5.0, 5.0]])  # second row already matches: KL 0
    assert kl_loss(student, teacher, 1.0).item() == pytest.approx(KL_12_VS_UNIFORM / 2, rel=1e-6)
    assert kl_loss(teacher, teacher, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_is_stable_for_huge_tempered_q_values():
    loss = kl_loss(torch.zeros(1, 3), torch.tensor([[500.0, 100.0, -300.0]]), temperature=0.01)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(math.log(3), rel=1e-5)  # one-hot target vs uniform: ln 3


def test_mse_sums_over_actions_and_averages_over_states():
    # row 1: (1-0)^2 + (2-4)^2 = 5; row 2: 0  -> mean 2.5
    student = torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    teacher = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    assert mse_loss(student, teacher, 1.0).item() == pytest.approx(2.5)


def test_nll_on_teacher_argmax():
    # teacher argmax = action 1; softmax([0, ln 3]) = [0.25, 0.75]; -ln 0.75 = 0.287682
    loss = nll_loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0, 3.0]]), 1.0)
    assert loss.item() == pytest.approx(0.2876820724517809, rel=1e-6)


def test_default_temperatures_follow_rusu_et_al():
    assert DEFAULT_TEMPERATURE == {"q": 0.01, "logits": 1.0}
    assert resolve_temperature(None, "q") == 0.01
    assert resolve_temperature(0.5, "q") == 0.5


def test_losses_have_gradients():
    student = torch.zeros(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3)
    for fn in (kl_loss, mse_loss, nll_loss):
        student.grad = None
        fn(student, teacher, 1.0).backward()
        assert student.grad is not None and torch.isfinite(student.grad).all()
