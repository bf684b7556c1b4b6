"""The host's idle share over a window, from /proc/stat's aggregate cpu line."""
import os
import time

import pytest

from kd_system.bench.host_cpu import CpuTimes, idle_fraction, parse_cpu_line, read_cpu_times, steal_fraction
from kd_system.bench.report_details import idle_note


def test_the_aggregate_line_counts_idle_and_iowait_and_not_guest_twice():
    # user nice system idle iowait irq softirq steal guest guest_nice
    times = parse_cpu_line("cpu  100 5 50 800 20 3 2 10 40 0\n")
    assert times == CpuTimes(total=100 + 5 + 50 + 800 + 20 + 3 + 2 + 10, idle=820, steal=10)
    assert parse_cpu_line("cpu 1 2 3 4 5") == CpuTimes(total=15, idle=9, steal=0)  # old kernels: no steal field


@pytest.mark.parametrize("line", ["cpu0 1 2 3 4 5", "intr 1 2 3", "cpu 1 2", "cpu 1 2 3 4", ""])
def test_other_lines_are_refused(line):
    with pytest.raises(ValueError):
        parse_cpu_line(line)


def test_idle_fraction_between_two_readings():
    assert idle_fraction(CpuTimes(1000, 400), CpuTimes(1200, 450)) == pytest.approx(0.25)
    assert idle_fraction(CpuTimes(1000, 400), CpuTimes(1000, 400)) is None  # no time passed
    assert idle_fraction(None, CpuTimes(1, 1)) is None
    assert steal_fraction(CpuTimes(1000, 400, 10), CpuTimes(1200, 450, 30)) == pytest.approx(0.1)
    assert idle_fraction(CpuTimes(1000, 400), CpuTimes(1200, 390)) == 0.0  # iowait went backwards: still a share


def test_a_missing_proc_stat_reads_as_unknown(tmp_path):
    assert read_cpu_times(tmp_path / "stat") is None
    assert idle_note(None) == ""
    assert "stolen 2.0%" in idle_note(0.01, 0.02) and "stolen" not in idle_note(0.01, 0.0)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux only")
def test_a_busy_loop_is_not_counted_as_idle():
    before = read_cpu_times()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # one core kept busy by this loop
        pass
    fraction = idle_fraction(before, read_cpu_times())
    assert fraction is not None and 0.0 <= fraction < 1.0
    assert "host idle" in idle_note(fraction)
