"""The ``store`` section (the Redis ring of labelled states) and the ``limiter`` section (how
fast the learner may sample what actors write; kd_system/replay/rate_limit.py)."""
from __future__ import annotations

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from kd_system.config_base import Number, Section

REDIS_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_RECONNECT_S = 60.0  # also StoreAddress's default, so addresses built by hand behave like a run's


class StoreConfig(Section):
    """The Redis ring of labelled states that actors write and the learner samples."""
    redis_url: StrictStr | None = Field(None, description=(
        "null: the head starts a private redis-server; env:NAME reads the URL from $NAME "
        "(kd_system/launch/secrets.py), keeping the password out of files"))
    capacity_states: StrictInt = Field(200_000, gt=0, description="states the ring holds before overwriting the oldest")
    chunk_states: StrictInt = Field(256, gt=0, description="states per chunk, the unit actors write")
    clear_on_start: StrictBool = Field(True, description="drop what a previous run with the same name left in the store")
    max_corrupt_share: Number = Field(0.01, ge=0, le=1, description=(
        "chunks that fail to decode are skipped and counted (summary: corrupt_chunks_skipped); the run ends "
        "only when more than this share of the chunks the learner read were corrupt"))
    reconnect_s: Number = Field(DEFAULT_RECONNECT_S, ge=0, description=(
        "how long each component keeps retrying, with backoff, a Redis that stopped answering before "
        "the run ends; a private redis-server that died is restarted by the head, usually within a "
        "second or two (its replay buffer refills). 0: end at the first lost connection"))

    @field_validator("redis_url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("env:") and value.split("://")[0] not in REDIS_SCHEMES:
            raise ValueError("store.redis_url must start with redis://, rediss:// or unix://, or name a variable "
                             "as env:NAME")
        return value

    @model_validator(mode="after")
    def _two_chunks(self) -> StoreConfig:
        if self.capacity_states < 2 * self.chunk_states:
            raise ValueError("store.capacity_states must hold at least two chunks (2 × store.chunk_states)")
        return self


class LimiterConfig(Section):
    """Samples-per-insert rate limiting; RunConfig checks it cannot deadlock."""
    min_size_to_sample: StrictInt = Field(5_000, description="the learner waits until the store holds this many states")
    samples_per_insert: Number = Field(32.0, description=(
        "replay ratio: states sampled by the learner per state written"))
    error_buffer: Number | None = Field(None, description=(
        "null: only the learner waits; a number: how far the ratio may drift before actors wait too"))
