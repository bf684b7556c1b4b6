"""A head killed with SIGKILL leaves no process behind, and its resume loses at most one snapshot
interval, counts the wall budget on and logs no step twice (issue 16)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd_system.launch.config import HeadConfig
from kd_system.launch.watchdog import Watchdog
from kd_system.processes import cmdline, descendants, stat, table as process_table

SNAPSHOT_EVERY_S = HeadConfig.model_fields["snapshot_every_s"].default
SLACK_S = 5.0  # a snapshot waits for the learner's call in flight (1 s) and the head's loop on a busy machine


def _cmdline(pid: int) -> str:
    return cmdline(pid).replace(b"\0", b" ").decode(errors="replace")


def processes_of(run_pid: int) -> dict[int, int]:
    """pid -> start ticks of the run's processes: its descendants (Ray, its workers, redis-server,
    the watchdog), and whatever names its Ray session directory. Never anyone else's."""
    table = process_table()
    mine = {run_pid} | descendants(run_pid, table)
    sessions = {m for pid in mine for m in re.findall(r"--session[-_]dir=(\S+)", _cmdline(pid))}
    mine |= {pid for pid in table for s in sessions if re.search(re.escape(s) + r"(/|\s|$)", _cmdline(pid))}
    return {pid: table[pid][1] for pid in mine - {run_pid} if pid in table}


def alive(processes: dict[int, int]) -> dict[int, str]:
    return {pid: _cmdline(pid)[:100] for pid, start in processes.items() if (stat(pid) or (0, None))[1] == start}


def assert_all_end(processes: dict[int, int], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(processes), f"left behind: {alive(processes)}"


def sleeper(*args: str, env: dict[str, str] | None = None, title: str = "ray::Sleeper") -> subprocess.Popen:
    """A stand-in for a Ray process (titled ray::..., as Ray's workers retitle themselves; title ""
    for any other program): sleeps, with ``args`` on its command line."""
    code = "import os, time; p = os.environ.get('OPEN'); f = p and open(p, 'w'); time.sleep(60)"
    argv0 = ["-a", title] if title else []
    return subprocess.Popen(["bash", "-c", f'exec {" ".join(argv0)} "$0" "$@"', sys.executable, "-c", code, *args],
                            env={**os.environ, **(env or {})})


def test_the_watchdog_ends_its_session_only_and_only_unless_told_clean(tmp_path):
    session = tmp_path / "session_2026-12-02_07-35-05_753161_24"
    (session / "logs").mkdir(parents=True)
    (tmp_path / "session_2026-12-02_07-35-05_753161_245").mkdir()  # another session, its name a prefix
    ours = [sleeper(f"--session-dir={session}"), sleeper(env={"OPEN": str(session / "logs" / "worker.out")}),
            sleeper(f"--log-dir={session}/logs")]
    theirs = [sleeper(f"--session-dir={session}5"), sleeper(str(tmp_path)),
              # not Ray's: a `tail -f` of a worker log names the session and holds a file in it
              sleeper(f"{session}/logs/worker.err", env={"OPEN": str(session / "logs" / "tail.out")}, title="")]
    listed = sleeper()  # one Ray listed when it started
    try:
        time.sleep(1)  # the sleepers have opened their files
        clean = Watchdog(str(session), [listed.pid])
        clean.close(clean=True)
        assert all(p.poll() is None for p in [*ours, *theirs, listed])
        watchdog = Watchdog(str(session), [listed.pid])
        time.sleep(1)  # it has noted the listed process's start time
        os.kill(watchdog.process.pid, signal.SIGINT)  # Ctrl-C in the terminal: the run process handles it
        watchdog.close(clean=False)  # as if the run process had died
        assert watchdog.process.returncode == 0
        assert all(p.wait(timeout=5) is not None for p in [*ours, listed])
        assert all(p.poll() is None for p in theirs)
    finally:
        for process in [*ours, *theirs, listed]:
            process.kill()
            process.wait()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_killed_head_leaves_nothing_and_its_resume_loses_at_most_one_snapshot_interval(tmp_path):
    runs = tmp_path / "runs"
    # No target in the first session, so it is still training when killed; the resume restores the
    # default. The wall budget is the run's, over both sessions, each with Ray's start-up (~10-20 s here).
    command = [sys.executable, "-m", "kd_system.cli", "run", "--set", f"head.runs_dir={runs}",
               "--set", "head.max_wall_s=90", "--set", "head.eval_episodes=5", "--set", "head.final_eval_episodes=10",
               "--set", "head.target_score=null"]
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 150
        while not list(runs.glob("*/checkpoints/update-*[0-9]")) and time.monotonic() < deadline:
            assert first.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
            time.sleep(0.2)
        assert list(runs.glob("*/checkpoints/update-*[0-9]")), "no snapshot appeared"
        time.sleep(SNAPSHOT_EVERY_S / 2)  # mid-interval: work since the snapshot is at stake
        started = processes_of(first.pid)
        names = " ".join(_cmdline(pid) for pid in started)
        killed_at = time.time()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert "raylet" in names and "redis-server" in names and "kd_system.launch.watchdog" in names
    assert_all_end(started, within_s=10)
    assert "ended" in (tmp_path / "first.err").read_text()  # the watchdog's word

    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    state = json.loads((run_dir / "run_state.json").read_text())
    latest = sorted(p for p in (run_dir / "checkpoints").iterdir() if not p.name.endswith(".partial"))[-1]
    saved = json.loads((latest / "counters.json").read_text())
    assert state["snapshot"] == latest.name and state["updates"] == saved["updates"]
    learned = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "learner"]
    assert max(r["step"] for r in learned) > saved["updates"]  # the learner had trained on since
    # the snapshot holds every update made up to one snapshot interval before the kill
    assert saved["updates"] >= max((r["step"] for r in learned if r["time"] <= killed_at - SNAPSHOT_EVERY_S - SLACK_S),
                                   default=0)

    target = HeadConfig.model_fields["target_score"].default
    resume = [sys.executable, "-m", "kd_system.cli", "run", "--resume", str(run_dir),
              "--set", f"head.target_score={target}"]
    with open(tmp_path / "second.err", "w") as err:
        second = subprocess.Popen(resume, stdout=subprocess.DEVNULL, stderr=err)
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 300
        while second.poll() is None and time.monotonic() < deadline:
            seen |= processes_of(second.pid)  # the processes come and go: note every one seen
            time.sleep(1)
    finally:
        if second.poll() is None:
            second.kill()
    stderr = (tmp_path / "second.err").read_text()
    assert second.returncode == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert f"resumed from {latest} at update {saved['updates']}" in stderr
    assert_all_end(seen, within_s=10)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] is True and summary["normalized_score"] >= target
    # the wall time (and so head.max_wall_s) counts on from the first session's last record
    assert summary["wall_s"] - summary["session_wall_s"] >= state["wall_s"] - 0.01
    final = json.loads((run_dir / "run_state.json").read_text())
    final_saved = json.loads((run_dir / "checkpoints" / final["snapshot"] / "counters.json").read_text())
    assert final["updates"] == final_saved["updates"] == summary["learner_updates"]
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "learner"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no range of steps twice
