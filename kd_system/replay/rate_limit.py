"""Samples-per-insert rate limiting, in the spirit of Reverb's SampleToInsertRatio limiter.

Let ``slack = samples_per_insert * (inserted - min_size_to_sample) - sampled``: how many
samples the learner is owed. Keeping it inside ``[-error_buffer, +error_buffer]`` keeps the
replay ratio near ``samples_per_insert`` whatever the relative speed of actors and learner:

* the learner waits while the store holds fewer than ``min_size_to_sample`` states, or when a
  batch would push ``slack`` below ``-error_buffer`` (it would over-sample old data);
* actors wait when a write would push ``slack`` above ``+error_buffer`` (they would flood a
  learner that cannot keep up, and the ring would overwrite states never trained on).

With ``error_buffer`` unset only the learner's side applies and actors never wait — the
fastest set-up for wall time, at the cost of env steps.

Both sides can be stuck at once only if the band is narrower than one batch plus one write;
:func:`check_deadlock_free` refuses such configurations up front.
"""
from __future__ import annotations

from dataclasses import dataclass

from kd_system.errors import ConfigError


@dataclass(frozen=True)
class SampleToInsertLimiter:
    min_size_to_sample: int
    samples_per_insert: float
    error_buffer: float | None = None

    def slack(self, inserted: int, sampled: int) -> float:
        return self.samples_per_insert * (inserted - self.min_size_to_sample) - sampled

    def can_sample(self, inserted: int, sampled: int, batch_size: int) -> bool:
        if inserted < self.min_size_to_sample:
            return False
        return self.slack(inserted, sampled) - batch_size >= -(self.error_buffer or 0.0)

    def can_insert(self, inserted: int, sampled: int, states: int) -> bool:
        if self.error_buffer is None or inserted < self.min_size_to_sample:
            return True  # before learning starts, inserting is the only way forward
        return self.slack(inserted, sampled) + self.samples_per_insert * states <= self.error_buffer


def check_deadlock_free(limiter: SampleToInsertLimiter, batch_size: int, write_states: int,
                        capacity_states: int) -> None:
    """Raise ConfigError when the learner and the actors could both wait forever."""
    if limiter.min_size_to_sample > capacity_states:
        raise ConfigError(
            f"limiter.min_size_to_sample={limiter.min_size_to_sample} exceeds store.capacity_states="
            f"{capacity_states}: the store can never hold enough states to start learning; lower it or raise the capacity")
    if limiter.samples_per_insert <= 0:
        raise ConfigError("limiter.samples_per_insert must be > 0")
    if limiter.error_buffer is None:
        return
    # Sampling needs slack >= batch - buffer, inserting needs slack <= buffer - spi * write.
    # If buffer - spi * write < batch - buffer there is a slack value at which neither may move.
    needed = (batch_size + limiter.samples_per_insert * write_states) / 2
    if limiter.error_buffer < needed:
        raise ConfigError(
            f"limiter.error_buffer={limiter.error_buffer:g} would deadlock: with learner.batch_size={batch_size}, "
            f"one actor write of {write_states} states and samples_per_insert={limiter.samples_per_insert:g}, "
            f"actors and learner can both be waiting on each other; set limiter.error_buffer >= {needed:g} "
            "(or null to let only the learner wait)")
