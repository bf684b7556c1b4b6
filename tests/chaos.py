"""Shared pieces of the chaos tests: start a real `kd-system run`, find its own processes (never
those of other tests' Ray sessions still winding down), kill one, and check what is left after."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from kd_system.processes import cmdline, descendants, stat, table

RUN = [sys.executable, "-m", "kd_system.cli", "run"]
QUICK = ["head.eval_episodes=5", "head.final_eval_episodes=10"]


def settings(runs: Path, *overrides: str) -> list[str]:
    args = [*RUN]
    for setting in (f"head.runs_dir={runs}", *QUICK, *overrides):
        args += ["--set", setting]
    return args


def started(pid: int) -> int:
    """The process's start time in clock ticks since boot; ValueError once it is gone."""
    state = stat(pid)
    if state is None:
        raise ValueError(f"process {pid} is gone")
    return state[1]


def _cmdline(pid: int) -> str:
    return cmdline(pid).replace(b"\0", b" ").decode(errors="replace")


def newest(pattern: str, run_pid: int) -> int | None:
    """The run's newest process whose command line starts with ``pattern``."""
    mine = []
    for pid in descendants(run_pid):
        try:
            if _cmdline(pid).startswith(pattern):
                mine.append((started(pid), pid))
        except (OSError, ValueError, IndexError):  # it ended meanwhile
            pass
    return max(mine)[1] if mine else None


def wait_for(condition, timeout_s: float, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    return None


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


class Family:
    """Every process the run started (Ray's, redis-server, their children), sampled while it runs:
    once the run is gone its orphans belong to init, so they can only be told apart beforehand."""

    def __init__(self, pid: int):
        self.pid, self.seen, self._stop = pid, {}, threading.Event()  # seen: pid -> start ticks
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            processes = table()
            self.seen.update({pid: processes[pid][1] for pid in descendants(self.pid, processes)})
            self._stop.wait(0.5)

    def leftovers(self, within_s: float = 10.0) -> dict[int, str]:
        """Those still alive ``within_s`` after the run ended (empty: it left nothing behind)."""
        self._stop.set()
        self._thread.join()

        def alive() -> dict[int, str]:  # a pid reused since is not ours: Family keeps start times too
            return {pid: _cmdline(pid)[:120] for pid, start in self.seen.items()
                    if (state := stat(pid)) is not None and state[1] == start}
        wait_for(lambda: not alive(), within_s)
        return alive()


def now_ticks() -> int:
    """Now, in the clock ticks /proc/PID/stat counts start times in."""
    with open("/proc/uptime") as uptime:
        return int(float(uptime.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def start(command: list[str], log: Path) -> tuple[subprocess.Popen, int, Family]:
    """The run, the clock ticks it started at, and the watch on its processes."""
    ticks = now_ticks()
    with open(log, "w") as out:
        run = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, text=True)
    return run, ticks, Family(run.pid)


class ChaosRun:
    """A real ``kd-system run`` in ``tmp_path`` to break: ``with ChaosRun(tmp_path, *sets) as run``;
    ``run.ended(status)`` waits for it and checks what every fault must leave (the exit status, no
    traceback, a summary, nothing of it still running) and returns the console and the summary."""

    def __init__(self, tmp_path: Path, *overrides: str, env: dict[str, str] | None = None):
        self.runs, self.log = tmp_path / "runs", tmp_path / "console.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(settings(self.runs, *overrides), stdout=out, stderr=subprocess.STDOUT,
                                            text=True, env={**os.environ, **(env or {})})
        self.family = Family(self.process.pid)

    def __enter__(self) -> "ChaosRun":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def console(self) -> str:
        return self.log.read_text()

    def wait_for_snapshot(self, timeout_s: float = 120) -> None:
        taken = wait_for(lambda: self.runs.exists() and any(self.runs.rglob("checkpoints/update-*")), timeout_s)
        assert taken, self.console()[-3000:]

    def newest(self, pattern: str, timeout_s: float = 30) -> int:
        pid = wait_for(lambda: newest(pattern, self.process.pid), timeout_s)
        assert pid, f"no {pattern} process of this run"
        return pid

    def ended(self, status: int = 0, timeout_s: float = 300) -> tuple[str, dict]:
        self.process.wait(timeout=timeout_s)
        console = self.console()
        assert self.process.returncode == status, console[-3000:]
        assert "Traceback" not in console
        (run_dir,) = [p for p in self.runs.iterdir() if p.is_dir()]
        summary = json.loads((run_dir / "summary.json").read_text())
        left = self.family.leftovers()
        assert not left, left
        return console, summary
