"""Shared pieces of the chaos tests: start a real `kd-system run`, find its own processes (never
those of other tests' Ray sessions still winding down), kill one, and check what is left after."""
from __future__ import annotations

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


def processes_since(ticks: int, patterns: tuple[str, ...] = ("ray::", "raylet", "gcs_server", "redis-server",
                                                              "dashboard", "runtime_env", "log_monitor")) -> dict[int, str]:
    """Processes started at or after ``ticks`` whose command line mentions one of ``patterns``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            line = _cmdline(int(entry))
            if any(p in line for p in patterns) and started(int(entry)) >= ticks:
                found[int(entry)] = line[:120]
        except (OSError, ValueError, IndexError):  # it ended meanwhile
            pass
    return found


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
