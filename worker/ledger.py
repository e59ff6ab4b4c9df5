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
from .schedules import DEFAULT_POLICY, Policy, Schedule

# A start request is dropped when a start-up run of the job began this recently: replicas
# started together (or a crash loop) make one run, not one each.
STARTUP_REQUEST_WINDOW_S = 30


# Every daemon refreshes its worker_processes row once a poll; one silent this many polls is
# dead.
POLL_S = 5
PROCESS_DEAD_AFTER_POLLS = 3

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
    LATE = "late"  # the occurrence was later than the job's max_lateness: skipped


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
    attempt: int = 1


def owner() -> str:
    """The lease owner this process writes: `host:pid`."""
    host, pid = db.process_identity()
    return f"{host}:{pid}"


def register(
    conn: Conn, job: str, service: str, schedule: Schedule, max_attempts: int = 3
) -> dict[str, Any]:
    """Upsert the job's row; a changed schedule recomputes `next_due_at`."""
    now = _now(conn)
    row = conn.execute(
        db.query("ledger.register_job"),
        {
            "job": job,
            "service": service,
            "schedule": schedule.text,
            "first_due": schedule.first_due(now),
            "max_attempts": max_attempts,
        },
    ).fetchone()
    assert row is not None
    return row


@dataclass(frozen=True)
class Skipped:
    """A claim that consumed an occurrence later than the job's `max_lateness`, no run."""

    scheduled_for: datetime | None


@dataclass(frozen=True)
class Decision:
    """What a claim does with a job's ledger row (`decide`): start a run as `trigger`,
    serving `scheduled_for` as its `attempt`; or consume the occurrence without a run
    (`refusal` set, `write` true: a paused job's, a late one); or nothing at all."""

    trigger: Trigger | None = None
    scheduled_for: datetime | None = None
    attempt: int = 1
    refusal: Refusal | None = None
    write: bool = True
    skipped: datetime | None = None  # the occurrence skipped as late


def decide(row: dict[str, Any], mode: Mode, policy: Policy) -> Decision:
    """The claim's rules, on the row as read (ARCHITECTURE.md, "Owed occurrences").

    A due occurrence comes first (missed and owed ones coalesce into it), then an owed one
    (`retry`: the same `scheduled_for`, `attempt` + 1), then a waiting request. An
    occurrence later than the job's `max_lateness` is skipped; a paused job's occurrence
    is consumed without a run, unless an operator asked for this run.
    """
    now, forced = row["now"], mode in (Mode.ONCE, Mode.MANUAL)
    due = row["next_due_at"] <= now
    requested = row["run_requested_at"] is not None and mode is not Mode.DUE
    owed = row["owed_run_id"] is not None
    if not (due or requested or owed or forced):
        return Decision(refusal=Refusal.NOT_DUE, write=False)
    if row["leased"]:
        return Decision(refusal=Refusal.CLAIMED_ELSEWHERE, write=False)
    late_due = due and policy.too_late(row["next_due_at"], now)
    late_owed = owed and row["owed_for"] is not None and policy.too_late(row["owed_for"], now)
    asked = Trigger(row["run_requested_by"] or Trigger.MANUAL) if requested else None
    if forced:
        decision = Decision(Trigger.MANUAL)
    elif due and not late_due:
        trigger = asked or Trigger.SCHEDULE
        served = None if trigger is Trigger.MANUAL else row["next_due_at"]
        decision = Decision(trigger, served)
    elif owed and not late_owed:
        decision = Decision(Trigger.RETRY, row["owed_for"], row["owed_attempt"] + 1)
    elif asked is not None:
        decision = Decision(asked)
    else:
        skipped = row["next_due_at"] if late_due else row["owed_for"]
        return Decision(refusal=Refusal.LATE, skipped=skipped)
    if not row["paused"] or (decision.trigger is Trigger.MANUAL and mode is not Mode.ONCE):
        return decision
    if not due and mode is Mode.ONCE:
        return Decision(refusal=Refusal.PAUSED, write=False)  # nothing of the ledger's
    return Decision(refusal=Refusal.PAUSED)


