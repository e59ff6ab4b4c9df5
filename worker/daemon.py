"""The daemon: one scheduler, one stop event, and the run lifecycle every job goes through."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import httpx
import psycopg
import schedule
import structlog

from . import alerts, clients, db, runs, signals
from .jobs.base import JobContext, JobResult
from .logs import get_logger
from .schedules import JobSpec, Service, jobs_of
from .settings import ConfigError, Settings

MAX_IDLE_WAIT_S = 60.0  # re-check the schedule at least this often, in case the wall clock jumps
SKIPPED = "skipped"


class Daemon:
    """Runs one service's jobs on its own `schedule.Scheduler` until stopped."""

    def __init__(
        self,
        settings: Settings,
        service: Service,
        *,
        dry_run: bool = False,
        http: httpx.Client | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.jobs: Sequence[JobSpec] = jobs_of(service.name)
        self.dry_run = dry_run
        self.http = http or clients.build_http(settings.http_timeout_s)
        self.scheduler = schedule.Scheduler()
        self.log = get_logger(service=service.name)
        self._stop = threading.Event()
        self._exited = threading.Event()
        self._announced = threading.Event()
        self._signal: str | None = None

    def stop(self, signal_name: str | None = None) -> None:
        """Ask for a graceful stop. Only sets flags, so it is safe inside a signal handler."""
        self._signal = signal_name
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, once: bool = False) -> int:
        """Run until stopped (or each job once with `once`); return the process exit code."""
        watcher = threading.Thread(
            target=self._watch_shutdown, name="shutdown-watcher", daemon=True
        )
        with signals.on_stop(self.stop):
            watcher.start()
            try:
                return self._run(once)
            finally:
                self._exited.set()
                self._stop.set()  # releases the watcher thread
                self.http.close()

    def _run(self, once: bool) -> int:
        self.log.info(
            self.service.started_event,
            jobs=[spec.name for spec in self.jobs],
            once=once,
            dry_run=self.dry_run,
            db_host=self.settings.database.host,
            db_name=self.settings.database.name,
        )
        exit_code = self._prepare_database()
        if exit_code is not None:
            return exit_code
        if once:
            statuses = [self.run_job(spec, "manual") for spec in self.jobs]
            self._log_stopped(statuses=statuses)
            return 1 if "failed" in statuses else 0
        for spec in self.jobs:
            cadence = spec.cadence(self.settings)
            cadence.register(self.scheduler, self.settings.schedule_timezone).do(
                self.run_job, spec, "schedule"
            )
            self.log.info(
                "job_scheduled",
                job=spec.name,
                cadence=cadence.describe(self.settings.schedule_timezone),
            )
        if self.settings.run_on_start:
            self.log.info("running_initial_update")
            for spec in self.jobs:
                self.run_job(spec, "startup")
        self._loop()
        self._log_stopped()
        return 0

    def _log_stopped(self, **fields: Any) -> None:
        if self.stopping:
            self._announced.wait(1.0)  # the watcher logs received_shutdown_signal first
        self.log.info(self.service.stopped_event, signal=self._signal, **fields)

    def _loop(self) -> None:
        self.log.info("scheduler_loop_started")
        while not self.stopping:
            self.scheduler.run_pending()
            idle_s = self.scheduler.idle_seconds
            wait_s = MAX_IDLE_WAIT_S if idle_s is None else min(max(idle_s, 0.0), MAX_IDLE_WAIT_S)
            self._stop.wait(wait_s)

    def _prepare_database(self) -> int | None:
        """Connect (with backoff), migrate and run the jobs' checks; an exit code if that fails."""

        def on_failure(attempt: int, error: str) -> None:
            self.log.warning(
                "database_unavailable",
                attempt=attempt,
                error=error,
                db_host=self.settings.database.host,
                db_name=self.settings.database.name,
            )

        try:
            conn = db.connect_with_backoff(
                self.settings.database,
                timeout_s=self.settings.db_connect_timeout_s,
                should_stop=self._stop.is_set,
                wait=self._stop.wait,
                on_failure=on_failure,
                application_name=f"worker:{self.service.name}",
            )
        except db.DatabaseUnavailable as exc:
            self.log.error(
                "database_unreachable",
                error=str(exc),
                timeout_seconds=self.settings.db_connect_timeout_s,
            )
            return 1
        if conn is None:
            return 0  # stopped while waiting for the database
        with conn:
            try:
                applied = [] if self.dry_run else db.migrate(conn)
                for spec in self.jobs:
                    if spec.check is not None:
                        spec.check(conn, self.settings)
            except ConfigError as exc:
                self.log.error("configuration_rejected", error=str(exc))
                print(f"worker: error: {exc}", file=sys.stderr)
                return 2
            except psycopg.Error as exc:
                # e.g. a role that may not create the worker's tables: say so and stop.
                self.log.error("migrate_failed", error=db.describe_error(exc))
                return 1
        self.log.info("database_ready", migrations_applied=applied)
        return None

    def run_job(self, spec: JobSpec, trigger: str) -> str:
        """One run of `spec` through the whole lifecycle; returns its status or `skipped`.

        Never raises: a job that breaks is recorded as failed and stays scheduled.
        """
        if self.stopping:
            return SKIPPED
        with structlog.contextvars.bound_contextvars(job=spec.name):
            try:
                conn = db.connect(self.settings.database, application_name=f"worker:{spec.name}")
            except psycopg.OperationalError as exc:
                self.log.error("database_unavailable", job=spec.name, error=db.describe_error(exc))
                return "failed"
            with conn:
                if self.dry_run:
                    return self._execute(conn, spec, run=None)
                return self._run_locked(conn, spec, trigger)

    def _run_locked(self, conn: db.Conn, spec: JobSpec, trigger: str) -> str:
        try:
            if runs.is_paused(conn, spec.name):
                self.log.info("job_paused", job=spec.name)
                return SKIPPED
            if not db.try_lock(conn, spec.name):
                self.log.info("job_locked_elsewhere", job=spec.name)
                return SKIPPED
        except psycopg.Error as exc:
            self.log.error("job_start_failed", job=spec.name, error=db.describe_error(exc))
            return "failed"
        try:
            for row in runs.abandon_running(conn, spec.name):
                self.log.warning(
                    "run_abandoned", job=spec.name, abandoned_run_id=row["id"], pid=row["pid"]
                )
            run = runs.start(conn, spec.name, trigger)
            with structlog.contextvars.bound_contextvars(run_id=run.id):
                return self._execute(conn, spec, run=run, trigger=trigger)
        except psycopg.Error as exc:
            self.log.error("job_start_failed", job=spec.name, error=db.describe_error(exc))
            return "failed"
        finally:
            # Closing the connection releases the lock too; unlocking is just tidier.
            with contextlib.suppress(psycopg.Error):
                db.unlock(conn, spec.name)

    def _execute(
        self, conn: db.Conn, spec: JobSpec, *, run: runs.Run | None, trigger: str = "manual"
    ) -> str:
        log = self.log.bind(job=spec.name)
        result = JobResult()
        ctx = JobContext(
            job=spec.name,
            conn=conn,
            settings=self.settings,
            http=self.http,
            log=log,
            result=result,
            should_stop=self._stop.is_set,
            sleep=self._sleep,
            alert=partial(self._alert, conn, spec.name),
            dry_run=self.dry_run,
        )
        log.info("job_started", trigger=trigger, dry_run=self.dry_run)
        started = time.monotonic()
        error: str | None = None
        try:
            spec.run(ctx)
        except Exception as exc:
            error = db.describe_error(exc)
            log.exception("job_crashed", error=error)
        duration_ms = int((time.monotonic() - started) * 1000)
        status = result.status(broken=error is not None, interrupted=self.stopping)
        log.info(
            "job_finished",
            status=status,
            total=result.total,
            succeeded=result.succeeded,
            failed=result.failed,
            duration_ms=duration_ms,
        )
        if run is not None:
            self._record(
                spec, run, status=status, result=result, duration_ms=duration_ms, error=error
            )
        return status

    def _record(
        self,
        spec: JobSpec,
        run: runs.Run,
        *,
        status: str,
        result: JobResult,
        duration_ms: int,
        error: str | None,
    ) -> None:
        # The run's own connection may be the reason it failed: record on a fresh one.
        try:
            with db.connect(self.settings.database, application_name=f"worker:{spec.name}") as conn:
                runs.finish(
                    conn, run, status=status, result=result, duration_ms=duration_ms, error=error
                )
                outcome = alerts.RunOutcome(
                    spec.name, run.id, status, result.total, result.failed, duration_ms
                )
                try:
                    alerts.evaluate_run(conn, self.settings, outcome, http=self.http, log=self.log)
                except Exception as exc:  # alerting must never fail the run it reports on
                    self.log.error(
                        "alert_rules_failed", job=spec.name, run_id=run.id, error=type(exc).__name__
                    )
        except psycopg.Error as exc:
            # The next run takes the lock and marks this row abandoned.
            self.log.error(
                "run_record_failed", job=spec.name, run_id=run.id, error=db.describe_error(exc)
            )
            return
        self._heartbeat(status)

    def _heartbeat(self, status: str) -> None:
        url = self.settings.heartbeat_url
        if not url or status not in ("success", "partial", "failed"):
            return
        target = f"{url.rstrip('/')}/fail" if status == "failed" else url
        error = clients.notify(self.http, "GET", target)
        if error:
            self.log.warning("heartbeat_failed", error=error, status=status)

    def _alert(self, conn: db.Conn, job: str, **alert: Any) -> None:
        if self.dry_run:
            self.log.info(
                "alert_skipped_dry_run", job=job, type=alert.get("type"), level=alert.get("level")
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
        self._stop.wait(max(seconds, 0.0))

    def _watch_shutdown(self) -> None:
        # Log the signal here rather than in the handler (no I/O in handlers), and enforce
        # the grace period: if the run in progress does not end in time, end the process.
        # PostgreSQL rolls back whatever transaction was open; nothing is half-written.
        self._stop.wait()
        if self._exited.is_set():
            return
        self.log.info("received_shutdown_signal", signal=self._signal)
        self._announced.set()
        if not self._exited.wait(self.settings.shutdown_grace_s):
            self.log.error("shutdown_grace_exceeded", grace_seconds=self.settings.shutdown_grace_s)
            os._exit(signals.FORCED_EXIT_CODE)
