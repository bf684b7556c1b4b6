"""Losses against values computed by hand (see each comment for the arithmetic)."""
import math

import pytest
import torch

from kd_system.config import load_config
from kd_system.errors import ConfigError
from kd_system.learner.loss_spec import student_output_kind
from kd_system.learner.losses import (DEFAULT_TEMPERATURE, LOSS_NAMES, advantage_loss, build_loss, kl_divergence, kl_loss,
                              max_gap_loss, mse_loss, mutual_information, mutual_information_loss, nll_loss,
                              parse_loss_spec, resolve_temperature, validate_loss_spec)

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


def test_kl_with_student_temperature_is_hinton_scaled_by_the_student_temperature_squared():
    # teacher [2, 4] / T=2 = [1, 2]; student [0, 0] / 2 = uniform: KL = 0.110944 (as above),
    # times T_s^2 = 4 -> 0.443776. The unscaled divergence stays 0.110944.
    teacher, student = torch.tensor([[2.0, 4.0]]), torch.zeros(1, 2)
    assert kl_divergence(student, teacher, 2.0, 2.0).item() == pytest.approx(KL_12_VS_UNIFORM, rel=1e-6)
    assert kl_loss(student, teacher, 2.0, student_temperature=2.0).item() == pytest.approx(0.4437762866869094, rel=1e-6)
    # student [0, 2] / 2 = [0, 1]: softmax equal to the teacher's softmax([1, 2]) -> 0
    assert kl_loss(torch.tensor([[0.0, 2.0]]), teacher, 2.0, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    # T_s = 1 is the same as leaving the student unsoftened: 1^2 = 1
    assert kl_loss(student, teacher, 2.0, 1.0).item() == pytest.approx(kl_loss(student, teacher, 2.0).item())


def test_hinton_scaling_gradient_by_hand():
    # d/ds [T^2 * KL(p || softmax(s/T))] = T^2 * (softmax(s/T) - p) / T = T * (q - p).
    # p = softmax([1, 2]) = [0.268941, 0.731059], q = [0.5, 0.5], T = 2:
    # gradient = 2 * [0.231059, -0.231059] = [0.462117, -0.462117] (one state, batchmean).
    student = torch.zeros(1, 2, requires_grad=True)
    kl_loss(student, torch.tensor([[2.0, 4.0]]), 2.0, 2.0).backward()
    torch.testing.assert_close(student.grad, torch.tensor([[0.4621171572600098, -0.4621171572600098]]))


def test_kl_q_teacher_with_student_softened_at_the_same_temperature():
    # Student outputs equal to the teacher's Q-values, both divided by 0.01: identical softmax -> 0,
    # which is why kl+mse for a q teacher wants student_temperature = tau.
    q = torch.tensor([[1.00, 1.01, 0.97]])
    assert kl_loss(q, q, 0.01, student_temperature=0.01).item() == pytest.approx(0.0, abs=1e-7)


def test_mse_sums_over_actions_and_averages_over_states():
    # row 1: (1-0)^2 + (2-4)^2 = 5; row 2: 0  -> mean 2.5
    student = torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    teacher = torch.tensor([[0.0, 4.0], [1.0, 1.0]])
    assert mse_loss(student, teacher).item() == pytest.approx(2.5)


def test_nll_on_teacher_argmax():
    # teacher argmax = action 1; softmax([0, ln 3]) = [0.25, 0.75]; -ln 0.75 = 0.287682
    loss = nll_loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0, 3.0]]))
    assert loss.item() == pytest.approx(0.2876820724517809, rel=1e-6)


def test_max_gap_takes_the_worst_action_per_state_then_averages():
    # row 1: (1-1)^2, (4-2)^2, (2-3)^2 = 0, 4, 1 -> 4;  row 2: (1-0)^2, (-3-0)^2, 0 = 1, 9, 0 -> 9
    # mean (4 + 9) / 2 = 6.5  (mse on the same rows: (5 + 10) / 2 = 7.5)
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 4.0, 2.0], [1.0, -3.0, 0.0]])
    assert max_gap_loss(student, teacher).item() == pytest.approx(6.5)
    assert mse_loss(student, teacher).item() == pytest.approx(7.5)


