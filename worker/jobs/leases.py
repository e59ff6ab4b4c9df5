"""Release campaign stock leases that expired without the item being consumed."""

from __future__ import annotations

from .. import db
from .base import JobContext

NAME = "lease_recovery"


def run_once(ctx: JobContext) -> None:
    """One pass: expired, unconsumed leases released in batches of CLEANUP_BATCH_SIZE rows,
    one transaction per batch, the stop flag checked between batches."""
    if ctx.dry_run:
        row = ctx.conn.execute(db.query("count_expired_leases")).fetchone()
        ctx.log.info("lease_recovery_would_release", expired=row["n"] if row else 0)
        return
    recovered = batches = 0
    while not ctx.should_stop():
        released = _release_batch(ctx)
        if released is None:
            break
        recovered += released
        batches += 1
        if released < ctx.settings.cleanup_batch_size:
            break
    ctx.result.details.update(recovered=recovered, batches=batches)
    ctx.log.info(
        "lease_recovery_completed",
        recovered=recovered,
        batches=batches,
        elapsed_seconds=ctx.elapsed_s(),
    )


def _release_batch(ctx: JobContext) -> int | None:
    """Release up to one batch; the number released, or None if the batch failed."""
    with ctx.item("lease batch", "lease_recovery_batch_failed") as batch, ctx.conn.transaction():
        cursor = ctx.conn.execute(
            db.query("release_expired_leases"), {"limit": ctx.settings.cleanup_batch_size}
        )
    if batch.failed:
        return None
    released = max(cursor.rowcount, 0)
    ctx.result.ok(released)  # each released lease is one item of the run
    return released
