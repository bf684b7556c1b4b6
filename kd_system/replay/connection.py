"""Where a run's store lives and how to reach it: the address, URL masking, the connection and
its error translation. The table, the weights channel and the run metadata all build on it.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.retry import Retry

from kd_system.errors import StoreError
from kd_system.replay.config import DEFAULT_RECONNECT_S
from kd_system.replay.urls import mask_url  # noqa: F401  (re-exported: where callers look for it)

CONNECT_TIMEOUT_S = 2.5
OP_TIMEOUT_S = 30.0  # a slow MGET of Atari chunks is fine; a dead server must not hang forever
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # no ':' or glob chars: clear() SCANs kd:{run_id}:*
_UNREACHABLE_FIX = "start Redis there, fix store.redis_url, or leave it unset so kd-system starts a local one"
# Backoff between reconnect attempts: 0.05 s doubling to 2 s, with jitter so many actors do not
# reconnect in lock step. A restarted private server is found within about 2 s of coming back.
_BACKOFF_BASE_S, _BACKOFF_CAP_S = 0.05, 2.0
T = TypeVar("T")


@dataclass(frozen=True, repr=False)
class StoreAddress:
    """Everything a Ray actor needs to reconnect to a run's store (cheap to pickle)."""
    url: str
    run_id: str
    capacity_states: int
    chunk_states: int
    # Chunks that fail to decode are skipped and counted; the run ends only above this share of reads.
    max_corrupt_share: float = 0.01
    # How long a command keeps retrying a Redis that stopped answering (store.reconnect_s); 0: never.
    reconnect_s: float = DEFAULT_RECONNECT_S

    def __repr__(self) -> str:  # Ray logs reprs: never print the password
        return (f"StoreAddress(url={mask_url(self.url)!r}, run_id={self.run_id!r}, "
                f"capacity_states={self.capacity_states}, chunk_states={self.chunk_states}, "
                f"reconnect_s={self.reconnect_s:g})")


class RetryFor(Retry):
    """redis-py's Retry (exponential backoff, reconnecting the connection between attempts), ended
    by a time limit instead of a count.

    redis-py's own loop does the work: it disconnects the broken connection (the ``fail``
    callback), backs off and re-sends; pipelines and MULTI blocks are re-sent whole. A count of
    attempts cannot express "for 60 seconds": an attempt against a refused port fails at once, one
    against an unreachable host only after the connect timeout. So the count is unlimited and the
    callback, after redis-py's cleanup, re-raises the error once the limit has passed. The limit is
    local to each call, so threads sharing a client do not share a deadline. A command whose reply
    was lost may run twice: a re-sent insert skips a ring slot and counts its states twice, so the
    limiter lets the learner sample a little more from that buffer; rare, and only at a reconnect.
    Wrong credentials (a server restarted with another password) do not heal by waiting: no retry.
    """

    def __init__(self, limit_s: float):
        super().__init__(EqualJitterBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S), retries=-1)
        self.limit_s = float(limit_s)

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any],
                        is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> T:
        deadline = time.monotonic() + self.limit_s

        def fail_then_stop_at_deadline(error: Exception, *count: int) -> None:
            fail(error, *count)
            if time.monotonic() >= deadline or isinstance(
                    error, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
                raise error

        return super().call_with_retry(do, fail_then_stop_at_deadline, is_retryable, with_failure_count)


def connect(url: str, reconnect_s: float = DEFAULT_RECONNECT_S) -> redis.Redis:
    """A client for ``url`` after one fast PING, so a wrong URL or password fails at once with a fix.
    Later commands on it retry a lost connection for up to ``reconnect_s`` seconds (see RetryFor)."""
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
    retry = RetryFor(reconnect_s) if reconnect_s > 0 else Retry(NoBackoff(), 0)
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=OP_TIMEOUT_S,
                                health_check_interval=30, retry=retry)


def check_reachable(url: str) -> None:
    """Fail now, with the fix, if Redis at ``url`` cannot be used; writes nothing."""
    connect(url).close()


class Namespace:
    """One run's keys, kd:{run_id}:*, on one connection; Redis errors become one-line StoreErrors."""

    def __init__(self, address: StoreAddress):
        if not isinstance(address.run_id, str) or not _RUN_ID.fullmatch(address.run_id):
            raise StoreError(f"run name {address.run_id!r} is not usable as a store namespace (kd:RUN:*): "
                             "use 1-128 letters, digits, '.', '_' or '-' (head.run_name)")
        self.address = address
        self.where = mask_url(address.url)
        self.prefix = f"kd:{address.run_id}:"
        self.redis = connect(address.url, address.reconnect_s)

    def key(self, name: str) -> str:
        return self.prefix + name

    @contextmanager
    def guard(self, action: str):
        try:
            yield
        except redis.ResponseError as exc:
            if "maxmemory" in str(exc) or str(exc).startswith("OOM"):
                raise StoreError(f"Redis at {self.where} is out of memory while {action}: raise "
                                 "its maxmemory or lower store.capacity_states") from exc
            raise StoreError(f"Redis at {self.where} refused {action} ({exc})") from exc
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
            raise StoreError(f"Redis at {self.where} rejected the credentials while {action} ({exc}): "
                             "restart it with the password in store.redis_url") from exc
        except redis.RedisError as exc:
            raise StoreError(f"lost Redis at {self.where} while {action} ({exc}), for longer than "
                             f"store.reconnect_s={self.address.reconnect_s:g}s: check that it is still "
                             "running") from exc

    def delete_all(self) -> None:
        """Delete this run's keys only (other runs on the same server are untouched)."""
        with self.guard("clearing the run"):
            batch = []
            for key in self.redis.scan_iter(match=self.prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    self.redis.delete(*batch)
                    batch.clear()
            if batch:
                self.redis.delete(*batch)

    def close(self) -> None:
        self.redis.close()
