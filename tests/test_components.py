"""The components in one process against a real redis-server: no Ray involved."""
import math

import numpy as np
import pytest
import torch

from kd_system.actors.collector import Collector, CollectorSettings
from kd_system.config import LearnerConfig
from kd_system.evaluation.evaluator import Evaluator, normalized_score
from kd_system.learner.learner import Learner, LearnerTask, learning_rate
from kd_system.policies.networks import build_network, count_parameters
from kd_system.policies.files import FrozenPolicy, PolicyBundle, PolicySpec
from kd_system.replay.rate_limit import SampleToInsertLimiter
from kd_system.replay.channels import WeightsChannel
from kd_system.replay.connection import StoreAddress
from kd_system.replay.table import ReplayTable

TEACHER_NET = {"kind": "mlp", "hidden": [32, 32], "activation": "relu"}
STUDENT_NET = {"kind": "mlp", "hidden": [16], "activation": "relu"}


@pytest.fixture
def teacher() -> PolicyBundle:
    torch.manual_seed(0)
    module = build_network(TEACHER_NET, (4,), 2)
    spec = PolicySpec("teacher", "CartPole-v1", (4,), "float32", 2, "q", TEACHER_NET, count_parameters(module))
    return PolicyBundle.from_module(spec, module)


@pytest.fixture
def address(redis_url, run_id) -> StoreAddress:
    address = StoreAddress(url=redis_url, run_id=run_id, capacity_states=4096, chunk_states=128)
    yield address
    ReplayTable(address).clear()


def collector_settings(**overrides) -> CollectorSettings:
    values = dict(actor_id=0, env_id="CartPole-v1", num_envs=4, epsilon=0.0, chunk_states=128,
                  chunks_per_write=1, torch_threads=1, seed=1)
    values.update(overrides)
    return CollectorSettings(**values)


def test_collector_labels_every_state_with_the_teacher(address, teacher):
    collector = Collector(collector_settings(), address, teacher)
    report = collector.collect(0.5)
    collector.close()
    store = ReplayTable(address)
    stats = store.stats()
    assert report.states_written == stats["states_written"] > 0
    assert report.states_written % 128 == 0
    assert report.env_steps >= report.states_written
    batch = store.sample(256, np.random.default_rng(0))
    assert batch.obs.shape == (256, 4) and batch.obs.dtype == np.float32
    assert batch.teacher_out.shape == (256, 2)
    expected = FrozenPolicy.from_bundle(teacher).outputs(batch.obs)
    np.testing.assert_allclose(batch.teacher_out, expected, rtol=1e-5, atol=1e-6)
    # epsilon 0: the acting action is the teacher's greedy action
    np.testing.assert_array_equal(batch.action, expected.argmax(axis=1))


def test_epsilon_one_acts_randomly(address, teacher):
    collector = Collector(collector_settings(epsilon=1.0), address, teacher)
    collector.collect(0.3)
    collector.close()
    batch = ReplayTable(address).sample(1024, np.random.default_rng(0))
    agreement = np.mean(batch.action == batch.teacher_out.argmax(axis=1))
    assert 0.3 < agreement < 0.7


def make_learner(address, teacher, **config) -> Learner:
    student_spec = PolicySpec("student", "CartPole-v1", (4,), "float32", 2, "logits", STUDENT_NET)
    cfg = LearnerConfig(batch_size=64, publish_every_updates=20, **config)
    return Learner(cfg, [LearnerTask(address, student_spec, teacher.spec.output_kind)], SampleToInsertLimiter(512, 32.0))


def test_learner_distils_from_the_store_and_publishes_weights(address, teacher):
    collector = Collector(collector_settings(), address, teacher)
    collector.collect(0.5)
    learner = make_learner(address, teacher, temperature=1.0)
    first = learner.train(0.5)
    later = learner.train(2.0)
    assert first.updates > 0 and later.updates > first.updates
    assert later.loss < first.loss
    published = WeightsChannel(address).fetch()
    assert published is not None and published[0] == learner.published_version > 0
    # state round trip: a new learner restored from the state produces the same outputs
    state = learner.get_state()
    clone = make_learner(address, teacher, temperature=1.0)
    clone.load_state([s.weights for s in state.students], state.optimizer, state.updates, state.samples)
    obs = torch.randn(8, 4)
    torch.testing.assert_close(clone.students[0](obs), learner.students[0](obs))
    assert clone.updates == learner.updates
    for component in (collector, learner, clone):
        component.close()


def test_learner_call_stops_at_the_update_the_head_names(address, teacher):
    collector = Collector(collector_settings(), address, teacher)
    collector.collect(0.5)
    learner = make_learner(address, teacher)
    assert learner.train(5.0, stop_at_updates=7).updates == 7
    assert learner.train(5.0, stop_at_updates=7).updates_in_call == 0  # already there: returns at once
    assert learner.train(5.0, stop_at_updates=12).updates == 12
    collector.close()
    learner.close()


def test_learner_bf16_autocast_trains_with_fp32_losses(address, teacher):
    """precision=bf16 runs the student's forward under autocast (here the CPU's); auto stays fp32 on CPU."""
    collector = Collector(collector_settings(), address, teacher)
    collector.collect(0.3)
    assert make_learner(address, teacher).autocast_dtype is None  # auto on CPU
    learner = make_learner(address, teacher, temperature=1.0, precision="bf16")
    reports = [learner.train(0.3) for _ in range(4)]  # the limiter caps updates at 32 samples per state
    losses = [r.loss for r in reports if r.loss is not None]
    assert reports[0].precision == "bf16" and reports[-1].updates > 0
    assert losses and all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in learner.parameters)  # master weights stay fp32
    for component in (collector, learner):
        component.close()


def test_learning_rate_schedule_by_hand():
    cosine = LearnerConfig(lr=1e-3, lr_final=1e-4, lr_decay_updates=100)
    # lr_final + (lr - lr_final) * (1 + cos(pi * t / 100)) / 2: 1e-3 at 0, halfway 5.5e-4 at 50, 1e-4 from 100 on
    assert [learning_rate(cosine, u) for u in (0, 50, 100, 500)] == pytest.approx([1e-3, 5.5e-4, 1e-4, 1e-4])
    assert learning_rate(cosine, 25) == pytest.approx(1e-4 + 0.45e-3 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(LearnerConfig(lr=3e-4), 10**6) == 3e-4


def test_learner_applies_the_schedule_to_its_optimizer(address, teacher):
    collector = Collector(collector_settings(), address, teacher)
    collector.collect(0.3)
    learner = make_learner(address, teacher, lr_final=1e-5, lr_decay_updates=10)
    report = learner.train(0.5)
    assert report.updates > 10  # past the decay: the last update ran at lr_final
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    for component in (collector, learner):
        component.close()


def test_learner_waits_for_min_states_instead_of_overfitting(address, teacher):
    learner = make_learner(address, teacher)
    report = learner.train(0.3)
    learner.close()
    assert report.updates_in_call == 0 and report.wait_limiter_frac > 0.5


def test_evaluator_scores_teacher_against_itself(teacher):
    evaluator = Evaluator("CartPole-v1", teacher, heldout_states=500)
    base = evaluator.baselines(episodes=5, seed=0)
    report = evaluator.evaluate(teacher, episodes=5, seed=0)
    assert report.student_return_mean == pytest.approx(base.teacher_return_mean)
    assert report.agreement_teacher_states == 1.0 and report.agreement_student_states == 1.0
    assert normalized_score(report.student_return_mean, base.teacher_return_mean, base.random_return_mean) \
        == pytest.approx(1.0)
