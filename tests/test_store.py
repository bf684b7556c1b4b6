"""Replay store: chunk codec, LocalRedisServer, the replay table and its channels against a real redis-server."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import socket
import struct
import threading

import numpy as np
import pytest
import redis

from kd_system.errors import CorruptChunkError, StoreError
from kd_system.replay.redis_server import LocalRedisServer
from kd_system.replay.channels import RunMetadata, WeightsChannel
from kd_system.replay.connection import StoreAddress, mask_url
from kd_system.replay.table import ReplayTable
from kd_system.types import ChunkMeta, LabelledChunk, LabelledStates
from kd_system.replay.codec import decode_chunk, encode_chunk
from kd_system.replay.codec import FORMAT_VERSION, MAGIC

# ---------------------------------------------------------------- codec


def _cartpole_chunk(n=256, first_id=0):
    obs = np.zeros((n, 4), np.float32)
    obs[:, 0] = np.arange(first_id, first_id + n)  # a state id, to check what sampling returns
    return {"obs": obs, "teacher_logits": np.ones((n, 2), np.float32),
            "actions": np.arange(n, dtype=np.int32) % 2}


def _table(url, run_id, capacity_states, chunk_states):
    return ReplayTable(StoreAddress(url, run_id, capacity_states, chunk_states))


def _labelled(n=256, first_id=0, actor_id=0, task_id=0):
    arrays = _cartpole_chunk(n, first_id)
    return LabelledChunk(LabelledStates(arrays["obs"], arrays["teacher_logits"], arrays["actions"]),
                         ChunkMeta(actor_id=actor_id, task_id=task_id))


def _raw_chunk(obs):  # incompressible frames and tiny labels: the slot size is known
    n = len(obs)
    return LabelledChunk(LabelledStates(obs, np.zeros((n, 1), np.float32), np.zeros(n, np.int32)), ChunkMeta(actor_id=0))


ROUND_TRIP_ARRAYS = [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.random.default_rng(0).integers(0, 255, (3, 4, 84, 84), dtype=np.uint8),
    np.array([True, False, True]),
    np.arange(-5, 5, dtype=np.int8),
    np.arange(7, dtype=np.int16), np.arange(7, dtype=np.int64), np.arange(7, dtype=np.uint16),
    np.arange(7, dtype=np.uint32), np.array([0, 2**64 - 1], dtype=np.uint64),
    np.array([1.5, -np.inf, np.nan], dtype=np.float16), np.random.default_rng(1).normal(size=(5, 2)),
    np.zeros((0, 4), np.float32),  # empty
    np.zeros((256, 4, 84, 84), np.uint8),  # lz4's best case (~255x) must not look like a bomb
    np.array(3.25),  # 0-d
    np.arange(12, dtype=">i4"),  # big-endian input comes back native
    np.arange(40, dtype=np.float64).reshape(5, 8)[:, ::3],  # non-contiguous view
]


@pytest.mark.parametrize("array", ROUND_TRIP_ARRAYS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_codec_round_trip(array):
    meta, arrays = decode_chunk(encode_chunk({"x": array, "y": array[..., None]}, {"task": "t"}))
    assert meta == {"task": "t"}
    for name, expected in (("x", array), ("y", array[..., None])):
        assert arrays[name].dtype == expected.dtype.newbyteorder("=")
        assert arrays[name].shape == expected.shape
        np.testing.assert_array_equal(arrays[name], expected)


def test_codec_meta_and_several_arrays():
    chunk = _cartpole_chunk()
    meta = {"teacher_version": np.int64(3), "reward": np.float32(1.5), "tags": ["a", {"b": None}]}
    got_meta, got = decode_chunk(encode_chunk(chunk, meta))
    assert got_meta == {"teacher_version": 3, "reward": 1.5, "tags": ["a", {"b": None}]}
    assert list(got) == list(chunk)
    assert all(np.array_equal(got[k], chunk[k]) and got[k].flags.writeable for k in chunk)


@pytest.mark.parametrize("bad", [np.array([object(), 1], dtype=object), np.array(["ab"]),
                                 np.array([1 + 2j]), np.zeros(2, dtype=[("a", "f4")])],
                         ids=["object", "str", "complex", "structured"])
def test_codec_rejects_non_numeric_dtypes(bad):
    with pytest.raises(StoreError, match="dtype"):
        encode_chunk({"bad": bad}, {})


def test_codec_rejects_unserialisable_meta():
    with pytest.raises(StoreError, match="JSON"):
        encode_chunk({"x": np.zeros(2)}, {"f": object()})
    with pytest.raises(StoreError, match="dict"):
        encode_chunk({"x": np.zeros(2)}, None)


def _split(blob):
    _, _, header_len = struct.unpack_from("<4sHI", blob)
    header = json.loads(blob[10:10 + header_len])
    return header, blob[10 + header_len:]


def _join(header, payload, magic=MAGIC, version=FORMAT_VERSION):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<4sHI", magic, version, len(raw)) + raw + payload


def _with_spec(blob, **changes):
    header, payload = _split(blob)
    header["arrays"][0].update(changes)
    return _join(header, payload)


GOOD = encode_chunk({"obs": np.tile(np.arange(64, dtype=np.uint8), (32, 1))}, {"k": 1})


def _deep_json(depth):
    return b"[" * depth + b"]" * depth


CORRUPTIONS = {
    "empty": b"",
    "truncated_prefix": GOOD[:7],
    "truncated_header": GOOD[:20],
    "truncated_payload": GOOD[:-1],
    "trailing_bytes": GOOD + b"\0",
    "bad_magic": b"XXXX" + GOOD[4:],
    "bad_version": _join(*_split(GOOD), version=FORMAT_VERSION + 1),
    "garbage_header": _join(b"\xff{not json", _split(GOOD)[1]),
    "header_not_object": _join(b"[1, 2]", _split(GOOD)[1]),
    "deeply_nested_header": _join(_deep_json(100_000), b""),
    "huge_header_length": struct.pack("<4sHI", MAGIC, FORMAT_VERSION, 2**32 - 1) + b"{}",
    "oversized_shape": _with_spec(GOOD, shape=[10**12, 10**6]),
    "lz4_bomb_shape": _with_spec(GOOD, shape=[32, 64 * 1000]),
    "negative_dim": _with_spec(GOOD, shape=[-1, 64]),
    "shape_too_small": _with_spec(GOOD, shape=[31, 64]),
    "raw_size_mismatch": _with_spec(_with_spec(GOOD, codec="none"), shape=[4, 4]),
    "unknown_dtype": _with_spec(GOOD, dtype="|O"),
    "unhashable_dtype": _with_spec(GOOD, dtype=["u1"]),
    "unknown_codec": _with_spec(GOOD, codec="brotli"),
    "zstd_size_lie": _with_spec(GOOD, shape=[64, 64]),
    "lz4_garbage": _with_spec(GOOD, codec="lz4"),
    "bool_nbytes": _with_spec(GOOD, nbytes=True),
    "garbage_payload": _join(_split(GOOD)[0], b"\xff" * len(_split(GOOD)[1])),
    "duplicate_names": _join({"meta": {}, "arrays": [_split(GOOD)[0]["arrays"][0]] * 2},
                             _split(GOOD)[1] * 2),
}


def test_chunks_are_zstd_and_lz4_chunks_still_decode():
    arrays = {"obs": np.tile(np.arange(64, dtype=np.uint8), (32, 1)), "q": np.linspace(0, 1, 64, dtype=np.float32)}
    assert [spec["codec"] for spec in _split(GOOD)[0]["arrays"]] == ["zstd"]
    for codec in ("zstd", "lz4"):
        meta, got = decode_chunk(encode_chunk(arrays, {"k": codec}, codec=codec))
        assert meta == {"k": codec}
        for name in arrays:
            np.testing.assert_array_equal(got[name], arrays[name])
    with pytest.raises(StoreError, match="codec 'gzip' is unknown"):
        encode_chunk(arrays, {}, codec="gzip")


@pytest.mark.parametrize("blob", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_codec_corruption_raises_corrupt_chunk_error(blob):
    with pytest.raises(CorruptChunkError) as info:
        decode_chunk(blob)
    message = str(info.value)
    assert "\n" not in message and "corrupt" in message and "new run" in message


def test_codec_every_truncation_and_random_mutation_is_caught():
    for cut in range(len(GOOD)):
        with pytest.raises(CorruptChunkError):
            decode_chunk(GOOD[:cut])
    rng = np.random.default_rng(0)
    for _ in range(500):  # mutated blobs either decode or raise CorruptChunkError, nothing else
        blob = bytearray(GOOD)
        for pos in rng.integers(0, len(blob), size=rng.integers(1, 4)):
            blob[pos] = rng.integers(0, 256)
        try:
            decode_chunk(bytes(blob))
        except CorruptChunkError:
            pass


# ---------------------------------------------------------------- LocalRedisServer


def test_local_server_lifecycle():
    server = LocalRedisServer(maxmemory_mb=32)
    client = redis.Redis.from_url(server.url)
    assert "@127.0.0.1:" in server.url and client.ping()  # a random password by default
    assert client.config_get("maxmemory")["maxmemory"] == str(32 * 2**20)
    assert client.config_get("save")["save"] == ""
    client.close()
    server.stop()
    server.stop()  # twice is fine
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()


def test_local_server_missing_binary(monkeypatch):
    with pytest.raises(StoreError, match="not found"):
        LocalRedisServer(binary="/nonexistent/redis-server")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StoreError) as info:
        LocalRedisServer()
    assert str(info.value) == ("redis-server not found on PATH: install it (apt-get install "
                               "redis-server) or set store.redis_url to a running Redis")


# ---------------------------------------------------------------- connection errors


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_url_masks_password():
    url = f"redis://user:hunter2@127.0.0.1:{_closed_port()}/0"
    with pytest.raises(StoreError) as info:
        _table(url, "r", 100, 10)
    message = str(info.value)
    assert "hunter2" not in message and "user:***@127.0.0.1" in message
    assert "store.redis_url" in message and "\n" not in message


def test_wrong_or_missing_password():
    with LocalRedisServer(password="s3cret") as server:
        _table(server.url, "r", 100, 10).close()  # right password works
        wrong = server.url.replace("s3cret", "wrong-pw")
        with pytest.raises(StoreError, match="credentials") as info:
            _table(wrong, "r", 100, 10)
        assert "wrong-pw" not in str(info.value) and ":***@" in str(info.value)
        with pytest.raises(StoreError, match="password"):
            _table(f"redis://127.0.0.1:{server.port}/0", "r", 100, 10)


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:notaport/0"])
def test_bad_url(url):
    with pytest.raises(StoreError, match="redis_url"):
        _table(url, "r", 100, 10)


@pytest.mark.parametrize("url, masked", [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:pw@host:1/0", "redis://:***@host:1/0"),
    ("rediss://alice:p%40ss@host:1/2", "rediss://alice:***@host:1/2"),
    ("redis://onlytoken@host:1", "redis://***@host:1"),
    ("redis://:pa/ss@host:1/0", "redis://:***@host:1/0"),
    ("redis://:p@ss@host:1/0", "redis://:***@host:1/0"),
    ("unix:///tmp/r.sock?db=0&password=pw", "unix:///tmp/r.sock?db=0&password=***"),
    ("unix://:pw@/tmp/r@x.sock", "unix://:***@/tmp/r@x.sock"),
    ("not a url", "not a url"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_bad_run_id_and_sizes(redis_url):
    for bad in ["a:b", "a*", "", "x" * 200]:
        with pytest.raises(StoreError, match="run name"):
            _table(redis_url, bad, 100, 10)
    with pytest.raises(StoreError, match="positive"):
        _table(redis_url, "ok", 0, 10)


# ---------------------------------------------------------------- ReplayTable


@pytest.fixture
def store(redis_url, run_id):
    with _table(redis_url, run_id, capacity_states=1000, chunk_states=256) as store:
        yield store
        store.clear()


def test_round_trip_and_stats(store):
    assert store.num_slots == 4
    assert store.sample(32, np.random.default_rng(0)) is None  # empty store: None
    assert store.insert([_labelled()]) == [0]
    assert store.insert([_labelled(100, 256), _labelled(256, 356)]) == [1, 2]
    batch = store.sample(64, np.random.default_rng(0))
    assert {k: (v.dtype, v.shape) for k, v in batch.arrays().items()} == {
        "obs": (np.float32, (64, 4)), "teacher_out": (np.float32, (64, 2)),
        "action": (np.int32, (64,))}
    stats = store.stats()
    assert stats["chunks_written"] == 3 and stats["states_written"] == 612
    assert stats["states_stored"] == 612 and stats["num_slots"] == 4 and stats["bytes_stored"] > 0


def test_sampling_returns_only_live_states(redis_url, run_id):
    with _table(redis_url, run_id, capacity_states=64, chunk_states=16) as store:
        rng = np.random.default_rng(1)
        store.insert([_labelled(10, 0)])  # a partial chunk alone
        ids = store.sample(200, rng).obs[:, 0]
        assert set(ids) == set(range(10))
        for i in range(1, 10):  # 10 chunks into 4 slots: the last 4 survive
            store.insert([_labelled(16, 100 * i)])
        seen = set()
        for _ in range(50):
            seen |= set(store.sample(64, rng, chunks_per_sample=2).obs[:, 0].astype(int))
        live = {100 * i + j for i in range(6, 10) for j in range(16)}
        assert seen <= live and len(seen) > len(live) // 2
        assert store.stats()["states_stored"] == 64
        store.clear()


def test_capacity_bound_keeps_memory_flat(redis_url, run_id):
    client = redis.Redis.from_url(redis_url)
    rng = np.random.default_rng(0)

    def chunk():  # incompressible, so the slot size is known
        return _raw_chunk(rng.integers(0, 255, (64, 1000), dtype=np.uint8))

    with _table(redis_url, run_id, capacity_states=1024, chunk_states=64) as store:
        for _ in range(store.num_slots):
            store.insert([chunk()])
        full = client.info("memory")["used_memory"]
        for _ in range(4 * store.num_slots // 8):  # 4x capacity more, in batches
            store.insert([chunk() for _ in range(8)])
        after = client.info("memory")["used_memory"]
        slots = list(client.scan_iter(match=f"kd:{run_id}:slot:*"))
        assert len(slots) == store.num_slots == 16
        assert store.stats()["chunks_written"] == 80 and store.stats()["states_stored"] == 1024
        assert after - full < 16 * 64_000 // 4  # unbounded growth would add ~4 MB
        store.clear()
    client.close()


def test_runs_stay_apart_and_clear_is_scoped(redis_url, run_id):
    with _table(redis_url, run_id + "a", 100, 10) as a, \
            _table(redis_url, run_id + "ab", 100, 10) as ab:
        a.insert([_labelled(10, 0)])
        RunMetadata(a.address).write({"run": "a"})
        ab.insert([_labelled(10, 500)])
        WeightsChannel(ab.address).publish(1, b"w")
        assert set(a.sample(50, np.random.default_rng(0)).obs[:, 0]) == set(range(10))
        a.clear()
        assert a.stats()["chunks_written"] == 0 and a.sample(5, np.random.default_rng(0)) is None
        assert RunMetadata(a.address).read() == {}
        assert ab.stats()["chunks_written"] == 1 and WeightsChannel(ab.address).fetch() == (1, b"w")
        ab.clear()


def test_layout_mismatch_is_refused(store, redis_url):
    _table(redis_url, store.address.run_id, 10_000, 256).close()  # reading claims nothing
    store.insert([_labelled()])
    with pytest.raises(StoreError, match="layout"):
        _table(redis_url, store.address.run_id, 10_000, 256)
    store.clear()
    other = _table(redis_url, store.address.run_id, 10_000, 256)  # cleared: free to reuse
    other.insert([_labelled()])
    with pytest.raises(StoreError, match="layout"):
        store.insert([_labelled()])  # the old store re-claims after its clear()
    other.clear()
    other.close()


def test_connection_check_leaves_no_keys(redis_url, run_id):
    _table(redis_url, run_id, 100, 10).close()
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match=f"kd:{run_id}:*")) == []
    client.close()


def test_write_validation_reserves_nothing(store):
    with pytest.raises(StoreError, match="chunk_states"):
        store.insert([_labelled(257)])
    with pytest.raises(ValueError, match="disagree on their count"):  # a mismatched record is never built
        store.insert([LabelledChunk(LabelledStates(np.zeros(3), np.zeros(4), np.zeros(3)), ChunkMeta(0))])
    with pytest.raises(StoreError, match="dtype"):
        store.insert([LabelledChunk(LabelledStates(np.array([None, None]), np.zeros(2), np.zeros(2)), ChunkMeta(0))])
    assert store.stats()["chunks_written"] == 0


def test_a_corrupt_chunk_is_skipped_and_counted(store, redis_url):
    store.insert([_labelled(), _labelled(first_id=256)])
    redis.Redis.from_url(redis_url).set(f"kd:{store.address.run_id}:slot:0", b"KDCH garbage")
    rng = np.random.default_rng(0)
    batches = [store.sample(8, rng, chunks_per_sample=2) for _ in range(20)]
    assert all(batch is not None and len(batch) == 8 for batch in batches)  # drawn from the good chunk
    assert store.corrupt_chunks == 20 and store.chunks_read == 40


def test_a_store_returning_mostly_garbage_ends_the_run(redis_url, run_id):
    address = StoreAddress(redis_url, run_id, 1000, 256, max_corrupt_share=0.1)
    with ReplayTable(address) as table:
        table.insert([_labelled()])
        redis.Redis.from_url(redis_url).set(f"kd:{run_id}:slot:0", b"KDCH garbage")
        rng = np.random.default_rng(0)
        with pytest.raises(CorruptChunkError, match="max_corrupt_share"):
            for _ in range(200):
                assert table.sample(8, rng) is None  # the only chunk is corrupt: nothing to draw
        table.clear()


def test_weights_versioning(store):
    weights = WeightsChannel(store.address)
    assert weights.fetch() is None
    weights.publish(1, b"v1")
    assert weights.fetch() == (1, b"v1")
    assert weights.fetch(newer_than=1) is None
    weights.publish(2, b"\x00v2" * 1000)
    assert weights.fetch(newer_than=1) == (2, b"\x00v2" * 1000)
    assert pickle.loads(pickle.dumps(weights)).fetch() == (2, b"\x00v2" * 1000)
    weights.publish(1, b"restored")  # a replacement learner restored from an earlier snapshot
    assert weights.fetch(newer_than=2) is None and weights.fetch(other_than=2) == (1, b"restored")
    assert weights.fetch(other_than=1) is None
    weights.close()


def test_meta(store):
    meta = RunMetadata(store.address)
    assert meta.read() == {}
    meta.write({"teacher": "cartpole", "obs_dim": 4})
    assert meta.read() == {"teacher": "cartpole", "obs_dim": 4}
    with pytest.raises(StoreError, match="JSON"):
        meta.write({"x": object()})
    meta.close()


def test_pickles_by_address_and_masks_password(store):
    clone = pickle.loads(pickle.dumps(store))
    store.insert([_labelled()])
    assert clone.address == store.address and clone.stats()["chunks_written"] == 1
    clone.close()
    address = StoreAddress("redis://:hunter2@h:1/0", "r", 10, 5)
    assert "hunter2" not in repr(address) and ":***@h:1" in repr(address)


def _write_many(address: StoreAddress, writer: int, count: int, start=None) -> None:
    store = ReplayTable(address)
    if start is not None:
        start.wait(timeout=60)  # all writers connected: now they really write at once
    for i in range(count):
        if i % 2:
            store.insert([_labelled(8, 0, writer, i)])
        else:  # exercise both write paths concurrently
            store.insert([_labelled(8, 0, writer, i)])
    store.close()


def _check_every_chunk_landed(store, expected):
    stats = store.stats()
    assert stats["chunks_written"] == len(expected) and stats["states_written"] == 8 * len(expected)
    client = redis.Redis.from_url(store.address.url)
    blobs = client.mget([f"kd:{store.address.run_id}:slot:{s}" for s in range(len(expected))])
    metas = {(m["actor_id"], m["task_id"]) for m, _ in map(decode_chunk, blobs)}
    assert metas == expected
    client.close()


def test_concurrent_thread_writers(redis_url, run_id):
    own, shared, count = 4, 2, 25  # threads with their own client, threads sharing one client
    total = (own + shared) * count
    with _table(redis_url, run_id, capacity_states=8 * total, chunk_states=8) as store:
        def write_shared(writer):
            for i in range(count):
                store.insert([_labelled(8, 0, writer, i)])

        start = threading.Barrier(own)
        threads = [threading.Thread(target=_write_many, args=(store.address, w, count, start))
                   for w in range(own)]
        threads += [threading.Thread(target=write_shared, args=(w,)) for w in range(own, own + shared)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _check_every_chunk_landed(store, {(w, i) for w in range(own + shared) for i in range(count)})
        store.clear()


def test_concurrent_process_writers(redis_url, run_id):
    writers, count = 3, 20
    address = StoreAddress(redis_url, run_id, capacity_states=8 * writers * count, chunk_states=8)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(writers)
    processes = [context.Process(target=_write_many, args=(address, w, count, start))
                 for w in range(writers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * writers
    with ReplayTable(address) as store:
        _check_every_chunk_landed(store, {(w, i) for w in range(writers) for i in range(count)})
        store.clear()


def test_out_of_memory_is_a_store_error(run_id):
    with LocalRedisServer(maxmemory_mb=4) as server, \
            _table(server.url, run_id, capacity_states=10**6, chunk_states=64) as store:
        rng = np.random.default_rng(0)
        with pytest.raises(StoreError, match="out of memory"):
            for _ in range(100):
                store.insert([_raw_chunk(rng.integers(0, 255, (64, 4096), dtype=np.uint8))])
