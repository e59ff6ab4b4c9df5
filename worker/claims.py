"""The claim's rules: what a wake-up, `--once` or `worker run` does with a job's ledger row
(`decide`, a pure function), and the claim that applies them through `store.ledger`
(ARCHITECTURE.md, "The schedule ledger" and "Owed occurrences")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from . import db, schedules
from .db import Conn
from .schedules import DEFAULT_POLICY, Policy, Schedule
from .store import ledger, processes
from .vocab import Claim, Mode, Refusal, Run, Trigger

# A start request is dropped when a start-up run of the job began this recently: replicas
# started together (or a crash loop) make one run, not one each.
STARTUP_REQUEST_WINDOW_S = 30


# RUN_ON_START=false leaves an occurrence this recent alone: a live replica's poll (5 s) or
# whole-second wake-up may be about to claim it.
SKIP_GRACE_S = 6


def owner() -> str:
    """The lease owner this process writes: `host:pid`."""
    host, pid = db.process_identity()
    return f"{host}:{pid}"


def register(
    conn: Conn,
    job: str,
    service: str,
    schedule: Schedule,
    max_attempts: int = 3,
    *,
    source: str = "system",
    declared_in: str | None = None,
) -> dict[str, Any]:
    """Upsert the job's row; a changed schedule recomputes `next_due_at` from now."""
    first_due = schedule.first_due(db.now(conn))
    return ledger.register_job(
        conn,
        job,
        service,
        schedule.text,
        first_due,
        max_attempts,
        source=source,
        declared_in=declared_in,
        period_s=schedule.period_s,
    )


@dataclass(frozen=True)
class Skipped:
    """A claim that consumed an occurrence later than the job's `max_lateness`, no run."""

    scheduled_for: datetime | None


@dataclass(frozen=True)
class Decision:
    """What a claim does with a job's ledger row (`decide`): start a run as `trigger`,
    serving `scheduled_for` as its `attempt`; or consume the occurrence without a run
    (`refusal` set, `write` true: a paused job's, a late one); or nothing at all.
    `keeps_due`: the due occurrence is left for the next claim, not served by this run."""

    trigger: Trigger | None = None
    scheduled_for: datetime | None = None
    attempt: int = 1
    refusal: Refusal | None = None
    write: bool = True
    skipped: datetime | None = None  # the occurrence skipped as late
    keeps_due: bool = False


def decide(row: dict[str, Any], mode: Mode, policy: Policy) -> Decision:
    """The claim's rules, on the row as read (ARCHITECTURE.md, "Owed occurrences").

    A due occurrence comes first (missed and owed ones coalesce into it), then an owed one
    (`retry`: the same `scheduled_for`, `attempt` + 1), then a waiting request. A person's
    request meeting a due occurrence is served by the occurrence's run, which stays a
    `schedule` run (owed if it is interrupted). A request with parameters of its own runs
    first, serving no occurrence, and leaves a due or owed one to the next claim (which
    runs it with the job's own parameters, right after). An occurrence later than the
    job's `max_lateness` is skipped; a paused job's occurrence is consumed without a run,
    unless an operator asked for this run.
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
    elif asked is Trigger.MANUAL and row.get("run_requested_kwargs") is not None:
        decision = Decision(Trigger.MANUAL, keeps_due=True)  # its own parameters: first
    elif due and not late_due:
        decision = _due_run(row, asked)
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


def _due_run(row: dict[str, Any], asked: Trigger | None) -> Decision:
    """A due occurrence's run, with the request waiting beside it (`asked`), if any."""
    if asked is Trigger.MANUAL and not row["paused"]:
        return Decision(Trigger.SCHEDULE, row["next_due_at"])  # one run serves both
    trigger = asked or Trigger.SCHEDULE
    return Decision(trigger, None if trigger is Trigger.MANUAL else row["next_due_at"])


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
    row = seen or ledger.peek_job(conn, job)
    if row is None or row["next_due_at"] is None:
        return Refusal.UNKNOWN
    decision = decide(row, mode, policy)
    if not decision.write:
        assert decision.refusal is not None
        return decision.refusal
    kwargs = run_kwargs(row, decision)
    params = _claim_params(row, mode, decision, lease_s, kwargs)
    granted = ledger.claim_job(conn, params)
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
        kwargs,
    )


def _claim_params(
    row: dict[str, Any],
    mode: Mode,
    decision: Decision,
    lease_s: float,
    kwargs: dict[str, Any] | None,
) -> dict[str, Any]:
    host, pid = db.process_identity()
    trigger = decision.trigger or Trigger.SCHEDULE  # no run: the trigger is not written
    return {
        "job": row["job"],
        "next_due_at": row["next_due_at"]
        if decision.keeps_due
        else schedules.parse(row["schedule"]).next_due(row["next_due_at"], row["now"]),
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
        "kwargs": None if kwargs is None else Jsonb(kwargs),
        "keep_due": decision.keeps_due,
    }


def run_kwargs(row: dict[str, Any], decision: Decision) -> dict[str, Any] | None:
    """The parameters a run gets: a waiting request's own, when the run serves it; else a
    runtime job's definition's; none for other jobs."""
    requested = row.get("run_requested_kwargs")
    if requested is not None and decision.trigger is Trigger.MANUAL:
        return dict(requested)
    definition = row.get("definition")
    if row.get("source") == "runtime" and definition is not None:
        return dict(definition.get("kwargs") or {})
    return None


def skip_missed(conn: Conn, job: str) -> datetime | None:
    """Move a past `next_due_at` to the next future occurrence without a run.

    Returns the skipped due time, or None when nothing was missed.
    """
    row = ledger.peek_job(conn, job)
    if row is None or row["next_due_at"] is None or row["next_due_at"] > row["now"]:
        return None
    next_due_at = schedules.parse(row["schedule"]).next_due(row["next_due_at"], row["now"])
    seen_due = row["next_due_at"]
    skipped = ledger.skip_missed(
        conn, job, next_due_at=next_due_at, seen_due=seen_due, grace_s=SKIP_GRACE_S
    )
    return seen_due if skipped else None


def request_startup_runs(conn: Conn, jobs: list[str], process_id: int | None) -> list[str]:
    """RUN_ON_START=true: ask for a run of each job; returns the jobs a request was set for.

    `process_id` is this process's `worker_processes` row: its own start-up runs do not
    count as another live process's.
    """
    return ledger.request_startup_runs(
        conn,
        jobs,
        process_id=process_id or 0,
        window_s=STARTUP_REQUEST_WINDOW_S,
        alive_s=processes.DEAD_AFTER_S,
    )
