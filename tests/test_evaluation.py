"""Evaluation: the paired confidence interval by hand, and the real Evaluator on CartPole-v1
with the shipped teacher."""
import math

import numpy as np
import pytest
import torch

from kd_system.config import resolve_teacher_path
from kd_system.evaluation.evaluator import Evaluator
from kd_system.policies.networks import build_network, count_parameters
from kd_system.policies.files import PolicyBundle, PolicySpec, load_bundle
from kd_system.evaluation.scores import disagreement_margin, greedy_agreement, mean_score_ci95, normalized_score, normalized_score_ci95, paired_score_error

EPISODES = 4


def test_ci_is_a_paired_t_interval_by_hand():
    # teacher 100 every episode, random 0: gap 100; d = (S - T) / 100 = [-0.1, 0, 0.1, 0]
    # mean 0 -> score 1; sd = sqrt((0.01 + 0 + 0.01 + 0) / 3) = 0.0816497; se = sd / sqrt(4) = 0.0408248
    # t(0.975, 3) = 3.182446 -> half width 0.129923 -> [0.870077, 1.129923]
    low, high = normalized_score_ci95(np.array([90, 100, 110, 100]), np.full(4, 100.0), np.zeros(4))
    assert (low, high) == pytest.approx((0.870077, 1.129923), abs=1e-6)


def test_ci_uses_the_mean_gap_and_is_centred_on_the_score():
    # T = [200, 220], R = [10, 30]: gap 210 - 20 = 190. S = [181, 220]: d = [-19/190, 0] = [-0.1, 0]
    # score = 1 - 0.05 = 0.95 = (200.5 - 20) / 190; sd = 0.0707107, se = 0.05, t(0.975, 1) = 12.706205
    # half width 0.635310 -> [0.314690, 1.585310]: two episodes say little
    student, teacher, random = np.array([181.0, 220.0]), np.array([200.0, 220.0]), np.array([10.0, 30.0])
    assert normalized_score(student.mean(), teacher.mean(), random.mean()) == pytest.approx(0.95)
    assert normalized_score_ci95(student, teacher, random) == pytest.approx((0.314690, 1.585310), abs=1e-6)


def test_ci_pairs_episodes_so_a_shared_seed_effect_cancels():
    # The student trails the teacher by exactly 10 on every seed, however hard the seed: the paired
    # differences are all -10 / 100, so the interval has zero width at 0.9.
    teacher = np.array([150.0, 60.0, 100.0])
    assert normalized_score_ci95(teacher - 10, teacher, np.full(3, 3.3333333)) == pytest.approx((0.9, 0.9))


def test_ci_is_undefined_for_one_episode_or_no_gap_and_refuses_unpaired_returns():
    assert all(math.isnan(b) for b in normalized_score_ci95(np.array([5.0]), np.array([9.0]), np.array([1.0])))
    assert all(math.isnan(b) for b in normalized_score_ci95(np.ones(3), np.full(3, 2.0), np.full(3, 2.0)))
    with pytest.raises(ValueError, match="equal episode counts"):
        normalized_score_ci95(np.ones(3), np.ones(4), np.zeros(4))


def test_paired_error_is_the_ci_s_standard_error():
    # the first case above: se 0.0408248 on 3 degrees of freedom
    error, dof = paired_score_error(np.array([90, 100, 110, 100]), np.full(4, 100.0), np.zeros(4))
    assert error == pytest.approx(0.0408248, abs=1e-7) and dof == 3


def test_mean_over_tasks_ci_by_hand():
    # CartPole-like task with no spread (se 0) and one with se 0.01 on 99 dof: the mean's se is
    # sqrt(0 + 0.0001) / 2 = 0.005; Welch dof = 0.0001^2 / (0.0001^2 / 99) = 99; t(0.975, 99) = 1.984217
    # -> half width 0.009921 around 0.99
    assert mean_score_ci95([1.0, 0.98], [0.0, 0.01], [29, 99]) == pytest.approx((0.980079, 0.999921), abs=1e-6)
    # se 0.01 on 9 dof and 0.02 on 19: variance sum 5e-4, Welch dof = 5e-4^2 / (1e-8/9 + 1.6e-7/19) = 26.227,
    # t(0.975, 26.227) = 2.054664 -> half width 2.054664 * sqrt(5e-4) / 2 = 0.022972 around 1.01
    assert mean_score_ci95([1.0, 1.02], [0.01, 0.02], [9, 19]) == pytest.approx((0.987028, 1.032972), abs=1e-6)
    assert mean_score_ci95([1.0, 1.0], [0.0, 0.0], [9, 9]) == (1.0, 1.0)
    assert all(math.isnan(b) for b in mean_score_ci95([1.0, 1.0], [math.nan, 0.0], [9, 9]))


def test_disagreement_margin_by_hand():
    teacher = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 2.9], [0.5, 0.0]])
    # teacher's best-over-second gaps 1.0, 2.0, 0.1, 0.5: median 0.75. The student differs only on
    # row 2, where the teacher prefers its action by 3.0 - 2.9 = 0.1 -> 0.1 / 0.75
    student = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [2.0, 1.0]])
    assert disagreement_margin(student, teacher) == pytest.approx(0.1 / 0.75)
    assert math.isnan(disagreement_margin(teacher, teacher))  # agrees everywhere: no disagreement to weigh