# Two states, two actions. Student logits [ln 3, 0] and [0, ln 3]: pi_s = [0.75, 0.25], [0.25, 0.75].
# Teacher policies [0.8, 0.2] and [0.2, 0.8]: logits [ln 4, 0] and [0, ln 4] at tau = 1, or Q-values
# 0.01 * [ln 4, 0] and 0.01 * [0, ln 4] at Rusu's tau = 0.01.
# Joint P = mean_i pi_s(.|s_i)^T pi_T(.|s_i) = ([[0.60, 0.15], [0.20, 0.05]] + [[0.05, 0.20], [0.15, 0.60]]) / 2
#         = [[0.325, 0.175], [0.175, 0.325]]; both marginals [0.5, 0.5], so P_s P_t = 0.25 everywhere.
# I = 2 * 0.325 * ln(0.325 / 0.25) + 2 * 0.175 * ln(0.175 / 0.25) = 0.65 ln 1.3 + 0.35 ln 0.7
#   = 0.65 * 0.2623643 - 0.35 * 0.3566749 = 0.1705368 - 0.1248362 = 0.0457005; the loss is -I.
MI_STUDENT = torch.tensor([[math.log(3.0), 0.0], [0.0, math.log(3.0)]])
MI_TEACHER_POLICY = torch.tensor([[math.log(4.0), 0.0], [0.0, math.log(4.0)]])
MI_BY_HAND = 0.65 * math.log(1.3) + 0.35 * math.log(0.7)


def test_mutual_information_by_hand_on_logits_and_q_teachers():
    assert MI_BY_HAND == pytest.approx(0.0457005, abs=1e-7)
    logits_teacher = build_loss("mi", "logits")(MI_STUDENT, MI_TEACHER_POLICY)
    q_teacher = build_loss("mi", "q")(MI_STUDENT, 0.01 * MI_TEACHER_POLICY)
    assert logits_teacher.item() == pytest.approx(-MI_BY_HAND, rel=1e-5)
    assert q_teacher.item() == pytest.approx(-MI_BY_HAND, rel=1e-5)


def test_mutual_information_bounds_and_its_blindness_to_relabelling():
    # one-hot teacher [1,0], [0,1] copied by the student: I = H(a_t) = ln 2; the swapped student too.
    one_hot = torch.eye(2)
    assert mutual_information(one_hot, one_hot).item() == pytest.approx(math.log(2), rel=1e-6)
    assert mutual_information(one_hot.flip(1), one_hot).item() == pytest.approx(math.log(2), rel=1e-6)
    # a student that ignores the state (uniform everywhere) shares no information: P = P_s P_t, I = 0,
    # and the empty cells of a one-hot joint give no NaN
    assert mutual_information(torch.full((2, 2), 0.5), one_hot).item() == pytest.approx(0.0, abs=1e-7)
    # student_temperature rescales the student: [ln 3, 0] / 0.5 = [ln 9, 0] -> pi_s = [0.9, 0.1].
    # P = ([[0.72, 0.18], [0.08, 0.02]] + [[0.02, 0.08], [0.18, 0.72]]) / 2 = [[0.37, 0.13], [0.13, 0.37]]
    # I = 0.74 ln(0.37 / 0.25) + 0.26 ln(0.13 / 0.25)
    softened = mutual_information_loss(MI_STUDENT, MI_TEACHER_POLICY, 1.0, student_temperature=0.5)
    assert softened.item() == pytest.approx(-(0.74 * math.log(1.48) + 0.26 * math.log(0.52)), rel=1e-5)


def test_mutual_information_gradient_pushes_the_student_towards_the_teacher():
    student = MI_STUDENT.clone().requires_grad_(True)
    build_loss("mi", "logits")(student, MI_TEACHER_POLICY).backward()
    # descending the loss raises the student's logit of the teacher's action in each state
    assert student.grad[0, 0] < student.grad[0, 1] and student.grad[1, 1] < student.grad[1, 0]


