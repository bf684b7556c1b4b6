"""The learner and the evaluator are replaced when they die, as collectors are; a component that
keeps dying ends the run with a summary and exit 1 (issue 16). Real runs, real kill -9."""
import re
import shutil
import time

import pytest

from kd_system.launch.supervision import DeathLog, death_of
from kd_system.replay.redis_server import LocalRedisServer
from tests.chaos import ChaosRun, kill, wait_for


def test_a_component_that_dies_three_times_within_the_window_is_given_up_on():
    clock = iter([0.0, 10.0, 70.0, 71.0, 72.0, 73.0]).__next__
    deaths = DeathLog(max_deaths=3, window_s=60.0, clock=clock)
    assert not deaths.record("learner") and not deaths.record("learner")
    assert not deaths.record("learner")  # t=70: the death at t=0 is out of the window
    assert not deaths.record("collector 1")  # deaths are counted per component
    assert not deaths.record("learner")  # t=72: 70 and 72 in the window (10 is out)
    assert deaths.record("learner") and deaths.total == 6  # t=73: three within 60 s


def test_a_death_names_the_pid_and_address_ray_reports():
    message = "The actor died unexpectedly.\n\tclass_name: Learner\n\tpid: 4242\n\tip: 10.0.0.7\n"
    death = death_of("learner", RuntimeError(message))
    assert (death.pid, death.ip) == (4242, "10.0.0.7")
    assert "4242" in death.where() and "10.0.0.7" in death.where()


# The target is the default one; training on for two evaluations after it leaves time to kill.
# Snapshots every 500 updates bound what a learner death may lose.
MID_RUN = ("head.evals_after_target=2", "head.snapshot_every_updates=500", "head.max_wall_s=150")


def _reached_target(summary: dict) -> bool:
    return summary["normalized_score"] >= 1.0 and summary["stop_reason"].startswith("target score")


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["ray::Learner", "ray::Evaluator"])
def test_a_killed_learner_or_evaluator_is_replaced_and_the_run_reaches_its_target(tmp_path, victim):
    with ChaosRun(tmp_path, *MID_RUN) as run:
        run.wait_for_snapshot()
        kill(run.newest(victim))
        console, summary = run.ended(0)
    assert _reached_target(summary) and summary["component_deaths"] == 1
    if victim == "ray::Learner":
        lost = re.search(r"learner died \(its log: .+\); restarting it from update-\d+ \(update \d+; (\d+) updates lost\)",
                         console)
        assert lost, console[-3000:]
        assert int(lost.group(1)) <= 500 + 1  # one snapshot interval (a train call ends on the interval)
    else:
        assert re.search(r"evaluator 0 died \(its log: .+\); starting a replacement", console), console[-3000:]


@pytest.mark.slow
def test_a_learner_that_keeps_dying_ends_the_run_with_a_summary_and_exit_1(tmp_path):
    with ChaosRun(tmp_path, "head.target_score=null", "head.max_wall_s=150", "head.death_window_s=120") as run:
        run.wait_for_snapshot()
        killed = set()
        for _ in range(3):  # each replacement, once it is up
            pid = wait_for(lambda: (p := run.newest("ray::Learner", 60)) not in killed and p, 60)
            assert pid, run.console()[-3000:]
            kill(pid)
            killed.add(pid)
        console, summary = run.ended(1, timeout_s=180)
    failed = [line for line in console.splitlines() if line.startswith("kd-system: run failed:")]
    assert len(failed) == 1 and "learner died 3 times within 120 s" in failed[0] and "its log" in failed[0]
    assert summary["failure"].startswith("learner died 3 times")


@pytest.mark.slow
def test_a_killed_private_redis_server_is_restarted_and_the_run_reaches_its_target(tmp_path):
    with ChaosRun(tmp_path, *MID_RUN) as run:
        run.wait_for_snapshot()
        kill(run.newest(shutil.which("redis-server")))  # it retitles itself "<its path> 127.0.0.1:PORT"
        console, summary = run.ended(0)
    assert re.search(r"redis-server \(private, 127\.0\.0\.1:\d+\) died .*restarted it on the same port", console), \
        console[-3000:]
    assert _reached_target(summary)


@pytest.mark.slow
def test_a_users_redis_that_comes_back_within_reconnect_s_is_reconnected_to(tmp_path):
    with LocalRedisServer() as server:
        with ChaosRun(tmp_path, "store.redis_url=env:KD_TEST_REDIS_URL", *MID_RUN,
                      env={"KD_TEST_REDIS_URL": server.url}) as run:
            run.wait_for_snapshot()
            kill(server.pid)
            time.sleep(5)  # every component is now retrying
            server.restart()
            _, summary = run.ended(0)
    assert _reached_target(summary)


@pytest.mark.slow
def test_a_users_redis_gone_past_reconnect_s_ends_the_run_with_a_snapshot_and_a_summary(tmp_path):
    with LocalRedisServer() as server:
        with ChaosRun(tmp_path, "store.redis_url=env:KD_TEST_REDIS_URL", "head.target_score=null",
                      "head.max_wall_s=120", "store.reconnect_s=5", env={"KD_TEST_REDIS_URL": server.url}) as run:
            run.wait_for_snapshot()
            kill(server.pid)
            console, summary = run.ended(1, timeout_s=240)
    failed = [line for line in console.splitlines() if line.startswith("kd-system: run failed:")]
    assert len(failed) == 1 and "store.reconnect_s=5" in failed[0], console[-3000:]
    assert summary["failure"].startswith("the replay store failed") and summary["normalized_score"] is not None
    assert summary["last_snapshot_scored"] is True