def claim(
    conn: Conn,
    job: str,
    mode: Mode,
    lease_s: float,
    seen: dict[str, Any] | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> Claim | Refusal | Skipped:
    """Claim the job's due, owed or requested run and start it, in one conditional
    statement: a Claim; else a Refusal (`paused`: the occurrence was consumed without a
    run), or Skipped (the occurrence was later than the job's max_lateness).

    `next_due_at` moves to the first occurrence after now (missed ones coalesce into this
    run), the lease is taken and the run's row inserted. The schedule is the one the ledger
    holds, so every replica computes the same next time. `seen` is the job's row as the
    loop just read it (`due_jobs`); without it the row is read first.
    """
    row = seen or conn.execute(db.query("ledger.peek_job"), {"job": job}).fetchone()
    if row is None or row["next_due_at"] is None:
        return Refusal.UNKNOWN
    decision = decide(row, mode, policy)
    if not decision.write:
        assert decision.refusal is not None
        return decision.refusal
    params = _claim_params(row, mode, decision, lease_s)
    granted = conn.execute(db.query("ledger.claim_job"), params).fetchone()
    if granted is None:
        return Refusal.CLAIMED_ELSEWHERE  # another runner claimed it after our read
    if decision.refusal is Refusal.LATE:
        return Skipped(decision.skipped)
    if decision.trigger is None or granted["run_id"] is None:
        assert decision.refusal is not None
        return decision.refusal
    return Claim(
        job,
        params["owner"],
        decision.trigger,
        decision.scheduled_for,
        params["next_due_at"],
        row["paused"],
        Run(granted["run_id"], granted["started_at"]),
        list(granted["abandoned"]),
        decision.attempt,
    )


def _claim_params(
    row: dict[str, Any], mode: Mode, decision: Decision, lease_s: float
) -> dict[str, Any]:
    host, pid = db.process_identity()
    trigger = decision.trigger or Trigger.SCHEDULE  # no run: the trigger is not written
    return {
        "job": row["job"],
        "next_due_at": schedules.parse(row["schedule"]).next_due(row["next_due_at"], row["now"]),
        "lease": decision.trigger is not None,
        "owner": owner(),
        "lease_s": lease_s,
        "seen_due": row["next_due_at"],
        "seen_paused": row["paused"],
        "seen_owed": row["owed_run_id"],
        "forced": mode in (Mode.ONCE, Mode.MANUAL),
        "trigger": trigger.value,
        "host": host,
        "pid": pid,
        "scheduled_for": decision.scheduled_for,
        "attempt": decision.attempt,
    }


def skip_missed(conn: Conn, job: str) -> datetime | None:
    """Move a past `next_due_at` to the next future occurrence without a run.

    Returns the skipped due time, or None when nothing was missed.
    """
    row = conn.execute(db.query("ledger.peek_job"), {"job": job}).fetchone()
    if row is None or row["next_due_at"] is None or row["next_due_at"] > row["now"]:
        return None
    next_due_at = schedules.parse(row["schedule"]).next_due(row["next_due_at"], row["now"])
    cursor = conn.execute(
        db.query("ledger.skip_missed"),
        {
            "job": job,
            "next_due_at": next_due_at,
            "seen_due": row["next_due_at"],
            "grace_s": SKIP_GRACE_S,
        },
    )
    return row["next_due_at"] if cursor.rowcount == 1 else None


def request_startup_runs(conn: Conn, jobs: list[str], process_id: int | None) -> list[str]:
    """RUN_ON_START=true: ask for a run of each job; returns the jobs a request was set for.

    `process_id` is this process's `worker_processes` row: its own start-up runs do not
    count as another live process's.
    """
    rows = conn.execute(
        db.query("ledger.request_startup_runs"),
        {
            "jobs": jobs,
            "window_s": STARTUP_REQUEST_WINDOW_S,
            "process_id": process_id or 0,
            "alive_s": PROCESS_DEAD_AFTER_POLLS * POLL_S,
        },
    ).fetchall()
    return [row["job"] for row in rows]


def request_run(conn: Conn, job: str) -> bool:
    """Ask a running service to run `job` now (runs a paused job too); False if unknown."""
    return conn.execute(db.query("ledger.request_run"), {"job": job}).fetchone() is not None


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


def register_process(conn: Conn, service: str, version: str, concurrency: int) -> int:
    """This daemon's `worker_processes` row (a dead one of the same host and pid goes)."""
    host, pid = db.process_identity()
    row = conn.execute(
        db.query("ledger.register_process"),
        {
            "host": host,
            "pid": pid,
            "service": service,
            "version": version,
            "concurrency": concurrency,
        },
    ).fetchone()
    conn.execute(db.query("ledger.prune_processes"))
    assert row is not None
    return int(row["id"])


def deregister_process(conn: Conn, process_id: int) -> None:
    conn.execute(db.query("ledger.deregister_process"), {"id": process_id})


def renew(conn: Conn, claim: Claim, lease_s: float) -> bool:
    """Extend the lease; False when it was lost (expired and taken over, or released)."""
    row = conn.execute(
        db.query("ledger.renew_lease"),
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
    owed: bool = False,
    skip_to: datetime | None = None,
) -> list[tuple[str, str]]:
    """Write the outcome of the claim's run and release the lease, in one statement.

    `owed`: the run's occurrence is owed (interrupted, attempts left). `skip_to`: with
    overlap = skip, where an occurrence that fell due during the run moves to.
    Returns the latest alert of each of `alert_rules` (rule names, alert types) for the job,
    as (rule, type): the state the run's alert rules are judged against.
    """
    details: dict[str, Any] = dict(result.details)
    if result.failures:
        details["failures"] = result.failures
    row = conn.execute(
        db.query("ledger.finish_run"),
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
            "owed": owed,
            "skip_to": skip_to,
            "seen_due": claim.next_due_at,
        },
    ).fetchone()
    assert row is not None
    return [(item["rule"], item["type"]) for item in row["latest_rule_alerts"]]


def set_paused(conn: Conn, job: str, paused: bool) -> None:
    conn.execute(db.query("ledger.set_paused"), {"job": job, "paused": paused})


def _now(conn: Conn) -> datetime:
    row = conn.execute(db.query("ledger.now")).fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]
