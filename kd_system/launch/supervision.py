"""What the head knows about components that died: how often each one did lately (so a component
that keeps dying ends the run instead of looping), and where its log is, for the one line the user
reads. Ray-free but for reading the death's message.

The head replaces dead components itself rather than through Ray's ``max_restarts``: Ray would
rerun the constructor with the original arguments, so a restarted learner would silently start
from scratch and a restarted collector would replay its predecessor's env seeds. The head knows
the latest snapshot and the next fresh seed, and it sees every death, so it can count them.
"""
from __future__ import annotations

import glob
import os
import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Death:
    """One component's death, as the head reports it."""
    component: str  # "learner", "evaluator 0", "collector 3"
    pid: int | None
    ip: str | None
    log: str | None  # the worker's stderr log, when it is on this machine

    def where(self) -> str:
        if self.log:
            return f"its log: {self.log}"
        at = f"pid {self.pid}" if self.pid else "an unknown pid"
        on = f" on {self.ip}" if self.ip else ""
        return f"its log: Ray's session logs{on}, worker-*-{self.pid or '*'}.err ({at})"


def _local_logs_dir() -> str:
    try:  # Ray keeps no public accessor for the session's log directory
        import ray
        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:
        return "/tmp/ray/session_latest/logs"


def death_of(component: str, exc: BaseException) -> Death:
    """Read the pid and address Ray puts in an actor-death message, and find the worker's log."""
    text = str(exc)
    pid_match, ip_match = re.search(r"\bpid: (\d+)", text), re.search(r"\bip: (\S+)", text)
    pid = int(pid_match.group(1)) if pid_match else None
    logs = sorted(glob.glob(os.path.join(_local_logs_dir(), f"worker-*-{pid}.err"))) if pid else []
    return Death(component, pid, ip_match.group(1) if ip_match else None, logs[-1] if logs else None)


class DeathLog:
    """Deaths per component over a sliding window: ``record`` says when one has died too often."""

    def __init__(self, max_deaths: int, window_s: float, clock=time.monotonic):
        self.max_deaths, self.window_s, self.clock = max_deaths, window_s, clock
        self.recent: dict[str, deque[float]] = defaultdict(deque)
        self.total = 0

    def record(self, component: str) -> bool:
        """Count a death; True if the component died ``max_deaths`` times within ``window_s``."""
        now = self.clock()
        times = self.recent[component]
        times.append(now)
        while times and now - times[0] > self.window_s:
            times.popleft()
        self.total += 1
        return len(times) >= self.max_deaths
