"""What lives beside a run's data: the student's published weights and the run's metadata.

Each is its own small object on the run's namespace, so an actor that only reads weights, or a
head that only describes the run, holds no replay-table machinery.
"""
from __future__ import annotations

import json

from kd_system.errors import StoreError
from kd_system.replay.connection import Namespace, StoreAddress


class WeightsChannel:
    """Versioned student weights: the learner publishes, actors acting with the student poll."""

    def __init__(self, address: StoreAddress):
        self._ns = Namespace(address)
        self.address = address

    def __reduce__(self):  # pickling (e.g. into a Ray actor) reconnects from the address
        return (WeightsChannel, (self.address,))

    def publish(self, version: int, blob: bytes) -> None:
        """Replace the run's weights; version and blob change together (one HSET, last write wins)."""
        with self._ns.guard("publishing weights"):
            self._ns.redis.hset(self._ns.key("weights"), mapping={"version": int(version), "blob": blob})

    def fetch(self, newer_than: int = -1, other_than: int | None = None) -> tuple[int, bytes] | None:
        """(version, blob) if the published version is > newer_than (or, given ``other_than``, is any
        version but that one: a learner restored from a snapshot publishes an older version than the
        dead one did), else None (one cheap HGET). None too while nothing is published: before the
        learner's first publish, or after a private redis-server restarted empty, until its next one
        (actors keep their weights)."""
        with self._ns.guard("fetching weights"):
            current = self._ns.redis.hget(self._ns.key("weights"), "version")
            if current is None or (int(current) == other_than if other_than is not None else int(current) <= newer_than):
                return None
            version, blob = self._ns.redis.hmget(self._ns.key("weights"), ["version", "blob"])
        return (int(version), blob) if version is not None else None

    def close(self) -> None:
        self._ns.close()


class RunMetadata:
    """A JSON description of the run (env, teacher, student network) for any process to read."""

    def __init__(self, address: StoreAddress):
        self._ns = Namespace(address)

    def write(self, meta: dict) -> None:
        try:
            encoded = json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"run metadata is not JSON-serialisable ({exc}): "
                             "pass only str/int/float/bool/list/dict values") from None
        with self._ns.guard("writing run metadata"):
            self._ns.redis.set(self._ns.key("meta"), encoded)

    def read(self) -> dict:
        with self._ns.guard("reading run metadata"):
            raw = self._ns.redis.get(self._ns.key("meta"))
        try:
            return json.loads(raw) if raw is not None else {}
        except ValueError:
            raise StoreError(f"run metadata of {self._ns.address.run_id!r} in Redis at {self._ns.where} is "
                             "not JSON: clear the run's namespace or start a new run") from None

    def close(self) -> None:
        self._ns.close()
