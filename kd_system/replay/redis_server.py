"""A private, throw-away redis-server for runs (and tests) that were given no store.redis_url."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from urllib.parse import quote

import redis

from kd_system.errors import StoreError

_MISSING = ("redis-server not found on PATH: install it (apt-get install redis-server) "
            "or set store.redis_url to a running Redis")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedisServer:
    """Starts redis-server on a free 127.0.0.1 port with no persistence; stop() removes it all."""

    def __init__(self, maxmemory_mb: int | None = None, password: str | None = None,
                 binary: str = "redis-server", startup_timeout_s: float = 10.0):
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise StoreError(_MISSING if binary == "redis-server" else
                             f"redis-server binary {binary!r} not found: install redis-server "
                             "(apt-get install redis-server) or set store.redis_url to a running Redis")
        self.password = password
        self._proc: subprocess.Popen | None = None
        self._dir = tempfile.mkdtemp(prefix="kd-redis-")
        self._log = open(os.path.join(self._dir, "redis.log"), "wb")
        atexit.register(self.stop)  # never leave an orphan server behind a crashed driver
        try:
            # The free port can be taken between probing and binding; a second try avoids that race.
            for attempt in range(3):
                self.port = _free_loopback_port()
                if self._start(maxmemory_mb, startup_timeout_s, last_try=attempt == 2):
                    return
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _start(self, maxmemory_mb: int | None, timeout_s: float, last_try: bool) -> bool:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                "--appendonly", "no", "--dir", self._dir, "--daemonize", "no", "--logfile", ""]
        if maxmemory_mb:
            args += ["--maxmemory", f"{int(maxmemory_mb)}mb", "--maxmemory-policy", "noeviction"]
        if self.password:
            args += ["--requirepass", self.password]
        # Own session: a Ctrl-C aimed at the driver must not kill the store under its feet;
        # stop() (or the atexit hook) ends it instead.
        try:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise StoreError(f"cannot run {self.binary} ({exc.strerror}): fix the redis-server "
                             "install or set store.redis_url to a running Redis") from None
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                             socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + timeout_s
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
        raise StoreError(f"redis-server on 127.0.0.1:{self.port} did not answer PING within "
                         f"{timeout_s:.0f}s ({self._last_log_line()}): check the machine's load "
                         "or set store.redis_url to a running Redis")

    def _last_log_line(self) -> str:
        try:
            with open(os.path.join(self._dir, "redis.log"), "rb") as log:
                lines = log.read().decode(errors="replace").strip().splitlines()
            return lines[-1].strip() if lines else "no output"
        except OSError:
            return "no log"

    def stop(self) -> None:
        """Terminate the server and delete its directory; safe to call any number of times."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> "LocalRedisServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._proc is not None and self._proc.poll() is None else "stopped"
        return f"LocalRedisServer(127.0.0.1:{getattr(self, 'port', '?')}, {state})"
