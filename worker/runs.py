"""The life of a run: claim, lease, history, alerts and heartbeat, the same for every job.

`Runner.run(spec, mode)` is the whole interface the loop and the CLI use; the steps are
described in ARCHITECTURE.md, "The life of a run".
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
import psycopg
import structlog

from . import alerts, claims, db, http_client
from .jobs.base import JobContext, JobResult
from .jobs.live import LiveRun
from .lease import LeaseKeeper
from .registry import JobSpec
from .settings import Settings
from .store import ledger
from .vocab import Claim, Mode, Outcome, Refusal, Run, RunStatus, Trigger


@dataclass(frozen=True)
class Finished:
    """How a pass ended, before it is recorded."""

    status: RunStatus
    result: JobResult
    duration_ms: int
    error: str | None

    def record(self) -> ledger.RunRecord:
        """What the run's row keeps of it."""
        result = self.result
        details: dict[str, Any] = dict(result.details)
        if result.failures:
            details["failures"] = result.failures
        return ledger.RunRecord(
            status=self.status,
            duration_ms=self.duration_ms,
            total=result.total,
            succeeded=result.succeeded,
            failed=result.failed,
            error=self.error,
            details=details,
            output=result.output,
            result=result.result,
        )


# Refusals logged at info level for these modes (a person asked); debug for wake-ups.
_ASKED = (Mode.ONCE, Mode.MANUAL, Mode.DUE)
# Recording an outcome that failed is retried after these waits (doubling), within the lease.
RECORD_RETRY_FIRST_S = 0.25
RECORD_RETRY_MAX_S = 2.0


