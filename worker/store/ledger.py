"""`worker_jobs` and `worker_job_runs` through a run's lifecycle: one function per named
query of `ledger.sql` (ARCHITECTURE.md, "The schedule ledger"). The rules that choose what
a claim does are `worker.claims`; this module only reads and writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .. import db
from ..db import Conn
from ..vocab import Claim, RunStatus


def register_job(
    conn: Conn,
    job: str,
    service: str,
    schedule: str,
    first_due: datetime,
    max_attempts: int,
    *,
    source: str = "system",
    declared_in: str | None = None,
    period_s: int | None = None,
) -> dict[str, Any]:
    """Upsert the job's row; a changed schedule text moves `next_due_at` to `first_due`.
    `period_s`, the schedule's period, is what the watchdog's overdue grace is taken from."""
    row = conn.execute(
        db.query("ledger.register_job"),
        {
            "job": job,
            "service": service,
            "schedule": schedule,
            "first_due": first_due,
            "max_attempts": max_attempts,
            "source": source,
            "declared_in": declared_in,
            "period_s": period_s,
        },
    ).fetchone()
    assert row is not None
    return row


def peek_job(conn: Conn, job: str) -> dict[str, Any] | None:
    """The job's row as a claim reads it (with the database's `now`), or None if unknown."""
    return conn.execute(db.query("ledger.peek_job"), {"job": job}).fetchone()


def claim_job(conn: Conn, params: dict[str, Any]) -> dict[str, Any] | None:
    """The claim's one conditional statement (`worker.claims.claim` builds `params`): the
    granted row (`run_id`, `started_at`, `abandoned`), or None when the row changed."""
    return conn.execute(db.query("ledger.claim_job"), params).fetchone()


def skip_missed(
    conn: Conn, job: str, *, next_due_at: datetime, seen_due: datetime, grace_s: float
) -> bool:
    """Move the job's past `seen_due` to `next_due_at` without a run; False if it moved."""
    cursor = conn.execute(
        db.query("ledger.skip_missed"),
        {"job": job, "next_due_at": next_due_at, "seen_due": seen_due, "grace_s": grace_s},
    )
    return cursor.rowcount == 1


def request_startup_runs(
    conn: Conn, jobs: list[str], *, process_id: int, window_s: float, alive_s: float
) -> list[str]:
    """Ask for a start-up run of each of `jobs` unless one began within `window_s` or
    another live process holds it; the jobs a request was set for."""
    rows = conn.execute(
        db.query("ledger.request_startup_runs"),
        {"jobs": jobs, "window_s": window_s, "process_id": process_id, "alive_s": alive_s},
    ).fetchall()
    return [row["job"] for row in rows]


def request_run(conn: Conn, job: str, kwargs: dict[str, Any] | None = None) -> bool:
    """Ask a running service to run `job` now (runs a paused job too), with `kwargs` for
    that run when given; False if unknown, or (with `kwargs`) if another request waits."""
    params = {"job": job, "kwargs": None if kwargs is None else Jsonb(kwargs)}
    return conn.execute(db.query("ledger.request_run"), params).fetchone() is not None


@dataclass(frozen=True)
class PauseChange:
    """What a pause or resume did: `changed` false when the job already was so;
    `paused_at`, when the job had been paused (None: it was not)."""

    changed: bool
    paused_at: datetime | None


def set_paused(conn: Conn, job: str, paused: bool) -> PauseChange:
    """Pause or resume `job` (a resume restarts its staleness clock)."""
    row = conn.execute(db.query("ledger.set_paused"), {"job": job, "paused": paused}).fetchone()
    assert row is not None
    return PauseChange(bool(row["changed"]), row["paused_at"])


def retire_undeclared(conn: Conn, dead_after_s: float) -> list[dict[str, Any]]:
    """Retire the declared and built-in jobs no live process runs any more (while a live
    process serves their service); the `job, service` rows retired."""
    return conn.execute(
        db.query("ledger.retire_undeclared"), {"dead_after_s": dead_after_s}
    ).fetchall()


@dataclass(frozen=True)
class Forgotten:
    """What `forget` did: whether the row went, and the history deleted and kept."""

    forgotten: bool
    runs_deleted: int
    alerts_deleted: int
    runs_kept: int
    alerts_kept: int


def forget(conn: Conn, job: str, *, history: bool) -> Forgotten:
    """Delete the job's ledger row (not while a run of it goes on); with `history`, its runs,
    alerts and recorded changes too. Its open overdue streak goes either way."""
    row = conn.execute(db.query("ledger.forget_job"), {"job": job, "history": history}).fetchone()
    assert row is not None
    return Forgotten(
        forgotten=bool(row["forgotten"]),
        runs_deleted=row["runs_deleted"],
        alerts_deleted=row["alerts_deleted"],
        runs_kept=row["runs_kept"] - row["runs_deleted"],
        alerts_kept=row["alerts_kept"] - row["alerts_deleted"],
    )


