"""The shared replay buffer: a bounded ring of encoded chunks in Redis, under kd:{run_id}:*.

Actors write whole chunks (one value each); the learner samples a few chunks and states within
them. Weights and run metadata live beside the data so any process holding a StoreAddress can
find everything. See DESIGN.md section 3.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kd_system.errors import CorruptChunkError, StoreError
from kd_system.replay.codec import decode_chunk, encode_chunk

CONNECT_TIMEOUT_S = 2.5
OP_TIMEOUT_S = 30.0  # a slow MGET of Atari chunks is fine; a dead server must not hang forever
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # no ':' or glob chars: clear() SCANs kd:{run_id}:*
_UNREACHABLE_FIX = "start Redis there, fix store.redis_url, or leave it unset so kd-system starts a local one"


def mask_url(url: str) -> str:
    """The URL with any password (user-info or ?password=) replaced by ***, for messages and logs."""
    url = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if scheme.lower() == "unix":  # unix://[user:pw@]/path: user-info ends at the first '/'
        netloc, slash, path = rest.partition("/")
        rest = netloc if "@" in netloc else ""
        tail = slash + path
    else:  # the last '@' wins, so a password holding an unescaped '/' or '@' is still hidden
        tail = ""
    if not sep or "@" not in rest:
        return url
    userinfo, host = rest.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    return f"{scheme}://{user + ':***' if has_password else '***'}@{host}{tail}"


@dataclass(frozen=True, repr=False)
class StoreAddress:
    """Everything a Ray actor needs to reconnect to a run's store (cheap to pickle)."""
    url: str
    run_id: str
    capacity_states: int
    chunk_states: int

    def __repr__(self) -> str:  # Ray logs reprs: never print the password
        return (f"StoreAddress(url={mask_url(self.url)!r}, run_id={self.run_id!r}, "
                f"capacity_states={self.capacity_states}, chunk_states={self.chunk_states})")


def _connect(url: str) -> redis.Redis:
    where = mask_url(url)
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                     socket_timeout=CONNECT_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        try:
            probe.ping()
        finally:
            probe.close()
    except ValueError as exc:
        raise StoreError(f"store.redis_url {where} is not a usable Redis URL ({exc}): use "
                         "redis://[:password@]host:port/db, rediss://... or unix:///path.sock") from None
    except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
        raise StoreError(f"Redis at {where} rejected the credentials ({exc}): "
                         "fix the user/password in store.redis_url") from None
    except redis.ResponseError as exc:  # NOAUTH: a password is required but none was given
        raise StoreError(f"Redis at {where} refused PING ({exc}): "
                         "put the password in store.redis_url (redis://:PASSWORD@host:port/0)") from None
    except redis.RedisError as exc:
        raise StoreError(f"cannot reach Redis at {where} ({exc}): {_UNREACHABLE_FIX}") from None
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                socket_timeout=OP_TIMEOUT_S, health_check_interval=30)


