"""Linux's process table, read from /proc with the standard library only (the run's watchdog
child imports nothing else): who is whose child, when each started, and what it runs. A pid is
reused once a process is gone, so a process is a (pid, start time) pair wherever that matters."""
from __future__ import annotations

import os


def stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot) of a live process; None once it is gone
    or a zombie (dead, waiting for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()  # the name in (...) may hold spaces
        return None if fields[0] == "Z" else (int(fields[1]), int(fields[19]))
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> bytes:
    """The command line, NUL-separated; empty once gone (or another user's)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


def table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start ticks) of every live process."""
    return {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := stat(int(e))) is not None}


def descendants(pid: int, processes: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """Every live process below ``pid`` (children, their children, ...), not ``pid`` itself."""
    processes = table() if processes is None else processes
    family: set[int] = {pid}
    while more := {child for child, (parent, _) in processes.items() if parent in family and child not in family}:
        family |= more
    return family - {pid}