def test_advantage_loss_by_hand_ignores_each_states_offset():
    # state 1: student [1, 3] - 2 = [-1, 1], teacher [0, 4] - 2 = [-2, 2]: (1)^2 + (-1)^2 = 2
    # state 2: student [5, 5] - 5 = [0, 0], teacher [1, -1] - 0 = [1, -1]: 1 + 1 = 2  -> mean 2
    # (mse on the raw numbers: (1 + 1) + (16 + 36) = 54 / 2 = 27)
    student, teacher = torch.tensor([[1.0, 3.0], [5.0, 5.0]]), torch.tensor([[0.0, 4.0], [1.0, -1.0]])
    for kind in ("q", "logits"):  # no temperature: the same numbers for both kinds
        assert build_loss("adv", kind)(student, teacher).item() == pytest.approx(2.0)
    assert mse_loss(student, teacher).item() == pytest.approx(27.0)
    # Q-values shifted by any per-state constant have the same advantages: loss 0
    assert advantage_loss(teacher + torch.tensor([[100.0], [-7.0]]), teacher).item() == pytest.approx(0.0, abs=1e-9)


def test_weighted_sums_with_mi_and_adv_by_hand():
    # kl: teacher [0.8, 0.2] / [0.2, 0.8] vs student [0.75, 0.25] / [0.25, 0.75], the same in both
    # states by symmetry: 0.8 ln(0.8/0.75) + 0.2 ln(0.2/0.25) = 0.0516313 - 0.0446287 = 0.0070026
    kl = 0.8 * math.log(0.8 / 0.75) + 0.2 * math.log(0.2 / 0.25)
    loss = build_loss("kl+0.1*mi", "logits")(MI_STUDENT, MI_TEACHER_POLICY)
    # abs: float32 rounding of kl and mi before they nearly cancel (their difference is a third of kl)
    assert loss.item() == pytest.approx(kl - 0.1 * MI_BY_HAND, rel=1e-5, abs=1e-7)
    # adv: centred student +-ln3/2, teacher +-ln4/2: 2 * ((ln 4 - ln 3) / 2)^2 per state
    adv = 2 * ((math.log(4) - math.log(3)) / 2) ** 2
    loss = build_loss("2*adv+mi", "logits")(MI_STUDENT, MI_TEACHER_POLICY)
    assert loss.item() == pytest.approx(2 * adv - MI_BY_HAND, rel=1e-5)


def test_default_temperatures_follow_rusu_et_al():
    assert DEFAULT_TEMPERATURE == {"q": 0.01, "logits": 1.0}
    assert resolve_temperature(None, "q") == 0.01
    assert resolve_temperature(0.5, "q") == 0.5


def test_build_loss_weighted_sum_by_hand():
    # student [0, 0], teacher [1, 2]: kl = 0.110944, mse = 1 + 4 = 5 -> 0.110944 + 0.1 * 5 = 0.610944
    loss = build_loss("kl+0.1*mse", "logits")
    assert loss(torch.zeros(1, 2), torch.tensor([[1.0, 2.0]])).item() == pytest.approx(0.6109440716717274, rel=1e-6)
    # student [0, ln 3], teacher [1, 3]: nll = 0.287682, maxgap = max(1^2, (3 - ln 3)^2) = 3.615275
    # 2 * 0.287682 + 3.615275 = 4.190639
    loss = build_loss("2*nll+maxgap", "q")
    value = loss(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0, 3.0]])).item()
    assert value == pytest.approx(4.190639373707485, rel=1e-6)


