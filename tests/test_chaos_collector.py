"""A collector that dies is replaced, and the replacement plays fresh episodes: its envs get seeds
no earlier incarnation of any actor used (issue 16)."""
import json
import os
import subprocess
import sys
import time

import pytest

from kd_system.config import load_config
from kd_system.launch.topology import collector_settings
from tests.chaos import ChaosRun, kill, wait_for


def test_replacement_collectors_get_seeds_no_other_collector_uses():
    config = load_config(None, ["actors.num_actors=3", "actors.envs_per_actor=16"])
    envs = config.actors.envs_per_actor
    used = set()
    for actor in range(config.actors.num_actors):
        for incarnation in range(4):
            seed = collector_settings(config, actor, incarnation=incarnation).seed
            seeds = set(range(seed, seed + envs))  # sub-env i of a vector env is seeded seed + i
            assert not seeds & used
            used |= seeds


@pytest.mark.slow
def test_killing_a_collector_mid_run_is_survived_with_a_fresh_seed(tmp_path):
    with ChaosRun(tmp_path, "head.target_score=null", "head.max_wall_s=45") as run:
        # a collector of this run (never another session's) that is already collecting
        assert wait_for(lambda: any(run.runs.rglob("metrics.jsonl")), 60), run.console()[-3000:]
        victim = run.newest("ray::Collector")
        time.sleep(3)
        kill(victim)
        console, summary = run.ended(0, timeout_s=240)
    assert "starting replacement #1 with fresh env seeds" in console
    assert summary["learner_updates"] > 0 and summary["normalized_score"] > 0


@pytest.mark.slow
def test_garbage_and_pickles_in_replay_slots_are_skipped_counted_and_the_run_goes_on(tmp_path):
    import pickle

    import redis

    from kd_system.replay.redis_server import LocalRedisServer

    runs, log = tmp_path / "runs", tmp_path / "stderr.log"
    # the run's own private server has a random password: give it one the test can write to
    with LocalRedisServer() as server:
        command = [sys.executable, "-m", "kd_system.cli", "run", "--set", f"head.runs_dir={runs}",
                   "--set", "head.target_score=null", "--set", "head.max_wall_s=40", "--set", "head.eval_episodes=5",
                   "--set", "head.final_eval_episodes=10", "--set", "store.max_corrupt_share=0.5",
                   "--set", "head.run_name=spoiled", "--set", "store.redis_url=env:KD_TEST_REDIS_URL"]
        client = redis.Redis.from_url(server.url)
        with open(log, "w") as err:
            run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                   env={**os.environ, "KD_TEST_REDIS_URL": server.url})
            try:
                deadline = time.monotonic() + 90
                while not client.get("kd:spoiled:chunks") and time.monotonic() < deadline:
                    time.sleep(0.5)  # the first chunks are in: now spoil some
                assert client.get("kd:spoiled:chunks"), log.read_text()[-2000:]
                # random bytes, and a pickle that would run code if anything unpickled it
                spoilers = [os.urandom(4096), pickle.dumps(eval), pickle.dumps({"obs": [1.0] * 64})]
                for _ in range(15):  # spoil the newest slots for a while: the learner is sure to draw some
                    written = int(client.get("kd:spoiled:chunks") or 0)
                    for back, spoiler in enumerate(spoilers, start=1):
                        client.set(f"kd:spoiled:slot:{(written - back) % 782}", spoiler)  # 200k / 256 slots
                    time.sleep(1)
                run.wait(timeout=240)
            finally:
                if run.poll() is None:
                    run.kill()
        client.close()
    stderr = log.read_text()
    assert run.returncode == 0, stderr[-3000:]
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["corrupt_chunks_skipped"] >= 1 and "failed to decode" in stderr
    assert summary["learner_updates"] > 0
