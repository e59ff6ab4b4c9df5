"""Batch sizes that adapt to time, so each batch transaction takes about a target duration."""

from __future__ import annotations

from dataclasses import dataclass

from .settings import Settings

# Bounds around CLEANUP_BATCH_SIZE: never fewer rows than this per batch (unless the setting
# itself is smaller), never more than this many times the setting.
MIN_BATCH_ROWS = 100
MAX_BATCH_FACTOR = 100
# The first batch takes this fraction of CLEANUP_BATCH_SIZE: it measures the table before a
# full-size batch is risked on it. Where expired rows are few and scattered, each one costs a
# page read of its own: 5,000 of them took 0.17 s in one batch, against about 0.03 s once
# the size came from a measurement. On a table where rows are cheap, the doubling per batch
# reaches the full size after a few batches of little cost.
FIRST_BATCH_DIVISOR = 10


@dataclass
class BatchSizer:
    """The size of the next batch: the rows per second measured so far, times the target.

    The rate is a weighted average (`rows` and `seconds` summed, earlier batches weighing
    `memory` times less per batch), so one noisy batch does not swing the size. A batch
    slower than the target is believed at once: the next one is sized from it alone if that
    is smaller. Growth is capped at `max_growth` times per batch, so a size found on a quiet
    table is tried in steps, never in one leap. Pure arithmetic: no clock, no database.
    """

    size: int
    target_s: float
    minimum: int
    maximum: int
    memory: float = 0.5
    max_growth: float = 2.0
    _rows: float = 0.0
    _seconds: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchSizer:
        """Aim at CLEANUP_BATCH_TARGET_MS, from a tenth of CLEANUP_BATCH_SIZE (at least 100
        rows), between 100 rows and 100 x CLEANUP_BATCH_SIZE."""
        configured = settings.cleanup_batch_size
        minimum = min(MIN_BATCH_ROWS, configured)
        return cls(
            size=max(minimum, configured // FIRST_BATCH_DIVISOR),
            target_s=settings.cleanup_batch_target_ms / 1000,
            minimum=minimum,
            maximum=configured * MAX_BATCH_FACTOR,
        )

    @classmethod
    def fixed(cls, size: int) -> BatchSizer:
        """Always `size` rows, whatever the batches take."""
        return cls(size=size, target_s=1.0, minimum=size, maximum=size)

    def next_size(self, rows: int, seconds: float) -> int:
        """Record that the last batch handled `rows` rows in `seconds`; the next batch's size."""
        self._rows = self._rows * self.memory + max(rows, 0)
        self._seconds = self._seconds * self.memory + max(seconds, 0.0)
        if self._seconds <= 0:
            return self.size  # nothing measurable yet
        wanted = self._rows / self._seconds * self.target_s
        if seconds > self.target_s:
            wanted = min(wanted, rows / seconds * self.target_s)
        wanted = min(wanted, self.size * self.max_growth)
        self.size = max(self.minimum, min(self.maximum, int(wanted)))
        return self.size
