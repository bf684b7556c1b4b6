"""The learner's pool of decoded chunks (replay/pool.py) on a real Redis: batches come only from
stored states, whole chunks are decoded at the refresh rate asked for, the limiter's count is
published even for batches that read no slot, a wiped store empties the pool, and a learner
configured with a pool trains from it."""
from __future__ import annotations

import numpy as np
import pytest

from kd_system.replay.pool import DecodedPool
from kd_system.replay.rate_limit import SampleToInsertLimiter
from kd_system.replay.table import ReplayTable
from kd_system.replay.connection import StoreAddress
from kd_system.types import ChunkMeta, LabelledChunk, LabelledStates


def _chunk(first_id: int, n: int = 64) -> LabelledChunk:
    obs = np.zeros((n, 4), np.float32)
    obs[:, 0] = np.arange(first_id, first_id + n)  # a state id, to check what sampling returns
    return LabelledChunk(LabelledStates(obs, np.ones((n, 2), np.float32), np.arange(n, dtype=np.int32) % 2),
                         ChunkMeta(actor_id=0))


@pytest.fixture
def table(redis_url, run_id):
    limiter = SampleToInsertLimiter(min_size_to_sample=64, samples_per_insert=1e9)
    table = ReplayTable(StoreAddress(redis_url, run_id, 64 * 16, 64), limiter=limiter)
    table.insert([_chunk(64 * i) for i in range(16)])
    yield table
    table.clear()
    table.close()


def test_batches_come_from_stored_states_and_chunks_are_decoded_at_the_refresh_rate(table):
    pool, rng = DecodedPool(size=4, refresh=0.5), np.random.default_rng(0)
    ids = set()
    for _ in range(11):
        batch = table.sample(128, rng, pool=pool)
        ids |= set(batch.obs[:, 0].astype(int).tolist())
        assert len(batch) == 128 and len(pool.parts) == 4
        # batches that read no slot still publish the count the actors' inserts read
        assert table.limiter_counts()[1] == table.sampled
    assert ids <= set(range(64 * 16))
    assert pool.decoded == 4 + 5  # filled at once, then one chunk every second batch
    assert table.sampled == 11 * 128


def test_a_wiped_store_empties_the_pool(table):
    pool, rng = DecodedPool(size=4, refresh=1.0), np.random.default_rng(0)
    assert table.sample(32, rng, pool=pool) is not None
    table.clear()
    assert table.sample(32, rng, pool=pool) is None  # nothing stored: no stale chunk served
    table.insert([_chunk(10_000), _chunk(10_064)])  # past the limiter's min_size_to_sample again
    batch = table.sample(32, rng, timeout_s=1.0, pool=pool)
    assert batch is not None and set(batch.obs[:, 0].astype(int)) <= set(range(10_000, 10_128))


def test_bad_pool_settings_are_refused():
    with pytest.raises(ValueError):
        DecodedPool(size=0, refresh=1.0)
    with pytest.raises(ValueError):
        DecodedPool(size=4, refresh=0.0)


def test_auto_keeps_a_pool_on_a_gpu_only():
    import torch
    from kd_system.config import load_config
    from kd_system.errors import ConfigError
    from kd_system.learner.learner import GPU_POOL_CHUNKS, pool_chunks
    assert load_config(None).learner.decoded_pool_chunks == "auto"
    assert pool_chunks("auto", torch.device("cpu")) == 0
    assert pool_chunks("auto", torch.device("cuda")) == GPU_POOL_CHUNKS
    assert pool_chunks(4, torch.device("cuda")) == 4 and pool_chunks(0, torch.device("cuda")) == 0
    for bad in ("-1", "lots", "true"):
        with pytest.raises(ConfigError, match="learner.decoded_pool_chunks"):
            load_config(None, [f"learner.decoded_pool_chunks={bad}"])


@pytest.mark.slow
def test_a_run_whose_learner_samples_through_a_pool_reaches_its_target(tmp_path):
    import json
    import subprocess
    import sys

    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "kd_system.cli", "run", "--set", f"head.runs_dir={runs}",
               "--set", "learner.decoded_pool_chunks=8", "--set", "learner.pool_refresh_chunks=0.5",
               "--set", "head.final_eval_episodes=10"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = list(runs.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["normalized_score"] >= 0.95 and summary["learner_updates"] > 0