class ReplayStore:
    """Bounded ring of ceil(capacity_states / chunk_states) chunk slots for one run."""

    def __init__(self, url: str, run_id: str, capacity_states: int, chunk_states: int):
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise StoreError(f"run name {run_id!r} is not usable as a store namespace (kd:RUN:*): "
                             "use 1-128 letters, digits, '.', '_' or '-' (head.run_name)")
        if min(int(capacity_states), int(chunk_states)) < 1:
            raise StoreError(f"store capacity_states={capacity_states} and chunk_states="
                             f"{chunk_states} must both be positive: fix the store config")
        self.address = StoreAddress(url, run_id, int(capacity_states), int(chunk_states))
        self.num_slots = math.ceil(self.address.capacity_states / self.address.chunk_states)
        self._where = mask_url(url)
        self._prefix = f"kd:{run_id}:"
        self._ring_full = False  # once every slot was written, sampling skips reading the counter
        self._redis = _connect(url)
        self._check_layout(claim=False)

    @classmethod
    def from_address(cls, address: StoreAddress) -> "ReplayStore":
        return cls(address.url, address.run_id, address.capacity_states, address.chunk_states)

    def __reduce__(self):  # pickling (e.g. into a Ray actor) reconnects from the address
        return (ReplayStore.from_address, (self.address,))

    def _key(self, name: str) -> str:
        return self._prefix + name

    @contextmanager
    def _guard(self, action: str):
        try:
            yield
        except redis.ResponseError as exc:
            if "maxmemory" in str(exc) or str(exc).startswith("OOM"):
                raise StoreError(f"Redis at {self._where} is out of memory while {action}: raise "
                                 "its maxmemory or lower store.capacity_states") from exc
            raise StoreError(f"Redis at {self._where} refused {action} ({exc})") from exc
        except redis.RedisError as exc:
            raise StoreError(f"lost Redis at {self._where} while {action} ({exc}): "
                             "check that it is still running") from exc

    def _check_layout(self, claim: bool) -> None:
        # A writer with other sizes would silently scramble the ring. Only writers claim the
        # layout, so a connection check (constructing and closing a store) leaves no keys behind.
        layout = json.dumps({"num_slots": self.num_slots, "chunk_states": self.address.chunk_states})
        with self._guard("checking the run layout"):
            pipe = self._redis.pipeline()
            if claim:
                pipe.setnx(self._key("layout"), layout)
            stored = pipe.get(self._key("layout")).execute()[-1]
        if stored is not None and stored.decode() != layout:
            raise StoreError(f"run {self.address.run_id!r} in Redis at {self._where} has layout "
                             f"{stored.decode()}, this store wants {layout}: use the run's original "
                             "store.capacity_states/chunk_states, a new run name, or clear the run")
        self._layout_claimed = claim

    def write_chunk(self, arrays: dict[str, np.ndarray], meta: dict) -> int:
        """Store one chunk; returns its 0-based sequence number (its slot is that % num_slots)."""
        return self.write_chunks([(arrays, meta)])[0]

    def write_chunks(self, chunks: list[tuple[dict[str, np.ndarray], dict]]) -> list[int]:
        """Store several chunks in two round trips: reserve k sequence numbers, then one MULTI."""
        if not chunks:
            return []
        blobs = [encode_chunk(arrays, meta) for arrays, meta in chunks]  # fail before reserving
        states = [self._count_states(arrays) for arrays, _ in chunks]
        if not self._layout_claimed:
            self._check_layout(claim=True)
        with self._guard("writing chunks"):
            end = self._redis.incrby(self._key("chunks"), len(blobs))
            seqs = list(range(end - len(blobs), end))
            pipe = self._redis.pipeline(transaction=True)
            for seq, blob, n in zip(seqs, blobs, states):
                slot = seq % self.num_slots
                pipe.set(self._key(f"slot:{slot}"), blob)
                pipe.hset(self._key("slot_bytes"), slot, len(blob))
                pipe.hset(self._key("slot_states"), slot, n)
            pipe.incrby(self._key("states"), sum(states))
            pipe.execute()
        return seqs

    def _count_states(self, arrays: dict[str, np.ndarray]) -> int:
        lengths = {len(a) if np.ndim(a) else -1 for a in arrays.values()}
        if len(lengths) != 1 or -1 in lengths or next(iter(lengths)) > self.address.chunk_states:
            raise StoreError(f"chunk arrays have leading sizes {sorted(lengths)}: all arrays need "
                             f"the same number of states, at most store.chunk_states="
                             f"{self.address.chunk_states}")
        return lengths.pop()

    def sample(self, batch_size: int, rng: np.random.Generator,
               chunks_per_sample: int = 4) -> dict[str, np.ndarray] | None:
        """batch_size states drawn uniformly with replacement from chunks_per_sample random filled
        slots; None while the store holds no states yet (callers wait and retry)."""
        with self._guard("sampling"):
            filled = self.num_slots if self._ring_full else \
                min(int(self._redis.get(self._key("chunks")) or 0), self.num_slots)
            self._ring_full = filled == self.num_slots
            if filled == 0:
                return None
            slots = rng.choice(filled, size=min(chunks_per_sample, filled), replace=False)
            blobs = self._redis.mget([self._key(f"slot:{s}") for s in slots])
        # A slot reserved but not yet written reads as None: skip it.
        parts = [decode_chunk(b)[1] for b in blobs if b is not None]
        sizes = [self._states_in(p) for p in parts]
        parts = [p for p, n in zip(parts, sizes) if n]
        if not parts:
            self._ring_full = False  # the run may have been cleared elsewhere: re-read the counter
            return None
        sizes = [n for n in sizes if n]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        picks = rng.integers(0, starts[-1], size=batch_size)
        owner = np.searchsorted(starts, picks, side="right") - 1
        batch = {}
        for name, first in parts[0].items():
            out = np.empty((batch_size, *first.shape[1:]), dtype=first.dtype)
            for i, part in enumerate(parts):  # gather straight from each chunk: no big concatenate
                array = part.get(name)
                if (part.keys() != parts[0].keys() or array.shape[1:] != first.shape[1:]
                        or array.dtype != first.dtype):
                    raise StoreError(f"chunks of run {self.address.run_id!r} disagree on array "
                                     f"{name!r}: write one layout per run (use a run_id per task)")
                mine = owner == i
                out[mine] = array[picks[mine] - starts[i]]
            batch[name] = out
        return batch

    def _states_in(self, arrays: dict[str, np.ndarray]) -> int:
        lengths = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        if len(lengths) > 1 or -1 in lengths:
            raise CorruptChunkError(f"corrupt replay chunk in run {self.address.run_id!r}: arrays "
                                    "disagree on the number of states; clear the run's namespace "
                                    "or start a new run")
        return lengths.pop() if lengths else 0

    def stats(self) -> dict:
        with self._guard("reading stats"):
            chunks, states, slot_bytes, slot_states = self._redis.pipeline(transaction=False) \
                .get(self._key("chunks")).get(self._key("states")) \
                .hvals(self._key("slot_bytes")).hvals(self._key("slot_states")).execute()
        return {"chunks_written": int(chunks or 0), "states_written": int(states or 0),
                "states_stored": sum(map(int, slot_states)), "bytes_stored": sum(map(int, slot_bytes)),
                "num_slots": self.num_slots, "capacity_states": self.address.capacity_states}

    def sync_sampled(self, sampled: int) -> int:
        """Report the learner's total samples; returns states written so far (one round trip)."""
        with self._guard("syncing the rate limiter"):
            _, states = self._redis.pipeline(transaction=False) \
                .set(self._key("sampled"), int(sampled)).get(self._key("states")).execute()
        return int(states or 0)

    def limiter_counts(self) -> tuple[int, int]:
        """(states written, states sampled by the learner): what the rate limiter needs."""
        with self._guard("reading rate-limiter counters"):
            states, sampled = self._redis.mget([self._key("states"), self._key("sampled")])
        return int(states or 0), int(sampled or 0)

    def publish_weights(self, version: int, blob: bytes) -> None:
        """Replace the run's weights; version and blob change together (one HSET, last write wins)."""
        with self._guard("publishing weights"):
            self._redis.hset(self._key("weights"), mapping={"version": int(version), "blob": blob})

    def fetch_weights(self, newer_than: int = -1) -> tuple[int, bytes] | None:
        """(version, blob) if the published version is > newer_than, else None (one cheap HGET)."""
        with self._guard("fetching weights"):
            current = self._redis.hget(self._key("weights"), "version")
            if current is None or int(current) <= newer_than:
                return None
            version, blob = self._redis.hmget(self._key("weights"), ["version", "blob"])
        return (int(version), blob) if version is not None else None

    def set_meta(self, meta: dict) -> None:
        try:
            encoded = json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run metadata is not JSON-serialisable ({exc}): "
                             "pass only str/int/float/bool/list/dict values") from None
        with self._guard("writing run metadata"):
            self._redis.set(self._key("meta"), encoded)

    def get_meta(self) -> dict:
        with self._guard("reading run metadata"):
            raw = self._redis.get(self._key("meta"))
        try:
            return json.loads(raw) if raw is not None else {}
        except ValueError:
            raise StoreError(f"run metadata of {self.address.run_id!r} in Redis at {self._where} is "
                             "not JSON: clear the run's namespace or start a new run") from None

    def clear(self) -> None:
        """Delete this run's keys only (other runs on the same server are untouched)."""
        with self._guard("clearing the run"):
            batch = []
            for key in self._redis.scan_iter(match=self._prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    self._redis.delete(*batch)
                    batch.clear()
            if batch:
                self._redis.delete(*batch)
        self._ring_full = self._layout_claimed = False

    def close(self) -> None:
        self._redis.close()

    def __enter__(self) -> "ReplayStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
