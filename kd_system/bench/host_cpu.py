"""How much of the host's CPU time went unused during a timed window, from the kernel's own counters.

The ceiling assumes the env and the teacher share every core perfectly. When the system falls
short of it, there are two different reasons with different fixes: cores left idle (a scheduling
gap: more groups, threads or collectors would fill them), or cores kept busy but doing each state
more slowly than alone (contention for caches and memory, switching, our own per-state work). The
idle share of the system's window says which. It counts the whole host, so other work on the
machine (Ray's own processes and Redis among it) hides idle time, and on a VM the hypervisor's
steal is counted apart: busy is neither.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTimes:
    total: int  # jiffies, all states, all cores
    idle: int  # idle + iowait
    steal: int = 0  # taken by the hypervisor: neither idle nor ours (a VM's cores are not all its own)


def parse_cpu_line(line: str) -> CpuTimes:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal ...
    (guest time is already inside user, so it is not added again)."""
    fields = line.split()
    if not fields or fields[0] != "cpu" or len(fields) < 6:  # through iowait at least
        raise ValueError(f"not the aggregate cpu line of /proc/stat: {line[:60]!r}")
    values = [int(v) for v in fields[1:9]]  # up to steal; guest and guest_nice are counted in user and nice
    return CpuTimes(total=sum(values), idle=values[3] + values[4], steal=values[7] if len(values) > 7 else 0)


def read_cpu_times(path: Path = PROC_STAT) -> CpuTimes | None:
    """The host's counters now, or None where there is no /proc/stat (not Linux)."""
    try:
        with path.open() as handle:
            return parse_cpu_line(handle.readline())
    except (OSError, ValueError):
        return None


def idle_fraction(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """The share of all cores' time spent idle between two readings; None if either is missing
    or no time passed (a window shorter than one jiffy)."""
    return _share(before, after, "idle")


def steal_fraction(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    """The share of all cores' time the hypervisor took between two readings (0 on bare metal)."""
    return _share(before, after, "steal")


def _share(before: CpuTimes | None, after: CpuTimes | None, part: str) -> float | None:
    if before is None or after is None or after.total <= before.total:
        return None
    # iowait may go backwards (proc(5)): keep the share a share
    return min(1.0, max(0.0, (getattr(after, part) - getattr(before, part)) / (after.total - before.total)))
