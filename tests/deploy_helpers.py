"""Shared by the deployment tests: where the files are, running deploy/entrypoint.sh in a clean
environment, free ports, and stopping process groups that a test started."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent


def clean_env(**settings: str) -> dict[str, str]:
    """An environment without the caller's Ray, Redis or deployment settings, plus ``settings``."""
    keep = {name: os.environ[name] for name in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER") if name in os.environ}
    keep["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    keep["RAY_AUTH_MODE"] = "disabled"  # tests that start Ray replace this with a token of their own
    return keep | settings


def entrypoint(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the process (Ray's `ray start --block` then stops what it started), then SIGKILL
    whatever is left of its process group. Only for processes started with start_new_session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10
    while group_alive(proc.pid) and time.monotonic() < deadline:  # SIGKILL takes a moment to land
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def group_alive(pgid: int) -> list[str]:
    """Live (non-zombie) processes still in process group ``pgid``, as "pid command"."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            except OSError:
                command = "?"
            alive.append(f"{entry.name} {command}")
    return alive


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting {timeout_s:.0f} s for {what}")
        time.sleep(poll_s)
