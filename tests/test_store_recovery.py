"""The store survives Redis: a private redis-server that is hardened, dies with its parent and
restarts on the same port and password; clients that reconnect within store.reconnect_s and then
notice the emptied store; the head's RunStores.check(). Real redis-server processes throughout."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kd_system.config import load_config
from kd_system.errors import StoreError
from kd_system.launch.preparation import Prepared
from kd_system.launch.stores import MAX_RESTARTS, RunStores
from kd_system.replay.channels import RunMetadata, WeightsChannel
from kd_system.replay.connection import StoreAddress
from kd_system.replay.rate_limit import SampleToInsertLimiter
from kd_system.replay.redis_server import LocalRedisServer
from kd_system.replay.table import ReplayTable
from kd_system.types import ChunkMeta, LabelledChunk, LabelledStates

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")


def _chunk(n: int = 128) -> LabelledChunk:
    rng = np.random.default_rng(n)
    return LabelledChunk(LabelledStates(rng.normal(size=(n, 4)).astype(np.float32),
                                        rng.normal(size=(n, 2)).astype(np.float32), np.zeros(n, np.int32)),
                         ChunkMeta(actor_id=0))


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may be slow to reap an orphan)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_until(condition, limit_s: float = 10.0) -> bool:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_9(server: LocalRedisServer) -> None:
    os.kill(server.pid, signal.SIGKILL)
    assert _wait_until(lambda: not server.alive())


@pytest.fixture
def server():
    with LocalRedisServer() as server:
        yield server


# ---------------------------------------------------------------- the private server


@linux_only
def test_private_server_is_password_protected_and_loopback_only(server):
    password = server.password
    assert len(password) >= 24 and f":{password}@127.0.0.1:{server.port}/" in server.url
    client = redis.Redis.from_url(server.url)
    config = client.config_get("*")
    assert config["protected-mode"] == "yes" and config["bind"] == "127.0.0.1" and config["requirepass"] == password
    client.close()
    anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0))  # NOAUTH is not retried
    with pytest.raises(redis.RedisError, match="(?i)auth"):  # NOAUTH
        anonymous.ping()
    anonymous.close()
    # Not on the command line (any local user's ps shows it), nor in any file: it went in on stdin.
    assert password not in Path(f"/proc/{server.pid}/cmdline").read_text()
    assert stat.S_IMODE(os.stat(server._dir).st_mode) == 0o700
    for path in Path(server._dir).rglob("*"):
        assert password.encode() not in path.read_bytes()
    assert password not in repr(server)


def test_explicit_or_no_password():
    with LocalRedisServer(password='pa"ss\\word') as server:
        assert redis.Redis.from_url(server.url).ping()
    with LocalRedisServer(password="") as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert redis.Redis(host="127.0.0.1", port=server.port).ping()


def test_restart_after_kill_9_same_port_and_password(server):
    url, port, old_pid = server.url, server.port, server.pid
    client = redis.Redis.from_url(url)
    client.set("k", "v")
    _kill_9(server)
    assert server.returncode == -signal.SIGKILL
    server.restart()
    assert server.alive() and server.pid != old_pid and server.port == port and server.url == url
    assert client.get("k") is None  # the same URL reaches the new, empty server
    server.restart()  # a live one is stopped first
    assert server.alive() and server.restarts == 2
    client.close()
    server.stop()
    assert not server.alive() and not os.path.exists(server._dir)
    with pytest.raises(StoreError, match="after stop"):
        server.restart()


@linux_only
def test_server_dies_with_the_process_that_started_it():
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
            "from kd_system.replay.redis_server import LocalRedisServer; s = LocalRedisServer(); "
            "print(s.pid, s.port, s._dir, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        pid, port, data_dir = parent.stdout.readline().split()
        assert _running(int(pid))
        os.kill(parent.pid, signal.SIGKILL)  # no atexit, no finally: only the kernel can stop it now
        parent.wait()
        assert _wait_until(lambda: not _running(int(pid))), f"redis-server {pid} outlived its parent"
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host="127.0.0.1", port=int(port), socket_connect_timeout=1).ping()
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
        shutil.rmtree(data_dir, ignore_errors=True)  # left behind: the parent had no chance to remove it


# ---------------------------------------------------------------- clients


def test_tables_ride_out_a_restart_and_the_limiter_gates_again(server):
    address = StoreAddress(server.url, "recover", capacity_states=4096, chunk_states=128, reconnect_s=30)
    writer = ReplayTable(address)
    learner = ReplayTable(address, SampleToInsertLimiter(min_size_to_sample=256, samples_per_insert=1.0))
    weights = WeightsChannel(address)
    rng = np.random.default_rng(0)
    for _ in range(4):
        writer.insert([_chunk()])
    weights.publish(7, b"w")
    for _ in range(4):
        assert learner.sample(64, rng) is not None
    assert learner.sampled == 256 and learner.inserted == 512

    _kill_9(server)
    written = []
    blocked = threading.Thread(target=lambda: written.append(writer.insert([_chunk()])))
    blocked.start()  # retries, backing off, while the server is down
    time.sleep(1.0)
    server.restart()  # from this (the main) thread: the parent-death signal follows the starting thread
    blocked.join(timeout=60)
    assert written == [[0]] and writer.wipes == 1  # the new server's ring starts at slot 0

    # 128 states in the emptied store: below min_size_to_sample, and the learner forgot its 256.
    assert learner.sample(64, rng, timeout_s=0.05) is None and learner.held_by_limiter
    assert learner.wipes == 1 and learner.sampled == 0 and learner.inserted == 128
    writer.insert([_chunk()])
    writer.insert([_chunk()])
    # 384 in: 384 - 256 >= 64 lets a batch through; the stale count (256) would have needed 576.
    assert learner.sample(64, rng) is not None and learner.sampled == 64
    check = redis.Redis.from_url(server.url)
    assert check.get("kd:recover:layout") is not None and int(check.get("kd:recover:sampled")) == 64
    check.close()
    assert weights.fetch() is None  # nothing published on the new server: actors keep theirs
    weights.publish(8, b"w2")
    assert weights.fetch(newer_than=7) == (8, b"w2")
    for handle in (writer, learner, weights):
        handle.close()


def test_an_op_gives_up_after_reconnect_s(server):
    table = ReplayTable(StoreAddress(server.url, "gone", 1024, 128, reconnect_s=1))
    table.insert([_chunk()])
    _kill_9(server)
    start = time.monotonic()
    with pytest.raises(StoreError, match="lost Redis at redis://:\\*\\*\\*@127.0.0.1.*reconnect_s=1s") as info:
        table.insert([_chunk()])
    assert time.monotonic() - start < 20  # bounded: about reconnect_s plus one capped backoff
    assert server.password not in str(info.value) and "\n" not in str(info.value)
    table.close()


def test_reconnect_s_zero_fails_at_the_first_lost_connection(server):
    table = ReplayTable(StoreAddress(server.url, "nowait", 1024, 128, reconnect_s=0))
    _kill_9(server)
    with pytest.raises(StoreError, match="lost Redis"):
        table.stats()
    table.close()


# ---------------------------------------------------------------- the head's side


def _prepared(*names: str) -> Prepared:
    tasks = tuple(SimpleNamespace(name=name, env_id=f"{name}-v1", teacher_path=f"/t/{name}.pt",
                                  student_spec=SimpleNamespace(network=["mlp", 64])) for name in names)
    return Prepared(tasks, 0, 0)


def test_run_stores_restart_a_dead_private_server(tmp_path):
    stores = RunStores(load_config(None, []), "head-check", _prepared("a", "b"), resumed=False)
    try:
        assert stores.check() is None and stores.addresses[0].reconnect_s == 60
        port = stores.redis.port
        stores.tables[0].insert([_chunk()])
        _kill_9(stores.redis)
        message = stores.check()
        assert message == (f"redis-server (private, 127.0.0.1:{port}) died (killed by SIGKILL); restarted it on "
                           "the same port: the replay buffer is lost and refills, checkpoints are untouched")
        assert stores.check() is None
        for address, name in zip(stores.addresses, "ab"):  # metadata written again, on the same URL
            metadata = RunMetadata(address)
            assert metadata.read() == {"env_id": f"{name}-v1", "teacher": f"/t/{name}.pt",
                                       "student_network": ["mlp", 64]}
            metadata.close()
        assert stores.bytes_per_state() == 0  # the head's own handles reconnected to the empty store
        for _ in range(MAX_RESTARTS - 1):
            _kill_9(stores.redis)
            assert stores.check() is not None
        _kill_9(stores.redis)
        with pytest.raises(StoreError, match="died again.*store.redis_url"):
            stores.check()
    finally:
        stores.close()
    assert not stores.redis.alive()


def test_run_stores_leave_an_external_redis_to_the_components(redis_url, run_id):
    config = load_config(None, [f"store.redis_url={redis_url}", "store.reconnect_s=5"])
    stores = RunStores(config, run_id, _prepared("a"), resumed=False)
    try:
        assert stores.redis is None and stores.check() is None and stores.addresses[0].reconnect_s == 5
    finally:
        stores.tables[0].clear()
        stores.close()


def test_a_replacement_learners_table_takes_over_the_runs_counts(redis_url, run_id):
    """A new learner handle against a full buffer continues the limiter's counts instead of sampling
    from zero (which would let it sample ~32x the buffer unthrottled)."""
    import numpy as np

    from kd_system.replay.connection import StoreAddress
    from kd_system.replay.rate_limit import SampleToInsertLimiter
    from kd_system.replay.table import ReplayTable
    from tests.test_store import _labelled

    address = StoreAddress(redis_url, run_id, 10_000, 64)
    limiter = SampleToInsertLimiter(min_size_to_sample=64, samples_per_insert=2.0)
    first = ReplayTable(address, limiter)
    ReplayTable(address).insert([_labelled(64), _labelled(64)])
    assert first.sample(64, np.random.default_rng(0), timeout_s=5.0) is not None
    second = ReplayTable(address, limiter)  # the replacement
    assert (second.inserted, second.sampled) == (128, 64)
    first.clear()
    for table in (first, second):
        table.close()
