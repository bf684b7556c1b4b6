"""Ends the local Ray session of a run process that died without stopping it.

ray.init() starts gcs_server, raylet, agents and workers beside the run process; a SIGKILL of the
run process (kill -9, the OOM killer) leaves them running with no owner. The watchdog is a small
process, stdlib only, reading a pipe whose write end only the run process holds: however that
process ends, the kernel closes the pipe, and the read returns. Unless it said "clean" first
(ray.shutdown() stopped Ray), the watchdog then ends that session's processes and no others:
those Ray listed at start, those whose command line names the session directory or that hold a
file in it open (workers, agents: their logs), and their descendants. SIGTERM first, so Ray's
processes exit as they would, then SIGKILL for the rest."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from kd_system.processes import cmdline as _cmdline, stat as _stat, table as _table

CLEAN = b"clean\n"
GRACE_S = 3.0

Processes = dict[int, int]  # pid -> start time in clock ticks since boot: a pid reused meanwhile is not the same process


def _open_paths(pid: int) -> list[str]:
    try:
        return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:  # gone, another user's, or an fd closed meanwhile: look again next time
        return []


def _is_rays(cmdline: bytes) -> bool:
    """Ray workers retitle themselves ray::...; its daemons and agents run from the ray package."""
    argv0 = cmdline.split(b"\0", 1)[0]
    return (cmdline.startswith(b"ray::") or os.path.basename(argv0) in (b"raylet", b"gcs_server")
            or b"/ray/" in cmdline)


def session_processes(session_dir: str, listed: Processes, spare: set[int]) -> Processes:
    """The live processes of the Ray session in ``session_dir``; ``listed``: those Ray started;
    ``spare``: never these (the run process holds its driver's logs there, and may still be alive)."""
    table = _table()
    # the directory as a whole path element: session_..._12 must not match session_..._123
    names_it = re.compile(rb"(?:^|[\0=\s])" + re.escape(session_dir.encode()) + rb"(?=$|[\0/\s])")
    table = {pid: st for pid, st in table.items() if pid not in spare}
    found = {pid for pid, start in listed.items() if pid in table and table[pid][1] == start}
    # by command line or open files only Ray's own processes: a `tail -f` of a worker's log, or a
    # log shipper reading the session directory, names it or holds files in it too
    table = {pid: st for pid, st in table.items() if pid in found or _is_rays(_cmdline(pid))}
    found |= {pid for pid in table if names_it.search(_cmdline(pid))}
    # Workers and agents retitle themselves (ray::IDLE), and when the run process dies Ray's own
    # PR_SET_PDEATHSIG kills their raylet and orphans them; every one keeps its logs open in the
    # session directory, though.
    inside = (session_dir.rstrip("/") + "/", os.path.realpath(session_dir) + "/")
    found |= {pid for pid in table if pid not in found and any(p.startswith(inside) for p in _open_paths(pid))}
    while more := {pid for pid, (ppid, _) in table.items() if ppid in found and pid not in found}:
        found |= more  # descendants: anything the session's processes started
    return {pid: table[pid][1] for pid in found}


def _signal(processes: Processes, signum: int) -> None:
    for pid, start in processes.items():
        state = _stat(pid)
        if state is not None and state[1] == start:
            try:
                os.kill(pid, signum)
            except OSError:  # ended meanwhile
                pass


def end_session(session_dir: str, listed: Processes, spare: set[int]) -> int:
    """SIGTERM the session's processes, SIGKILL what is left after GRACE_S; returns how many there were."""
    targets = session_processes(session_dir, listed, spare)
    _signal(targets, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and any(_stat(pid) for pid in targets):
        time.sleep(0.1)
    # found again too: a raylet may have started a worker after the first look
    _signal({**session_processes(session_dir, listed, spare), **targets}, signal.SIGKILL)
    return len(targets)


class Watchdog:
    """The run process's side: start it right after ray.init() started a local Ray, close it at exit."""

    def __init__(self, session_dir: str, pids: list[int]):
        package_root = Path(__file__).resolve().parents[2]  # -m finds kd_system from there, installed or not
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kd_system.launch.watchdog", session_dir, *map(str, pids)],
            cwd=package_root, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            start_new_session=True)  # out of the terminal's process group: a hangup or Ctrl-C there spares it

    @classmethod
    def for_local_ray(cls) -> "Watchdog | None":
        """None, with a word, if this Ray no longer exposes its session: the run goes on unguarded."""
        import ray  # the run process has it; the watchdog process itself stays stdlib only

        try:  # Ray's private API: the node this process started
            node = ray._private.worker._global_node
            session_dir = node.get_session_dir_path()
            pids = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
        except AttributeError as exc:
            print(f"kd-system: no watchdog for the local Ray ({exc}): if this process is killed, the Ray it "
                  "started outlives it", file=sys.stderr, flush=True)
            return None
        return cls(session_dir, pids)

    def close(self, clean: bool) -> None:
        """``clean``: Ray was shut down, nothing to end; else the watchdog ends the session now."""
        pipe = self.process.stdin
        if pipe is None or pipe.closed:
            return
        try:
            if clean:
                pipe.write(CLEAN)
            pipe.close()
        except BrokenPipeError:  # the watchdog died: nothing to tell it
            pass
        try:
            self.process.wait(timeout=GRACE_S + 10)
        except subprocess.TimeoutExpired:
            pass


def main(argv: list[str]) -> int:
    # In a session of its own it gets no Ctrl-C from the terminal; a SIGINT sent to it all the same
    # must not end it either: the run process handles the interrupt and then says "clean"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spare = {os.getpid(), os.getppid(), 1}  # itself, the run process, init
    session_dir, pids = argv[0], [int(pid) for pid in argv[1:]]
    listed = {pid: state[1] for pid in pids if (state := _stat(pid)) is not None}
    if sys.stdin.buffer.read() == CLEAN:  # blocks until the run process closes the pipe or dies
        return 0
    ended = end_session(session_dir, listed, spare)
    print(f"kd-system: the run process ended without stopping Ray; ended {ended} processes of {session_dir}",
          file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
