"""The daemon: one `schedule.Scheduler` as the alarm clock, one stop event, and the loop."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import schedule

from . import clients, db, ledger, service, signals
from .jobs.base import RunStatus
from .ledger import Mode
from .logs import get_logger
from .registry import JobSpec, Service, jobs_of
from .runs import Outcome, Runner
from .settings import Settings

if TYPE_CHECKING:
    from .web import Endpoint

MAX_IDLE_WAIT_S = 60.0  # re-check the ledger at least this often, in case the wall clock jumps
REQUEST_POLL_S = 5  # a run requested from elsewhere starts within this long
WAKE_TAG = "wake"  # one-shot scheduler jobs that wake the loop at a job's next due time
# /healthz: the loop ticks at least every REQUEST_POLL_S; silent this long, it is stuck.
STALLED_AFTER_S = 2 * MAX_IDLE_WAIT_S


class Daemon:
    """Runs one service's jobs until stopped; the ledger decides which occurrence runs where."""

    def __init__(
        self,
        settings: Settings,
        service: Service,
        *,
        dry_run: bool = False,
        http: httpx.Client | None = None,
        jobs: Sequence[JobSpec] | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.jobs: Sequence[JobSpec] = jobs_of(service.name, settings) if jobs is None else jobs
        self.dry_run = dry_run
        self.http = http or clients.build_http(settings.http_timeout_s)
        self.scheduler = schedule.Scheduler()
        self.log = get_logger(service=service.name)
        self._stop = threading.Event()  # set by threads only, never inside a signal handler
        self._exited = threading.Event()
        self._announced = threading.Event()
        self._signal: str | None = None
        self._conn: db.Conn | None = None  # the loop's own connection for ledger reads
        self._ledger_down = False
        self._registered: set[str] = set()
        self._beat_at = time.monotonic()  # the loop's heartbeat, read by /healthz
        self._running: str | None = None  # the job this loop is running, if any
        self._web: Endpoint | None = None
        self.runner = Runner(settings, self.http, self._stop, self.log, dry_run=dry_run)

    def stop(self, signal_name: str | None = None) -> None:
        """Ask for a graceful stop (called by the signal watcher thread, or by tests)."""
        self._signal = signal_name
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stalled(self) -> str | None:
        """Why the loop looks dead, or None while it ticks; a run in progress counts as alive."""
        if self.stopping:
            return "the daemon is stopping"
        silent_s = time.monotonic() - self._beat_at
        if self._running is None and silent_s > STALLED_AFTER_S:
            return f"the scheduler loop has not ticked for {silent_s:.0f} s"
        return None

    def run(self, *, once: bool = False, due_only: bool = False) -> int:
        """Run until stopped (or each job once with `once`); return the process exit code."""
        with self._stoppable():
            return self._run(once or self.dry_run, due_only)

    def run_now(self, spec: JobSpec) -> Outcome | int:
        """`worker run JOB`: claim the job as an operator's request and run it here.

        Returns the run's outcome, or an exit code when the database was not ready.
        """
        with self._stoppable():
            exit_code = self._prepare()
            return exit_code if exit_code is not None else self.runner.run(spec, Mode.MANUAL)

    def run_job(self, spec: JobSpec, mode: Mode = Mode.ONCE) -> Outcome:
        """Register `spec` in the ledger (once per daemon) and run it through the lifecycle.

        The in-process seam for tests and embedding; the loop and `--once` use the runner.
        """
        if spec.name not in self._registered:
            with db.connect(self.settings.database) as conn:
                service.register(conn, self.settings, [spec], self.log)
            self._registered.add(spec.name)
        return self.runner.run(spec, mode)

    @contextmanager
    def _stoppable(self) -> Iterator[None]:
        """Signals handled (and the grace period enforced) while the block runs."""
        watcher = threading.Thread(
            target=self._watch_shutdown, name="shutdown-watcher", daemon=True
        )
        with signals.on_stop(self.stop):
            watcher.start()
            try:
                yield
            finally:
                self._exited.set()
                self._stop.set()  # releases the watcher thread
                if self._web is not None:
                    self._web.close()
                if self._conn is not None:
                    self._conn.close()
                self.http.close()

    def _prepare(self) -> int | None:
        return service.prepare(
            self.settings,
            self.jobs,
            stop=self._stop,
            log=self.log,
            application_name=f"worker:{self.service.name}",
            migrate=not self.dry_run,
        )

    def _run(self, once: bool, due_only: bool) -> int:
        self.log.info(
            self.service.started_event,
            jobs=[spec.name for spec in self.jobs],
            once=once,
            dry_run=self.dry_run,
            db_host=self.settings.database.host,
            db_name=self.settings.database.name,
        )
        exit_code = self._prepare()
        if exit_code is not None:
            return exit_code
        if once:
            mode = Mode.DUE if due_only else Mode.ONCE
            outcomes = [self.runner.run(spec, mode) for spec in self.jobs]
            self._log_stopped(statuses=[outcome.value for outcome in outcomes])
            return 1 if RunStatus.FAILED in outcomes else 0
        if not self._serve_http():
            return 1
        service.apply_on_start(self.settings, self.jobs, self.log)
        self.scheduler.every(REQUEST_POLL_S).seconds.do(self._tick)
        self._tick()
        self._loop()
        self._log_stopped()
        return 0

    def _serve_http(self) -> bool:
        """Start the HTTP endpoint when a port is set; False when it cannot listen."""
        if self.settings.http_port is None:
            return True
        from . import web  # only a daemon with a port pays for the server's imports

        try:
            self._web = web.serve(self.settings, stalled=self.stalled, log=self.log)
        except OSError as exc:
            self.log.error("http_listen_failed", port=self.settings.http_port, error=str(exc))
            return False
        return True

    def _loop(self) -> None:
        self.log.info("scheduler_loop_started")
        while not self.stopping:
            self._beat_at = time.monotonic()
            self.scheduler.run_pending()
            idle_s = self.scheduler.idle_seconds
            wait_s = MAX_IDLE_WAIT_S if idle_s is None else min(max(idle_s, 0.0), MAX_IDLE_WAIT_S)
            self._stop.wait(wait_s)

    def _tick(self) -> None:
        """Run every job that is due or requested, then set the wake-ups for the next ones."""
        rows = self._peek()
        if rows is None:
            return
        ran = False
        for row in rows:
            if self.stopping:
                return
            if (row["requested"] or row["next_due_at"] <= row["now"]) and not row["leased"]:
                self._running, ran = row["job"], True
                try:
                    self.runner.run(self._spec(row["job"]), Mode.SCHEDULED)
                finally:
                    self._running, self._beat_at = None, time.monotonic()
        if ran:  # the runs moved their next due times: read them again
            rows = self._peek()
        if rows is not None:
            self._set_wake_ups(rows)

    def _wake(self) -> type[schedule.CancelJob]:
        self._tick()
        return schedule.CancelJob

    def _set_wake_ups(self, rows: list[dict[str, Any]]) -> None:
        self.scheduler.clear(WAKE_TAG)
        for row in rows:
            next_due: datetime | None = row["next_due_at"]
            if next_due is None:
                continue
            # `schedule` counts whole seconds: wake at the due second or just after it. A job
            # still due after a tick failed to start; the poll retries it.
            delay_s = math.ceil((next_due - row["now"]).total_seconds())
            if 0 < delay_s < MAX_IDLE_WAIT_S:
                self.scheduler.every(delay_s).seconds.do(self._wake).tag(WAKE_TAG)

    def _peek(self) -> list[dict[str, Any]] | None:
        """The ledger rows of this service's jobs; None (logged once) while unreachable."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(
                    self.settings.database, application_name=f"worker:{self.service.name}:loop"
                )
            rows = ledger.peek_jobs(self._conn, [spec.name for spec in self.jobs])
        except psycopg.Error as exc:
            if not self._ledger_down:
                self.log.warning("ledger_unavailable", error=db.describe_error(exc))
            self._ledger_down = True
            if self._conn is not None:
                self._conn.close()
            return None
        if self._ledger_down:
            self.log.info("ledger_available")
        self._ledger_down = False
        return rows

    def _spec(self, name: str) -> JobSpec:
        return next(spec for spec in self.jobs if spec.name == name)

    def _log_stopped(self, **fields: Any) -> None:
        if self.stopping:
            self._announced.wait(1.0)  # the watcher logs received_shutdown_signal first
        self.log.info(self.service.stopped_event, signal=self._signal, **fields)

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
