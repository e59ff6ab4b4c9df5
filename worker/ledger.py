"""The schedule ledger: one method per named query on `worker_jobs` and `worker_job_runs`.

Nothing else touches those tables' SQL for the run lifecycle; the rules it keeps are in
ARCHITECTURE.md, "The schedule ledger".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from psycopg.types.json import Jsonb

from . import db, schedules
from .db import Conn
from .jobs.base import JobResult, RunStatus, Trigger
from .schedules import Schedule

# A start request is dropped when a start-up run of the job began this recently: replicas
# started together (or a crash loop) make one run, not one each.
STARTUP_REQUEST_WINDOW_S = 30


# RUN_ON_START=false leaves an occurrence this recent alone: a live replica's poll (5 s) or
# whole-second wake-up may be about to claim it.
SKIP_GRACE_S = 6


class Mode(StrEnum):
    """What a claim asks for."""

    SCHEDULED = "scheduled"  # the daemon's wake-up: a due occurrence or a waiting request
    DUE = "due"  # `--once --due`: a due occurrence only
    ONCE = "once"  # `--once`: a run now, honouring the pause
    MANUAL = "manual"  # `worker run JOB`: a run now, even of a paused job


class Refusal(StrEnum):
    """Why a claim gave no run."""

    NOT_DUE = "not_due"
    PAUSED = "paused"  # the occurrence or request was consumed without a run
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    UNKNOWN = "unknown"  # no service has registered the job


@dataclass(frozen=True)
class Run:
    id: int
    started_at: datetime


@dataclass(frozen=True)
class Claim:
    """A granted claim: this process holds the job's lease until it finishes `run`.

    `abandoned` lists the dead runners' runs the claim marked abandoned (`id, host, pid`).
    """

    job: str
    owner: str
    trigger: Trigger
    scheduled_for: datetime | None
    next_due_at: datetime
    paused: bool
    run: Run
    abandoned: list[dict[str, Any]]


def owner() -> str:
    """The lease owner this process writes: `host:pid`."""
    host, pid = db.process_identity()
    return f"{host}:{pid}"


def register(conn: Conn, job: str, service: str, schedule: Schedule) -> dict[str, Any]:
    """Upsert the job's row; a changed schedule recomputes `next_due_at`."""
    now = _now(conn)
    row = conn.execute(
        db.query("register_job"),
        {
            "job": job,
            "service": service,
            "schedule": schedule.text,
            "first_due": schedule.first_due(now),
        },
    ).fetchone()
    assert row is not None
    return row


def claim(
    conn: Conn, job: str, mode: Mode, lease_s: float, seen: dict[str, Any] | None = None
) -> Claim | Refusal:
    """Claim the job's due occurrence or waiting request and start its run, in one
    conditional statement.

    `next_due_at` moves to the first occurrence after now (missed ones coalesce into this
    run), the lease is taken and the run's row inserted; a paused job's occurrence is
    consumed without a run. The schedule is the one the ledger holds, so every replica
    computes the same next time. `seen` is the job's row as the loop just read it
    (`due_jobs`); without it the row is read first.
    """
    row = seen or conn.execute(db.query("peek_job"), {"job": job}).fetchone()
    if row is None or row["next_due_at"] is None:
        return Refusal.UNKNOWN
    due = row["next_due_at"] <= row["now"]
    requested = row["run_requested_at"] is not None and mode is not Mode.DUE
    if not (due or requested or mode in (Mode.ONCE, Mode.MANUAL)):
        return Refusal.NOT_DUE
    if row["leased"]:
        return Refusal.CLAIMED_ELSEWHERE
    trigger = _trigger(mode, row, due=due, requested=requested)
    runs = not row["paused"] or (trigger is Trigger.MANUAL and mode is not Mode.ONCE)
    if not runs and not due and mode is Mode.ONCE:
        return Refusal.PAUSED  # nothing of the ledger's to consume
    # A manual run consumes a due occurrence too, but serves no occurrence of its own.
    scheduled_for = row["next_due_at"] if due and trigger is not Trigger.MANUAL else None
    params = _claim_params(row, mode, trigger, runs, scheduled_for, lease_s)
    granted = conn.execute(db.query("claim_job"), params).fetchone()
    if granted is None:
        return Refusal.CLAIMED_ELSEWHERE  # another runner claimed it between our two reads
    if not runs:
        return Refusal.PAUSED
    run = Run(granted["run_id"], granted["started_at"])
    return Claim(
        job,
        params["owner"],
        trigger,
        scheduled_for,
        params["next_due_at"],
        row["paused"],
        run,
        list(granted["abandoned"]),
    )