def test_build_loss_picks_the_temperature_by_teacher_kind():
    # q teacher: default tau 0.01 -> same as the Rusu test above; logits: tau 1 gives softmax([1.00, 1.01])
    q_values = torch.tensor([[1.00, 1.01]])
    assert build_loss("kl", "q")(torch.zeros(1, 2), q_values).item() == pytest.approx(KL_12_VS_UNIFORM, rel=1e-4)
    assert build_loss("kl", "logits")(torch.zeros(1, 2), q_values).item() < 1e-4
    # explicit temperatures pass through: the Hinton case above, 0.443776
    hinton = build_loss("kl", "logits", temperature=2.0, student_temperature=2.0)
    assert hinton(torch.zeros(1, 2), torch.tensor([[2.0, 4.0]])).item() == pytest.approx(0.4437762866869094, rel=1e-6)


@pytest.mark.parametrize("kind", ["q", "logits"])
@pytest.mark.parametrize("spec", [*LOSS_NAMES, "kl+0.1*mse", "0.5*nll+2*maxgap+kl", "kl+0.1*mi", "adv+mi"])
def test_every_loss_works_for_both_teacher_kinds_with_gradients(kind, spec):
    torch.manual_seed(0)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3) * 5
    loss = build_loss(spec, kind, student_temperature=0.5 if "kl" in spec else None)(student, teacher)
    loss.backward()
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("spec, terms", [
    ("kl", (("kl", 1.0),)),
    ("kl+0.1*mse", (("kl", 1.0), ("mse", 0.1))),
    (" 0.5 * nll + 2*maxgap ", (("nll", 0.5), ("maxgap", 2.0))),
    ("1e-1*mse", (("mse", 0.1),)),
    ("1e+1*kl+mse", (("kl", 10.0), ("mse", 1.0))),  # the '+' of an exponent is not a separator
    (".5*kl", (("kl", 0.5),)),
])
def test_parse_loss_spec(spec, terms):
    assert parse_loss_spec(spec) == terms


@pytest.mark.parametrize("spec, fragment", [
    ("hinge", "learner.loss 'hinge' is unknown"),
    ("kl+infomax", "unknown loss 'infomax'"),
    ("KL", "is unknown"),  # names are case-sensitive
    ("kl+hinge", "unknown loss 'hinge'"),
    ("kl+", "term '' that is not NAME or WEIGHT*NAME"),
    ("mse*0.1", "'mse*0.1' that is not NAME or WEIGHT*NAME"),
    ("-0.1*mse", "not NAME or WEIGHT*NAME"),
    ("kl 0.1 mse", "not NAME or WEIGHT*NAME"),
    ("1..2*kl", "weight '1..2' that is not a number"),
    ("0*mse", "weight 0"),
    ("kl+0.5*kl", "names kl twice"),
    ("", "is empty"),
])
def test_bad_loss_specs_say_what_to_write(spec, fragment):
    with pytest.raises(ConfigError) as info:
        validate_loss_spec(spec)
    message = str(info.value)
    assert fragment in message and message.startswith("learner.loss ") and "kl+0.1*mse" in message


def test_config_validation_uses_the_loss_spec():
    config = load_config(None, ["learner.loss=kl+0.1*mse", "learner.student_temperature=0.01"])
    assert config.learner.loss == "kl+0.1*mse" and config.learner.student_temperature == 0.01
    assert load_config(None, []).learner.student_temperature is None
    with pytest.raises(ConfigError, match="names kl twice"):
        load_config(None, ["learner.loss=kl+kl"])
    with pytest.raises(ConfigError, match="learner.student_temperature must be > 0"):
        load_config(None, ["learner.student_temperature=0"])


def test_student_output_kind_follows_what_the_loss_regresses():
    assert student_output_kind("mse", "q") == "q"
    assert student_output_kind("mse+0.5*maxgap", "q") == "q"
    assert student_output_kind("kl+0.1*mse", "q") == "logits"
    assert student_output_kind("nll", "q") == "logits"
    assert student_output_kind("mse", "logits") == "logits"
    assert student_output_kind("adv", "q") == "q" and student_output_kind("adv+mse", "q") == "q"
    assert student_output_kind("mi", "q") == "logits" and student_output_kind("adv+0.1*mi", "q") == "logits"
