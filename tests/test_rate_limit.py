"""The samples-per-insert limiter: pure arithmetic, the deadlock check, and both sides waiting
for real in-process components against a real redis-server."""
import numpy as np
import pytest
import torch

from kd_system.actors.collector import Collector, CollectorSettings
from kd_system.config import LearnerConfig, load_config
from kd_system.errors import ConfigError
from kd_system.learner.learner import Learner, LearnerTask
from kd_system.policies.networks import build_network, count_parameters
from kd_system.policies.files import PolicyBundle, PolicySpec
from kd_system.replay.rate_limit import SampleToInsertLimiter, check_deadlock_free
from kd_system.replay.connection import StoreAddress
from kd_system.replay.table import ReplayTable
from kd_system.types import ChunkMeta, LabelledChunk, LabelledStates

NET = {"kind": "mlp", "hidden": [8], "activation": "relu"}


def test_learner_side_waits_for_min_size_then_keeps_the_ratio():
    limiter = SampleToInsertLimiter(min_size_to_sample=100, samples_per_insert=2.0)
    assert not limiter.can_sample(inserted=99, sampled=0, batch_size=1)
    # slack = 2 * (150 - 100) - 60 = 40: a batch of 40 fits exactly, 41 does not
    assert limiter.can_sample(150, 60, 40) and not limiter.can_sample(150, 60, 41)
    assert limiter.can_insert(10**9, 0, 10**6)  # no error_buffer: actors never wait


def test_actor_side_waits_when_the_learner_falls_behind():
    limiter = SampleToInsertLimiter(100, 2.0, error_buffer=50.0)
    # slack = 2 * (120 - 100) - 10 = 30; inserting 10 states adds 20 -> 50 <= 50, 11 -> 52 > 50
    assert limiter.can_insert(120, 10, 10) and not limiter.can_insert(120, 10, 11)
    # the learner may now run 50 ahead: slack 30 - 80 = -50 >= -50
    assert limiter.can_sample(120, 10, 80) and not limiter.can_sample(120, 10, 81)
    assert limiter.can_insert(50, 10**6, 10**6)  # before min size, inserting is the only way on


def test_deadlock_check_needs_room_for_one_batch_and_one_write():
    limiter = SampleToInsertLimiter(1000, 4.0, error_buffer=1000.0)
    check_deadlock_free(limiter, batch_size=256, write_states=436, capacity_states=10_000)  # (256+4*436)/2 = 1000
    with pytest.raises(ConfigError, match="error_buffer >= 1000.5"):
        check_deadlock_free(limiter, batch_size=257, write_states=436, capacity_states=10_000)
    with pytest.raises(ConfigError, match="min_size_to_sample"):
        check_deadlock_free(SampleToInsertLimiter(20_000, 1.0), 256, 256, capacity_states=10_000)


def test_every_state_of_the_band_lets_one_side_move():
    # Exhaustively: with the minimum buffer the check allows, no (inserted, sampled) blocks both.
    batch, write, spi = 32, 48, 1.5
    limiter = SampleToInsertLimiter(64, spi, error_buffer=(batch + spi * write) / 2)
    for inserted in range(64, 400, 8):
        for sampled in range(0, 700, 4):
            assert limiter.can_sample(inserted, sampled, batch) or limiter.can_insert(inserted, sampled, write)


def test_config_refuses_a_deadlocking_limiter():
    with pytest.raises(ConfigError, match="would deadlock"):
        load_config(None, ["limiter.error_buffer=100"])
    load_config(None, ["limiter.error_buffer=5000", "limiter.samples_per_insert=8"])


@pytest.fixture
def address(redis_url, run_id):
    address = StoreAddress(url=redis_url, run_id=run_id, capacity_states=4096, chunk_states=128)
    yield address
    ReplayTable(address).clear()


@pytest.fixture
def teacher() -> PolicyBundle:
    torch.manual_seed(0)
    module = build_network(NET, (4,), 2)
    return PolicyBundle.from_module(PolicySpec("teacher", "CartPole-v1", (4,), "float32", 2, "q", NET,
                                               count_parameters(module)), module)


def test_actors_hold_back_until_the_learner_samples(address, teacher):
    limiter = SampleToInsertLimiter(256, 1.0, error_buffer=200.0)
    settings = CollectorSettings(actor_id=0, env_id="CartPole-v1", num_envs=4, epsilon=0.0, chunk_states=128,
                                 chunks_per_write=1, torch_threads=1, seed=0, limiter=limiter)
    collector = Collector(settings, address, teacher)
    store = ReplayTable(address)
    # below 256 writes always go in; then while (inserted - 256) - sampled + 128 <= 200:
    # at 256 -> 128 (write), at 384 -> 256 (wait)
    first = collector.collect(0.5)
    assert first.states_written == 384 and first.time_wait_limiter_s > 0
    assert collector.collect(0.3).states_written == 384
    learner_side = ReplayTable(address, limiter)
    for _ in range(4):  # the learner consumed 256 samples: at 384 -> 0, at 512 -> 128, at 640 -> 256
        assert learner_side.sample(64, np.random.default_rng(0)) is not None
    assert collector.collect(0.5).states_written == 640
    collector.close()


def test_learner_stops_at_the_replay_ratio(address, teacher):
    store = ReplayTable(address)
    rng = np.random.default_rng(0)
    for _ in range(4):
        store.insert([LabelledChunk(LabelledStates(rng.normal(size=(128, 4)).astype(np.float32),
                                                   rng.normal(size=(128, 2)).astype(np.float32),
                                                   np.zeros(128, np.int32)), ChunkMeta(actor_id=0))])
    student = PolicySpec("student", "CartPole-v1", (4,), "float32", 2, "logits", NET)
    learner = Learner(LearnerConfig(batch_size=64), [LearnerTask(address, student, "q")], SampleToInsertLimiter(256, 1.0))
    report = learner.train(0.5)
    # 512 written, min size 256, one sample per insert: 256 samples = exactly 4 batches of 64
    assert report.updates == 4 and report.wait_limiter_frac > 0.5
    assert store.limiter_counts() == (512, 256)
    learner.close()


def test_table_verbs_wait_inside_for_the_limiter(address):
    """Insert and sample wait inside the table, up to their timeout: callers write no wait loops."""
    limiter = SampleToInsertLimiter(256, 1.0, error_buffer=200.0)
    learner_side, actor_side = ReplayTable(address, limiter), ReplayTable(address, limiter)
    rng = np.random.default_rng(0)

    def chunk():
        return LabelledChunk(LabelledStates(rng.normal(size=(128, 4)).astype(np.float32),
                                            rng.normal(size=(128, 2)).astype(np.float32),
                                            np.zeros(128, np.int32)), ChunkMeta(actor_id=0))

    assert learner_side.sample(64, rng, timeout_s=0.05) is None and learner_side.held_by_limiter  # below min size
    assert [actor_side.insert([chunk()]) for _ in range(3)] == [[0], [1], [2]]  # 384 in: (384 - 256) + 128 > 200
    assert actor_side.insert([chunk()], timeout_s=0.05) == [] and actor_side.wait_insert_s >= 0.05
    assert actor_side.limiter_counts() == (384, 0)
    batches = [learner_side.sample(64, rng, timeout_s=1.0) for _ in range(4)]
    assert all(len(batch) == 64 for batch in batches) and not learner_side.held_by_limiter
    assert actor_side.limiter_counts() == (384, 256)
    assert actor_side.insert([chunk()], timeout_s=1.0) == [3]  # the learner's samples let the actor in
    for table in (learner_side, actor_side):
        table.close()
