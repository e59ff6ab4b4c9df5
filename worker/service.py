"""A service's start: the database reached and migrated, its jobs checked and in the ledger."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg

from . import __version__, claims, db
from .logs import say_error
from .registry import JobSpec
from .settings import ConfigError, Settings
from .store import ledger, processes


def prepare(
    settings: Settings,
    jobs: Sequence[JobSpec],
    *,
    stop: threading.Event,
    log: Any,
    application_name: str,
    migrate: bool = True,
) -> int | None:
    """Connect (with backoff), migrate, run the jobs' checks and register them in the ledger.

    Returns an exit code when the process should end instead of running: 0 when stopped
    while waiting, 1 when the database stays unreachable or refuses, 2 for configuration.
    """
    conn = connect(settings, stop, log, application_name)
    if isinstance(conn, int):
        return conn
    with conn:
        try:
            applied = db.migrate(conn) if migrate else []
            for spec in jobs:
                if spec.check is not None:
                    spec.check(conn, settings)
            if migrate:
                register(conn, settings, jobs, log)
        except ConfigError as exc:
            log.error("configuration_rejected", error=str(exc))
            say_error(str(exc))
            return 2
        except psycopg.Error as exc:
            # e.g. a role that may not create the worker's tables: say so and stop.
            error = db.describe_error(exc)
            log.error("migrate_failed", error=error, db_host=settings.database.host)
            say_error(f"migrating the database at db_host={settings.database.host}: {error}")
            return 1
    log.info("database_ready", migrations_applied=applied)
    return None


def register(conn: db.Conn, settings: Settings, jobs: Sequence[JobSpec], log: Any) -> None:
    """Upsert each job's ledger row; log its schedule and next due time."""
    for spec in jobs:
        schedule = spec.schedule(settings)
        row = claims.register(
            conn,
            spec.name,
            spec.service,
            schedule,
            spec.policy.max_attempts,
            source=spec.source,
            declared_in=spec.declared_in,
        )
        log.info(
            "job_scheduled",
            job=spec.name,
            schedule=schedule.text,
            cadence=schedule.describe(),
            next_due_at=row["next_due_at"].isoformat(),
        )


def start(settings: Settings, service: str, jobs: Sequence[JobSpec], log: Any) -> int | None:
    """Register this process in `worker_processes`, then apply RUN_ON_START: request a run
    of each job (true), leave missed ones due (missed), or move missed occurrences past now
    without a run (false). Returns the process's row id (None if the database refused).
    Never raises: the loop retries anything the database did not take."""
    requesting = [spec.name for spec in jobs if spec.starts(settings) == "true"]
    skipping = [spec.name for spec in jobs if spec.starts(settings) == "false"]
    process_id = None
    try:
        with db.connect(settings.database, application_name="worker:start") as conn:
            names = [spec.name for spec in jobs]
            process_id = processes.register(conn, service, __version__, settings.concurrency, names)
            retire(conn, log)
            if requesting:
                requested = claims.request_startup_runs(conn, requesting, process_id)
                log.info("running_initial_update", requested=requested)
            for name in skipping:
                skipped = claims.skip_missed(conn, name)
                if skipped is not None:
                    log.info("occurrences_skipped", job=name, missed_due_at=skipped.isoformat())
    except psycopg.Error as exc:
        log.error("start_requests_failed", error=db.describe_error(exc))
    return process_id


def stop(settings: Settings, process_id: int | None, log: Any) -> None:
    """A clean stop deletes the process's row (a killed one's is found dead by its age)."""
    if process_id is None:
        return
    try:
        with db.connect(settings.database, application_name="worker:stop") as conn:
            processes.deregister(conn, process_id)
            retire(conn, log)  # it may have been the last live process to run some job
    except psycopg.Error as exc:
        log.warning("process_deregister_failed", error=db.describe_error(exc))


def retire(conn: db.Conn, log: Any) -> None:
    """Retire the declared and built-in jobs no live process runs any more (ARCHITECTURE.md,
    "Retired jobs"): at a process's start and clean stop, the moments that can change it."""
    for row in ledger.retire_undeclared(conn, processes.DEAD_AFTER_S):
        log.info("job_retired", job=row["job"], service=row["service"])


def connect(
    settings: Settings, stop: threading.Event, log: Any, application_name: str
) -> db.Conn | int:
    """Connect with backoff for up to DB_CONNECT_TIMEOUT_SECONDS; an exit code instead when
    stopped while waiting (0) or when the database stays unreachable (1, reported once)."""

    def on_failure(attempt: int, error: str) -> None:
        log.warning(
            "database_unavailable",
            attempt=attempt,
            error=error,
            db_host=settings.database.host,
            db_name=settings.database.name,
        )

    try:
        conn = db.connect_with_backoff(
            settings.database,
            timeout_s=settings.db_connect_timeout_s,
            should_stop=stop.is_set,
            wait=stop.wait,
            on_failure=on_failure,
            application_name=application_name,
        )
    except db.DatabaseRefused as exc:
        report_refused(settings, log, str(exc))
        return 1
    except db.DatabaseUnavailable as exc:
        report_unreachable(
            settings,
            log,
            str(exc),
            timeout_s=settings.db_connect_timeout_s,
            attempts=exc.attempts,
            waited_s=exc.waited_s,
        )
        return 1
    return 0 if conn is None else conn


def report_unreachable(
    settings: Settings,
    log: Any,
    error: str,
    *,
    timeout_s: float,
    attempts: int,
    waited_s: float,
) -> None:
    """`database_unreachable` and its human line: the host and database, never the URL; how
    many attempts were made in how long, as it happened."""
    host, name = settings.database.host, settings.database.name
    log.error(
        "database_unreachable",
        error=error,
        timeout_seconds=timeout_s,
        attempts=attempts,
        waited_seconds=round(waited_s, 1),
        db_host=host,
        db_name=name,
    )
    tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    say_error(
        f"cannot reach the database at db_host={host} db_name={name} "
        f"(gave up after {tries} in {waited_s:.1f} s): {error}"
    )


def report_refused(settings: Settings, log: Any, error: str) -> None:
    """`database_refused` and its human line: the server refused this role or database for
    good (`db.permanent_refusal`), so nothing was retried."""
    host, name = settings.database.host, settings.database.name
    log.error("database_refused", error=error, db_host=host, db_name=name)
    say_error(
        f"the database server at db_host={host} refused the connection to db_name={name} "
        f"(not retried: check the role, password and database name of the URL): {error}"
    )