def test_greedy_agreement_by_hand():
    # argmax student [1, 0, 1], teacher [1, 1, 1]: 2 of 3 agree
    student = np.array([[0.0, 1.0], [2.0, 1.0], [-1.0, 0.0]])
    teacher = np.array([[0.0, 5.0], [0.0, 5.0], [0.0, 5.0]])
    assert greedy_agreement(student, teacher) == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def teacher() -> PolicyBundle:
    return load_bundle(resolve_teacher_path("shipped:cartpole-v1"))


def always_left_student() -> PolicyBundle:
    """A linear student with zero weights and biases [1, 0]: logits [1, 0] everywhere, always action 0."""
    network = {"kind": "mlp", "hidden": [], "activation": "relu"}
    module = build_network(network, (4,), 2)
    with torch.no_grad():
        module.layers[0].weight.zero_()
        module.layers[0].bias.copy_(torch.tensor([1.0, 0.0]))
    spec = PolicySpec("student", "CartPole-v1", (4,), "float32", 2, "logits", network, count_parameters(module))
    return PolicyBundle.from_module(spec, module)


def test_teacher_as_its_own_student_scores_one_with_zero_kl(teacher):
    assert teacher.spec.output_kind == "q"
    evaluator = Evaluator("CartPole-v1", teacher, heldout_states=500)
    base = evaluator.baselines(EPISODES, seed=0)
    assert base.kl_temperature == 0.01 and base.heldout_states == 500
    report = evaluator.evaluate(teacher, EPISODES, seed=0)
    assert report.student_returns == evaluator.reference.teacher.tolist()  # same seeds, same episodes
    assert report.normalized_score == pytest.approx(1.0)
    low, high = report.normalized_score_ci95
    assert low <= 1.0 <= high
    assert (report.normalized_score_ci95_low, report.normalized_score_ci95_high) == (low, high)
    assert report.agreement_teacher_states == 1.0 and report.agreement_student_states == 1.0
    # a q student is read at the teacher's temperature: the same Q-values give the same softmax
    assert report.kl_teacher_states == pytest.approx(0.0, abs=1e-6)
    assert report.kl_student_states == pytest.approx(0.0, abs=1e-6)


def test_evaluate_pairs_with_its_own_seeds_when_baselines_used_others(teacher):
    evaluator = Evaluator("CartPole-v1", teacher, heldout_states=200)
    evaluator.baselines(EPISODES, seed=0)
    report = evaluator.evaluate(teacher, 2, seed=77)
    assert (evaluator.reference.episodes, evaluator.reference.seed) == (2, 77)
    assert report.normalized_score == pytest.approx(1.0) and report.normalized_score_ci95 == pytest.approx([1.0, 1.0])
    assert len(evaluator.heldout_obs) == 200  # the held-out states still come from baselines()


def test_kl_depends_on_reading_the_student_at_the_learner_temperature(teacher):
    # Reading the teacher's Q-values as logits (student temperature 1) against softmax(Q / 0.01)
    # is not the same distribution: the KL is positive although the greedy actions all agree.
    evaluator = Evaluator("CartPole-v1", teacher, heldout_states=300, student_temperature=1.0)
    evaluator.baselines(2, seed=0)
    report = evaluator.evaluate(teacher, 2, seed=0)
    assert report.agreement_teacher_states == 1.0 and report.kl_teacher_states > 0.01
    assert math.isnan(report.disagreement_margin_teacher_states)


def test_a_bad_student_is_told_apart(teacher):
    evaluator = Evaluator("CartPole-v1", teacher, heldout_states=500)
    evaluator.baselines(EPISODES, seed=0)
    report = evaluator.evaluate(always_left_student(), EPISODES, seed=0)
    low, high = report.normalized_score_ci95
    assert report.student_return_mean < 20 and low <= report.normalized_score <= high < 0.1
    assert report.agreement_teacher_states < 1.0 and report.agreement_student_states < 1.0
    # student softmax([1, 0]) = [0.731, 0.269]; the KL is at most -ln 0.269 = 1.313 (teacher sure of action 1)
    for key in ("kl_teacher_states", "kl_student_states"):
        assert 0.0 < getattr(report, key) <= 1.3133
    # it differs where the teacher is sure (pushing right), not only at the teacher's near-ties
    assert report.disagreement_margin_teacher_states > 0.2


def test_run_episodes_plays_the_epsilon_it_is_given_on_the_same_games():
    from kd_system.evaluation.episodes import run_episodes

    always_left = lambda obs: np.zeros(len(obs), dtype=np.int64)  # noqa: E731
    protocol = run_episodes("CartPole-v1", always_left, 6, 5)  # classic control: played greedily
    assert np.array_equal(run_episodes("CartPole-v1", always_left, 6, 5, epsilon=0.0).returns, protocol.returns)
    random = run_episodes("CartPole-v1", always_left, 6, 5, epsilon=1.0)
    assert not np.array_equal(random.returns, protocol.returns)
    assert np.array_equal(run_episodes("CartPole-v1", always_left, 6, 5, epsilon=1.0).returns, random.returns)
