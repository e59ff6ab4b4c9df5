"""The life of a run: claim, lease, history, alerts and heartbeat, the same for every job.

`Runner.run(spec, mode)` is the whole interface the loop and the CLI use; the steps are
described in ARCHITECTURE.md, "The life of a run".
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import psycopg
import structlog

from . import alerts, clients, db, ledger
from .jobs.base import JobContext, JobResult, RunStatus
from .ledger import Claim, Mode, Refusal, Run
from .registry import JobSpec
from .settings import Settings

Outcome = RunStatus | Refusal


@dataclass(frozen=True)
class Finished:
    """How a pass ended, before it is recorded."""

    status: RunStatus
    result: JobResult
    duration_ms: int
    error: str | None


# Refusals logged at info level for these modes (a person asked); debug for wake-ups.
_ASKED = (Mode.ONCE, Mode.MANUAL, Mode.DUE)


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
            claimed = ledger.claim(conn, spec.name, mode, self.settings.lease_s, seen)
        except psycopg.Error as exc:
            self.log.error("job_start_failed", job=spec.name, error=db.describe_error(exc))
            return RunStatus.FAILED
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
        with LeaseKeeper(self, claim) as keeper:
            finished = self._execute(conn, spec, claim, keeper.lost.is_set)
        self._record(conn, spec, claim, finished)
        return finished.status

    def _execute(
        self,
        conn: db.Conn,
        spec: JobSpec,
        claim: Claim | None,
        lease_lost: Callable[[], bool] = lambda: False,
    ) -> Finished:
        result = JobResult()
        ctx = self._context(conn, spec, result, lease_lost)
        trigger = None if claim is None else claim.trigger.value
        scheduled_for = claim.scheduled_for if claim else None
        self.log.info(
            "job_started",
            trigger=trigger,
            scheduled_for=None if scheduled_for is None else scheduled_for.isoformat(),
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
        self, conn: db.Conn, spec: JobSpec, result: JobResult, lease_lost: Callable[[], bool]
    ) -> JobContext:
        return JobContext(
            job=spec.name,
            conn=conn,
            settings=self.settings,
            http=self.http,
            log=self.log.bind(job=spec.name),
            result=result,
            should_stop=lambda: self.stop.is_set() or lease_lost(),
            sleep=self._sleep,
            alert=partial(self._alert, conn, spec.name),
            dry_run=self.dry_run,
        )

    def _record(self, conn: db.Conn, spec: JobSpec, claim: Claim, finished: Finished) -> None:
        try:
            with self._usable(conn, spec.name) as recording:
                latest = ledger.finish(
                    recording,
                    claim,
                    status=finished.status,
                    result=finished.result,
                    duration_ms=finished.duration_ms,
                    error=finished.error,
                    alert_rules=alerts.rule_alert_filter(),
                )
                self._evaluate_alerts(recording, spec, claim.run, finished, latest)
        except psycopg.Error as exc:
            # The lease runs out; the next claim marks this row abandoned.
            self.log.error("run_record_failed", run_id=claim.run.id, error=db.describe_error(exc))
            return
        self._heartbeat(spec, finished.status)

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
        error = clients.notify(self.http, "GET", target)
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


class LeaseKeeper:
    """Renews a run's lease every LEASE_SECONDS / 3 from its own thread and connection.

    A renewal that fails (the database is unreachable, or the lease expired and another
    runner took it) sets `lost` at once and logs `lease_lost`: the run starts no more items.
    """

    def __init__(self, runner: Runner, claim: Claim) -> None:
        self.runner, self.claim = runner, claim
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="lease-keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        lease_s = self.runner.settings.lease_s
        conn: db.Conn | None = None
        try:
            while not self._done.wait(lease_s / 3):
                try:
                    conn = conn or self.runner._connect(f"{self.claim.job}:lease")
                    renewed = ledger.renew(conn, self.claim, lease_s)
                    error = None if renewed else "the lease expired and was taken over"
                except psycopg.Error as exc:
                    error = db.describe_error(exc)
                if error is not None:
                    self.runner.log.error(
                        "lease_lost", job=self.claim.job, run_id=self.claim.run.id, error=error
                    )
                    self.lost.set()
                    return
        finally:
            if conn is not None:
                conn.close()