def _claim_params(
    row: dict[str, Any],
    mode: Mode,
    trigger: Trigger,
    runs: bool,
    scheduled_for: datetime | None,
    lease_s: float,
) -> dict[str, Any]:
    host, pid = db.process_identity()
    return {
        "job": row["job"],
        "next_due_at": schedules.parse(row["schedule"]).next_due(row["next_due_at"], row["now"]),
        "lease": runs,
        "owner": owner(),
        "lease_s": lease_s,
        "seen_due": row["next_due_at"],
        "seen_paused": row["paused"],
        "forced": mode in (Mode.ONCE, Mode.MANUAL),
        "trigger": trigger.value,
        "host": host,
        "pid": pid,
        "scheduled_for": scheduled_for,
    }


def _trigger(mode: Mode, row: dict[str, Any], *, due: bool, requested: bool) -> Trigger:
    if mode in (Mode.ONCE, Mode.MANUAL):
        return Trigger.MANUAL
    if requested:
        return Trigger(row["run_requested_by"] or Trigger.MANUAL)
    return Trigger.SCHEDULE


def skip_missed(conn: Conn, job: str) -> datetime | None:
    """Move a past `next_due_at` to the next future occurrence without a run.

    Returns the skipped due time, or None when nothing was missed.
    """
    row = conn.execute(db.query("peek_job"), {"job": job}).fetchone()
    if row is None or row["next_due_at"] is None or row["next_due_at"] > row["now"]:
        return None
    next_due_at = schedules.parse(row["schedule"]).next_due(row["next_due_at"], row["now"])
    cursor = conn.execute(
        db.query("skip_missed"),
        {
            "job": job,
            "next_due_at": next_due_at,
            "seen_due": row["next_due_at"],
            "grace_s": SKIP_GRACE_S,
        },
    )
    return row["next_due_at"] if cursor.rowcount == 1 else None


def request_startup_runs(conn: Conn, jobs: list[str]) -> list[str]:
    """RUN_ON_START=true: ask for a run of each job; returns the jobs a request was set for."""
    rows = conn.execute(
        db.query("request_startup_runs"), {"jobs": jobs, "window_s": STARTUP_REQUEST_WINDOW_S}
    ).fetchall()
    return [row["job"] for row in rows]


def request_run(conn: Conn, job: str) -> bool:
    """Ask a running service to run `job` now (runs a paused job too); False if unknown."""
    return conn.execute(db.query("request_run"), {"job": job}).fetchone() is not None


@dataclass(frozen=True)
class Due:
    """What the loop reads each time it wakes: the database's clock, the jobs to claim now,
    and the next future due time (None: no job of these services is due later)."""

    now: datetime
    next_wake: datetime | None
    rows: list[dict[str, Any]]


def due_jobs(conn: Conn, services: list[str], limit: int) -> Due:
    """The unleased jobs of `services` due or requested now (at most `limit`), oldest first."""
    rows = conn.execute(db.query("due_jobs"), {"services": services, "limit": limit}).fetchall()
    jobs = [row for row in rows if row["job"] is not None]
    return Due(rows[0]["now"], rows[0]["next_wake"], jobs)


def renew(conn: Conn, claim: Claim, lease_s: float) -> bool:
    """Extend the lease; False when it was lost (expired and taken over, or released)."""
    row = conn.execute(
        db.query("renew_lease"),
        {"job": claim.job, "owner": claim.owner, "run_id": claim.run.id, "lease_s": lease_s},
    ).fetchone()
    return row is not None


def finish(
    conn: Conn,
    claim: Claim,
    *,
    status: RunStatus,
    result: JobResult,
    duration_ms: int,
    error: str | None,
    alert_rules: tuple[list[str], list[str]] = ([], []),
) -> list[tuple[str, str]]:
    """Write the outcome of the claim's run and release the lease, in one statement.

    Returns the latest alert of each of `alert_rules` (rule names, alert types) for the job,
    as (rule, type): the state the run's alert rules are judged against.
    """
    details: dict[str, Any] = dict(result.details)
    if result.failures:
        details["failures"] = result.failures
    row = conn.execute(
        db.query("finish_run"),
        {
            "id": claim.run.id,
            "job": claim.job,
            "owner": claim.owner,
            "status": status.value,
            "duration_ms": duration_ms,
            "total": result.total,
            "succeeded": result.succeeded,
            "failed": result.failed,
            "error": error,
            "details": Jsonb(details),
            "output": result.output,
            "result": None if result.result is None else Jsonb(result.result),
            "alert_rules": alert_rules[0],
            "alert_types": alert_rules[1],
        },
    ).fetchone()
    assert row is not None
    return [(item["rule"], item["type"]) for item in row["latest_rule_alerts"]]


def set_paused(conn: Conn, job: str, paused: bool) -> None:
    conn.execute(db.query("set_paused"), {"job": job, "paused": paused})


def _now(conn: Conn) -> datetime:
    row = conn.execute(db.query("ledger_now")).fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]
