"""A private, throw-away redis-server for runs (and tests) that were given no store.redis_url.

Hardened for a shared machine: bound to 127.0.0.1 with protected mode on, a random password by
default (handed over on the server's stdin: never on disk, nor on the command line where any local
user's ``ps`` would show it), no persistence, and on Linux it dies with the process that started
it, so a ``kill -9`` of the run leaves no server behind. restart() brings it back on the same
port with the same password (empty: its data is gone) so clients can reconnect to the same URL.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable
from urllib.parse import quote

import redis

from kd_system.errors import StoreError

_MISSING = ("redis-server not found on PATH: install it (apt-get install redis-server) "
            "or set store.redis_url to a running Redis")
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
RESTART_BIND_S = 10.0  # the old server's port may linger briefly after it died: keep trying this long


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the child when its parent goes, however it goes.

    The kernel ties PR_SET_PDEATHSIG to the parent *thread*, not the process: a server started
    from a short-lived thread would be killed when that thread ends. So it is only set when
    starting from the main thread (the head's loop, tests); elsewhere the atexit hook is all.
    prctl is looked up here, in the parent, so the child between fork and exec only calls it
    (the same approach as Ray's fate-sharing of its own child processes)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)
    return set_in_child


class LocalRedisServer:
    """Starts redis-server on a free 127.0.0.1 port with no persistence; stop() removes it all.

    ``password`` None: a random one (in ``url``); "" for none (loopback-only, protected mode)."""

    def __init__(self, maxmemory_mb: int | None = None, password: str | None = None,
                 binary: str = "redis-server", startup_timeout_s: float = 10.0):
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise StoreError(_MISSING if binary == "redis-server" else
                             f"redis-server binary {binary!r} not found: install redis-server "
                             "(apt-get install redis-server) or set store.redis_url to a running Redis")
        self.password = secrets.token_urlsafe(24) if password is None else password
        self.maxmemory_mb = maxmemory_mb
        self.startup_timeout_s = startup_timeout_s
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._stopped = False
        self._dir = tempfile.mkdtemp(prefix="kd-redis-")  # 0700: only this user reads its log
        self._log = open(os.path.join(self._dir, "redis.log"), "ab")
        atexit.register(self.stop)  # never leave an orphan server behind a crashed driver
        try:
            # The free port can be taken between probing and binding; a second try avoids that race.
            for attempt in range(3):
                self.port = _free_loopback_port()
                if self._start(last_try=attempt == 2):
                    return
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status of a server that died (negative: the signal that killed it), else None."""
        return self._proc.poll() if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> bytes:
        """What the server reads on its stdin ("-" as its config file): the password, quoted as
        redis.conf quotes ("..." with backslash escapes)."""
        if not self.password:
            return b""
        escaped = self.password.replace("\\", "\\\\").replace('"', '\\"')
        return f'requirepass "{escaped}"\n'.encode()

    def _start(self, last_try: bool) -> bool:
        """Start the server on self.port; False if it exited at once (the port was taken)."""
        args = [self.binary, "-", "--bind", "127.0.0.1", "--port", str(self.port),
                "--protected-mode", "yes", "--save", "", "--appendonly", "no", "--dir", self._dir,
                "--daemonize", "no", "--logfile", ""]
        if self.maxmemory_mb:
            args += ["--maxmemory", f"{int(self.maxmemory_mb)}mb", "--maxmemory-policy", "noeviction"]
        # Own session: a Ctrl-C aimed at the driver must not kill the store under its feet;
        # stop() (or the atexit hook, or the parent-death signal) ends it instead.
        try:
            self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=self._log,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent())
            self._proc.stdin.write(self._config())
            self._proc.stdin.close()
        except OSError as exc:
            raise StoreError(f"cannot run {self.binary} ({exc.strerror}): fix the redis-server "
                             "install or set store.redis_url to a running Redis") from None
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password or None,
                             socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:  # exited: port clash or bad arguments
                    if last_try:
                        raise StoreError(f"redis-server exited at startup ({self._last_log_line()}): "
                                         "check the redis-server install or set store.redis_url")
                    return False
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        self._kill()
        raise StoreError(f"redis-server on 127.0.0.1:{self.port} did not answer PING within "
                         f"{self.startup_timeout_s:.0f}s ({self._last_log_line()}): check the machine's "
                         "load or set store.redis_url to a running Redis")

    def restart(self) -> None:
        """A fresh, empty server on the same port with the same password, so clients holding the
        URL reconnect to it. Kills the old one first if it still runs."""
        if self._stopped:
            raise StoreError("restart() after stop(): start a new LocalRedisServer")
        self._kill()
        self.restarts += 1
        deadline = time.monotonic() + RESTART_BIND_S
        while not self._start(last_try=time.monotonic() >= deadline):
            time.sleep(0.2)  # the port is still held (by the dying server, or taken by another process)

    def _last_log_line(self) -> str:
        try:
            with open(os.path.join(self._dir, "redis.log"), "rb") as log:
                lines = log.read().decode(errors="replace").strip().splitlines()
            return lines[-1].strip() if lines else "no output"
        except OSError:
            return "no log"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Terminate the server and delete its directory; safe to call any number of times."""
        self._stopped = True
        self._kill()
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> "LocalRedisServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:  # no password: reprs end up in logs
        state = "running" if self.alive() else "stopped"
        return f"LocalRedisServer(127.0.0.1:{getattr(self, 'port', '?')}, {state})"
