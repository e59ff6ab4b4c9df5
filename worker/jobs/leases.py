"""Release campaign stock leases that expired without the item being consumed."""

from __future__ import annotations

import time

from .. import db
from ..batches import BatchSizer
from .base import JobContext

NAME = "lease_recovery"


def run_once(ctx: JobContext) -> None:
    """One pass: expired, unconsumed leases released in batches, one transaction per batch,
    the stop flag checked between batches. Batches are sized as cleanup's are: from
    CLEANUP_BATCH_SIZE rows, adapting so each takes about CLEANUP_BATCH_TARGET_MS."""
    if ctx.dry_run:
        row = ctx.conn.execute(db.query("replenish.count_expired_leases")).fetchone()
        expired = row["n"] if row else 0
        ctx.result.details.update(would_release=expired)
        ctx.log.info("lease_recovery_would_release", expired=expired)
        return
    recovered = batches = 0
    sizer = BatchSizer.from_settings(ctx.settings)
    while not ctx.should_stop():
        size, batch_started = sizer.size, time.monotonic()
        released = _release_batch(ctx, size)
        if released is None:
            break
        recovered += released
        batches += 1
        if released < size:
            break
        sizer.next_size(released, time.monotonic() - batch_started)
    ctx.result.details.update(recovered=recovered, batches=batches)
    ctx.log.info(
        "lease_recovery_completed",
        recovered=recovered,
        batches=batches,
        elapsed_seconds=ctx.elapsed_s(),
    )


def _release_batch(ctx: JobContext, size: int) -> int | None:
    """Release up to `size` leases; the number released, or None if the batch failed."""
    with ctx.item("lease batch", "lease_recovery_batch_failed") as batch, ctx.transaction():
        cursor = ctx.conn.execute(db.query("replenish.release_expired_leases"), {"limit": size})
    if batch.failed:
        return None
    released = max(cursor.rowcount, 0)
    ctx.result.ok(released)  # each released lease is one item of the run
    return released