@dataclass(frozen=True)
class Due:
    """What the loop reads each time it wakes: the database's clock, the jobs to claim now,
    the next future due time (None: no job of these services is due later), and the dead
    runs this read reaped (`id, job, attempt, trigger, scheduled_for, host, pid, owed,
    max_attempts`)."""

    now: datetime
    next_wake: datetime | None
    rows: list[dict[str, Any]]
    reaped: list[dict[str, Any]]


@dataclass(frozen=True)
class Beat:
    """A process's heartbeat, carried by its loop's read once a poll."""

    process_id: int
    running: list[dict[str, Any]]


def due_jobs(conn: Conn, services: list[str], limit: int, beat: Beat | None = None) -> Due:
    """The released jobs of `services` due, requested or owed now (at most `limit`), oldest
    first; with `beat`, also the process's heartbeat and the reaping of dead runs."""
    rows = conn.execute(
        db.query("ledger.due_jobs"),
        {
            "services": services,
            "limit": limit,
            "beat": beat is not None,
            "process_id": 0 if beat is None else beat.process_id,
            "running": Jsonb([] if beat is None else beat.running),
        },
    ).fetchall()
    jobs = [row for row in rows if row["job"] is not None]
    return Due(rows[0]["now"], rows[0]["next_wake"], jobs, list(rows[0]["reaped"]))


def renew(conn: Conn, claim: Claim, lease_s: float) -> bool:
    """Extend the lease; False when it was lost (expired and taken over, or released)."""
    row = conn.execute(
        db.query("ledger.renew_lease"),
        {"job": claim.job, "owner": claim.owner, "run_id": claim.run.id, "lease_s": lease_s},
    ).fetchone()
    return row is not None


def request_cancel(conn: Conn, run_id: int) -> dict[str, Any] | None:
    """Flag a running run to stop; the run's `id, job, running, cancel_requested_at`, or None
    when there is no such run (`running` false: it had ended, nothing was flagged)."""
    return conn.execute(db.query("ledger.request_cancel"), {"id": run_id}).fetchone()


def run_progress(
    conn: Conn, run_id: int, output: str | None, done: int | None, total: int | None
) -> None:
    """The running run's output so far and progress (nothing once it has ended)."""
    conn.execute(
        db.query("ledger.run_progress"),
        {"id": run_id, "output": db.storable(output), "done": done, "total": total},
    )


def cancel_requested(conn: Conn, run_id: int) -> bool:
    row = conn.execute(db.query("ledger.cancel_requested"), {"id": run_id}).fetchone()
    return bool(row and row["cancel"])


@dataclass(frozen=True)
class RunRecord:
    """What `finish` writes of a run: how it ended, its counts and output."""

    status: RunStatus
    duration_ms: int
    total: int
    succeeded: int
    failed: int
    error: str | None
    details: dict[str, Any]
    output: str | None
    result: Any


def finish(
    conn: Conn,
    claim: Claim,
    record: RunRecord,
    *,
    alert_rules: tuple[list[str], list[str]] = ([], []),
    owed: bool = False,
    skip_to: datetime | None = None,
) -> list[tuple[str, str]]:
    """Write the outcome of the claim's run and release the lease, in one statement.

    `owed`: the run's occurrence is owed (interrupted, attempts left). `skip_to`: with
    overlap = skip, where an occurrence that fell due during the run moves to.
    Returns the latest alert of each of `alert_rules` (rule names, alert types) for the job,
    as (rule, type): the state the run's alert rules are judged against.
    """
    row = conn.execute(
        db.query("ledger.finish_run"),
        {
            "id": claim.run.id,
            "job": claim.job,
            "owner": claim.owner,
            "status": record.status.value,
            "duration_ms": record.duration_ms,
            "total": record.total,
            "succeeded": record.succeeded,
            "failed": record.failed,
            "error": db.storable(record.error),
            "details": Jsonb(db.storable(record.details)),
            "output": db.storable(record.output),
            "result": None if record.result is None else Jsonb(db.storable(record.result)),
            "alert_rules": alert_rules[0],
            "alert_types": alert_rules[1],
            "owed": owed,
            "skip_to": skip_to,
            "seen_due": claim.next_due_at,
        },
    ).fetchone()
    assert row is not None
    return [(item["rule"], item["type"]) for item in row["latest_rule_alerts"]]


def fence(conn: Conn, job: str, run_id: int, owner: str, idle_timeout_ms: int) -> None:
    """Inside a transaction: end it (SQLSTATE WK001) unless the run still holds the lease."""
    conn.execute(
        db.query("ledger.fence_run"),
        {"job": job, "run_id": run_id, "owner": owner, "idle_timeout_ms": idle_timeout_ms},
    )
