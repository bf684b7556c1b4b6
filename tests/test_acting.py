"""Who acts: teacher-, student- and mixed collection, with who acted recorded in every chunk."""
import numpy as np
import pytest
import redis
import torch

from kd_system.actors.behaviour import TeacherShareSchedule
from kd_system.actors.collector import Collector, CollectorSettings
from kd_system.policies.networks import build_network, count_parameters
from kd_system.policies.files import PolicyBundle, PolicySpec, module_to_bytes
from kd_system.replay.channels import WeightsChannel
from kd_system.replay.connection import StoreAddress
from kd_system.replay.table import ReplayTable
from kd_system.replay.codec import decode_chunk

NET = {"kind": "mlp", "hidden": [8], "activation": "relu"}
STUDENT = PolicySpec("student", "CartPole-v1", (4,), "float32", 2, "logits", NET)


def always(action: int) -> torch.nn.Module:
    """A network whose greedy action is ``action`` on every CartPole state."""
    module = build_network(NET, (4,), 2)
    with torch.no_grad():
        for param in module.parameters():
            param.zero_()
        list(module.parameters())[-1][action] = 10.0  # the output bias
    return module


@pytest.fixture
def address(redis_url, run_id):
    address = StoreAddress(url=redis_url, run_id=run_id, capacity_states=8192, chunk_states=128)
    yield address
    ReplayTable(address).clear()


@pytest.fixture
def teacher() -> PolicyBundle:
    module = always(1)
    return PolicyBundle.from_module(PolicySpec("teacher", "CartPole-v1", (4,), "float32", 2, "q", NET,
                                               count_parameters(module)), module)


def chunk_metas(address: StoreAddress) -> list[dict]:
    client = redis.Redis.from_url(address.url)
    keys = sorted(client.keys(f"kd:{address.run_id}:slot:*"))
    return [decode_chunk(client.get(key))[0] for key in keys]


def collect(address, teacher, acting: str, **settings) -> np.ndarray:
    values = dict(actor_id=3, env_id="CartPole-v1", num_envs=4, epsilon=0.0, chunk_states=128,
                  chunks_per_write=1, torch_threads=1, seed=5, acting=acting, weights_refresh_steps=1)
    collector = Collector(CollectorSettings(**(values | settings)), address, teacher, STUDENT)
    collector.collect(0.5)
    collector.close()
    return ReplayTable(address).sample(2048, np.random.default_rng(0)).action


def test_teacher_driven_chunks_say_so(address, teacher):
    actions = collect(address, teacher, "teacher")
    assert (actions == 1).all()
    metas = chunk_metas(address)
    assert metas and all(m["behaviour"] == "teacher" and m["policy_version"] == -1 for m in metas)
    assert all(m["actor_id"] == 3 and m["teacher_share"] == 1.0 for m in metas)


def test_student_driven_acts_with_the_newest_published_weights(address, teacher):
    WeightsChannel(address).publish(7, module_to_bytes(always(0)))
    actions = collect(address, teacher, "student")
    assert (actions == 0).all()  # the student acted; every state is still teacher-labelled
    assert all(m["behaviour"] == "student" and m["policy_version"] == 7 for m in chunk_metas(address))


def test_student_picks_up_weights_published_mid_run(address, teacher):
    weights = WeightsChannel(address)
    weights.publish(7, module_to_bytes(always(0)))
    settings = CollectorSettings(actor_id=0, env_id="CartPole-v1", num_envs=4, epsilon=0.0, chunk_states=128,
                                 chunks_per_write=1, torch_threads=1, seed=1, acting="student", weights_refresh_steps=1)
    collector = Collector(settings, address, teacher, STUDENT)
    collector.collect(0.2)
    weights.publish(9, module_to_bytes(always(1)))
    report = collector.collect(0.3)
    collector.close()
    assert report.policy_version == 9
    versions = [m["policy_version"] for m in chunk_metas(address)]
    assert set(versions) <= {7, 9} and 9 in versions


def test_mixed_collection_follows_the_teacher_share(address, teacher):
    WeightsChannel(address).publish(500, module_to_bytes(always(0)))
    schedule = TeacherShareSchedule(start=1.0, end=0.0, decay_updates=1000)  # beta = 0.5 at version 500
    actions = collect(address, teacher, "mixed", teacher_share=schedule)
    assert 0.4 < np.mean(actions == 1) < 0.6
    metas = chunk_metas(address)
    assert all(m["behaviour"] == "mixed" and m["teacher_share"] == pytest.approx(0.5) for m in metas)


def test_teacher_share_schedule_is_linear_then_flat():
    schedule = TeacherShareSchedule(start=0.9, end=0.1, decay_updates=400)
    assert schedule.at(0) == pytest.approx(0.9)
    assert schedule.at(100) == pytest.approx(0.7)
    assert schedule.at(400) == pytest.approx(0.1) and schedule.at(10_000) == pytest.approx(0.1)