@dataclass
class Runner:
    """Runs jobs through the lifecycle on behalf of one process."""

    settings: Settings
    http: httpx.Client
    stop: threading.Event
    log: Any
    dry_run: bool = False

    def run(self, spec: JobSpec, mode: Mode) -> Outcome:
        """Claim `spec` as `mode` asks and, if granted, run it here; never raises.

        A job that breaks is recorded as failed and stays scheduled.
        """
        if self.stop.is_set():
            return Refusal.NOT_DUE
        with structlog.contextvars.bound_contextvars(job=spec.name):
            try:
                conn = self._connect(spec.name)
            except psycopg.OperationalError as exc:
                self.log.error("database_unavailable", error=db.describe_error(exc))
                return RunStatus.FAILED
            with conn:
                if self.dry_run:
                    return self._execute(conn, spec, None).status
                claimed = self.claim(conn, spec, mode)
                if not isinstance(claimed, Claim):
                    return claimed
                return self.complete(spec, claimed, conn)

    def claim(
        self, conn: db.Conn, spec: JobSpec, mode: Mode, seen: dict[str, Any] | None = None
    ) -> Claim | Outcome:
        """Claim `spec` on `conn`: the claim, or why not (`failed` when the database refused).

        `seen` is the job's ledger row as the caller just read it (the loop's `due_jobs`).
        """
        try:
            claimed = claims.claim(conn, spec.name, mode, self.settings.lease_s, seen, spec.policy)
        except psycopg.Error as exc:
            self.log.error("job_start_failed", job=spec.name, error=db.describe_error(exc))
            return RunStatus.FAILED
        if isinstance(claimed, claims.Skipped):  # consumed without a run: too late
            when = claimed.scheduled_for
            self.log.warning(
                "occurrence_skipped",
                job=spec.name,
                reason="late",
                scheduled_for=None if when is None else when.isoformat(),
                max_lateness_s=spec.policy.max_lateness_s,
            )
            return Refusal.LATE
        if isinstance(claimed, Refusal):
            self._log_refusal(spec, claimed, mode)
            return claimed
        for row in claimed.abandoned:
            self.log.warning(
                "run_abandoned", job=spec.name, abandoned_run_id=row["id"], pid=row["pid"]
            )
        return claimed

    def complete(self, spec: JobSpec, claim: Claim, conn: db.Conn | None = None) -> RunStatus:
        """Run a granted claim to its end and record it; never raises.

        The run works on `conn`, or on a connection of its own (a run on a pool thread).
        """
        with structlog.contextvars.bound_contextvars(job=spec.name, run_id=claim.run.id):
            if conn is not None:
                return self._complete(conn, spec, claim)
            try:
                own = self._connect(spec.name)
            except psycopg.OperationalError as exc:
                # The run's row stays `running` until its lease expires and a claim marks it
                # abandoned.
                self.log.error("database_unavailable", error=db.describe_error(exc))
                return RunStatus.FAILED
            with own:
                return self._complete(own, spec, claim)

    def _complete(self, conn: db.Conn, spec: JobSpec, claim: Claim) -> RunStatus:
        with LeaseKeeper(self.settings, claim, self.log) as keeper:
            finished = self._execute(conn, spec, claim, keeper)
        self._record(conn, spec, claim, finished, keeper.expires_at)
        return finished.status

    def _execute(
        self,
        conn: db.Conn,
        spec: JobSpec,
        claim: Claim | None,
        keeper: LeaseKeeper | None = None,
    ) -> Finished:
        result = JobResult()
        ctx = self._context(conn, spec, result, keeper)
        trigger = None if claim is None else claim.trigger.value
        scheduled_for = claim.scheduled_for if claim else None
        self.log.info(
            "job_started",
            trigger=trigger,
            scheduled_for=None if scheduled_for is None else scheduled_for.isoformat(),
            attempt=claim.attempt if claim else None,
            paused=bool(claim and claim.paused),
            dry_run=self.dry_run,
        )
        error: str | None = None
        try:
            spec.run(ctx)
        except Exception as exc:
            error = db.describe_error(exc)
            self.log.exception("job_crashed", error=error)
        status = result.status(broken=error is not None, interrupted=ctx.should_stop())
        error = error or result.error
        if keeper is not None and keeper.cancelled.is_set() and status is RunStatus.INTERRUPTED:
            status, error = RunStatus.CANCELLED, "cancelled on request"
        duration_ms = int((time.monotonic() - ctx.started) * 1000)
        self.log.info(
            "job_finished",
            status=status.value,
            total=result.total,
            succeeded=result.succeeded,
            failed=result.failed,
            duration_ms=duration_ms,
        )
        return Finished(status, result, duration_ms, error)

    def _context(
        self, conn: db.Conn, spec: JobSpec, result: JobResult, keeper: LeaseKeeper | None
    ) -> JobContext:
        lost = keeper.lost.is_set if keeper else lambda: False
        cancelled = keeper.cancelled.is_set if keeper else lambda: False
        log = self.log.bind(job=spec.name)
        live = LiveRun(conn, log, keeper.claim.run.id if keeper else None)
        return JobContext(
            job=spec.name,
            conn=conn,
            settings=self.settings,
            http=self.http,
            log=log,
            result=result,
            should_stop=lambda: self.stop.is_set() or lost() or cancelled(),
            sleep=self._sleep,
            alert=partial(self._alert, conn, spec.name),
            dry_run=self.dry_run,
            fence=keeper.fence() if keeper else None,
            kwargs=keeper.claim.kwargs if keeper else None,
            progress=live.report,
        )

    def _record(
        self, conn: db.Conn, spec: JobSpec, claim: Claim, finished: Finished, lease_ends: float
    ) -> None:
        """Write the outcome, retrying with backoff on a fresh connection while the lease
        lasts (a database or pooler that blinked during the run loses no outcome)."""
        owed, exhausted = self._owed(spec, claim, finished.status)
        skip_to = self._skip_to(spec, claim, finished)
        delay_s = RECORD_RETRY_FIRST_S
        while True:
            try:
                with self._usable(conn, spec.name) as recording:
                    latest = ledger.finish(
                        recording,
                        claim,
                        finished.record(),
                        alert_rules=alerts.rule_alert_filter(),
                        owed=owed,
                        skip_to=skip_to,
                    )
                    self._evaluate_alerts(recording, spec, claim.run, finished, latest)
                    if exhausted:
                        when = claim.scheduled_for
                        self._exhausted(
                            recording,
                            spec.name,
                            run_id=claim.run.id,
                            attempt=claim.attempt,
                            max_attempts=spec.policy.max_attempts,
                            scheduled_for=None if when is None else when.isoformat(),
                            status=finished.status.value,
                        )
                break
            except psycopg.Error as exc:
                error = db.describe_error(exc)
                if not isinstance(exc, psycopg.OperationalError) or (
                    time.monotonic() + delay_s >= lease_ends
                ):
                    # The reaper marks the row abandoned once the lease has expired.
                    self.log.error("run_record_failed", run_id=claim.run.id, error=error)
                    return
                self.log.warning("run_record_retrying", run_id=claim.run.id, error=error)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, RECORD_RETRY_MAX_S)
        if owed:
            self.log.info("occurrence_owed", run_id=claim.run.id, attempt=claim.attempt)
        self._heartbeat(spec, finished.status)

    def report_reaped(self, conn: db.Conn, runs: list[dict[str, Any]]) -> None:
        """Log the dead runs a read reaped; raise JOB_ATTEMPTS_EXHAUSTED for each one that
        was its occurrence's last attempt (never raises)."""
        for run in runs:
            self.log.warning(
                "run_abandoned",
                job=run["job"],
                abandoned_run_id=run["id"],
                host=run["host"],
                pid=run["pid"],
                attempt=run["attempt"],
                owed=run["owed"],
            )
            last = run["max_attempts"] is not None and run["attempt"] >= run["max_attempts"]
            if run["trigger"] == Trigger.MANUAL or not last:
                continue
            try:
                self._exhausted(
                    conn,
                    run["job"],
                    run_id=run["id"],
                    attempt=run["attempt"],
                    max_attempts=run["max_attempts"],
                    scheduled_for=run["scheduled_for"],
                    status=RunStatus.ABANDONED.value,
                )
            except psycopg.Error as exc:
                self.log.error("alert_rules_failed", run_id=run["id"], error=db.describe_error(exc))

    def _owed(self, spec: JobSpec, claim: Claim, status: RunStatus) -> tuple[bool, bool]:
        """(owed, exhausted): an interrupted run's occurrence is owed while attempts remain;
        the last attempt interrupted raises JOB_ATTEMPTS_EXHAUSTED. A manual run serves no
        occurrence, and a failed run is not owed (the job ran and said no)."""
        if status is not RunStatus.INTERRUPTED or claim.trigger is Trigger.MANUAL:
            return False, False
        left = claim.attempt < spec.policy.max_attempts
        return left, not left

    def _skip_to(self, spec: JobSpec, claim: Claim, finished: Finished) -> datetime | None:
        """overlap = skip: the first occurrence after the run's end, for an occurrence that
        fell due while it ran (the statement moves it only if one did)."""
        if spec.policy.overlap != "skip":
            return None
        ended = claim.run.started_at + timedelta(milliseconds=finished.duration_ms)
        return spec.schedule(self.settings).next_due(claim.next_due_at, ended)

    def _exhausted(
        self,
        conn: db.Conn,
        job: str,
        *,
        run_id: int,
        attempt: int,
        max_attempts: int,
        scheduled_for: str | None,
        status: str,
    ) -> None:
        """JOB_ATTEMPTS_EXHAUSTED: the last attempt of an occurrence ended `status`
        (interrupted, or abandoned when the reaper found it dead); it is given up."""
        when = scheduled_for or "its start-up run"
        self._alert(
            conn,
            job,
            type="JOB_ATTEMPTS_EXHAUSTED",
            level="ERROR",
            message=(
                f"Job {job}: the occurrence {when} ended {status} on each of its {attempt} "
                f"attempts (max_attempts {max_attempts}, last run {run_id}); it is given up."
            ),
            metadata={
                "run_id": run_id,
                "attempt": attempt,
                "scheduled_for": scheduled_for,
                "status": status,
            },
        )

    @contextlib.contextmanager
    def _usable(self, conn: db.Conn, job: str) -> Iterator[db.Conn]:
        """The run's own connection, or a fresh one when that is why the run failed."""
        idle = psycopg.pq.TransactionStatus.IDLE
        if not conn.closed and not conn.broken and conn.info.transaction_status == idle:
            yield conn
            return
        with self._connect(job) as fresh:
            yield fresh

    def _evaluate_alerts(
        self,
        conn: db.Conn,
        spec: JobSpec,
        run: Run,
        finished: Finished,
        latest: list[tuple[str, str]],
    ) -> None:
        result = finished.result
        outcome = alerts.RunOutcome(
            spec.name,
            run.id,
            finished.status.value,
            result.total,
            result.failed,
            finished.duration_ms,
            one_item=spec.kind != "builtin",  # a declared job's run is one item
        )
        try:
            alerts.evaluate_run(
                conn, self.settings, outcome, http=self.http, log=self.log, latest=latest
            )
        except Exception as exc:  # alerting must never fail the run it reports on
            self.log.error("alert_rules_failed", run_id=run.id, error=type(exc).__name__)

    def _heartbeat(self, spec: JobSpec, status: RunStatus) -> None:
        url = spec.heartbeat_url or self.settings.heartbeat_url
        if not url or status not in (RunStatus.SUCCESS, RunStatus.PARTIAL, RunStatus.FAILED):
            return
        target = f"{url.rstrip('/')}/fail" if status is RunStatus.FAILED else url
        error = http_client.notify(self.http, "GET", target)
        if error:
            self.log.warning("heartbeat_failed", error=error, status=status.value)

    def _alert(self, conn: db.Conn, job: str, **alert: Any) -> None:
        if self.dry_run:
            self.log.info(
                "alert_skipped_dry_run",
                job=job,
                type=alert.get("type"),
                alert_level=alert.get("level"),
            )
            return
        alerts.raise_alert(
            conn,
            job=job,
            webhook_url=self.settings.alert_webhook_url,
            webhook_format=self.settings.alert_webhook_format,
            http=self.http,
            log=self.log,
            **alert,
        )

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(max(seconds, 0.0))

    def _log_refusal(self, spec: JobSpec, refusal: Refusal, mode: Mode) -> None:
        if refusal is Refusal.PAUSED:
            self.log.info("job_paused", job=spec.name)
        elif refusal is Refusal.CLAIMED_ELSEWHERE:
            level = "info" if mode in _ASKED else "debug"
            getattr(self.log, level)("job_claimed_elsewhere", job=spec.name)
        elif refusal is Refusal.UNKNOWN:
            self.log.warning("job_not_registered", job=spec.name)
        else:
            self.log.debug("job_not_due", job=spec.name)

    def _connect(self, job: str) -> db.Conn:
        return db.connect(self.settings.database, application_name=f"worker:{job}")
