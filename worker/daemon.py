"""The daemon: one `schedule.Scheduler` as the alarm clock, one stop event, and the loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx
import schedule

from . import db, http_client, service, signals
from .dispatch import REQUEST_POLL_S, Dispatcher
from .jobs import runtime
from .logs import get_logger, say_error
from .registry import JobSpec, Service, jobs_of
from .runs import Runner
from .settings import Settings
from .vocab import Mode, Outcome, RunStatus

if TYPE_CHECKING:
    from .web import Endpoint

MAX_IDLE_WAIT_S = REQUEST_POLL_S  # the loop wakes at least this often
CLOCK_STEP_S = 1.0  # a wall clock that moved this much against the monotonic one stepped
# /healthz: the loop wakes at least every REQUEST_POLL_S (runs are on the pool's threads, so
# a long run never holds it); silent this long, it is stuck.
STALLED_AFTER_S = 12 * REQUEST_POLL_S
RUNTIME_SERVICES = ("jobs", "all")  # the services that run runtime jobs


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
        self.http = http or http_client.build_http(settings.http_timeout_s)
        self.scheduler = schedule.Scheduler()
        self.log = get_logger(service=service.name)
        self._nudge = threading.Event()  # wakes the loop: a stop, a run's end, a local request
        self.shutdown = signals.Shutdown(settings.shutdown_grace_s, self.log, self._nudge)
        self._stop = self.shutdown.event
        self._registered: set[str] = set()
        self._beat_at = time.monotonic()  # the loop's heartbeat, read by /healthz
        self._dispatcher: Dispatcher | None = None  # the loop's, once it runs
        self._web: Endpoint | None = None
        self.runner = Runner(settings, self.http, self._stop, self.log, dry_run=dry_run)
        self.handlers = runtime.Handlers(settings)  # the catalogue, read on first use

    def stop(self, signal_name: str | None = None) -> None:
        """Ask for a graceful stop (called by the signal watcher thread, or by tests)."""
        self.shutdown.request(signal_name)

    @property
    def stopping(self) -> bool:
        return self.shutdown.requested

    def stalled(self) -> str | None:
        """Why the loop looks dead, or None while it ticks (runs go on on other threads)."""
        if self.stopping:
            return "the daemon is stopping"
        silent_s = time.monotonic() - self._beat_at
        if silent_s > STALLED_AFTER_S:
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
        with self.shutdown.handling():
            try:
                yield
            finally:
                if self._web is not None:
                    self._web.close()
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
        process_id = service.start(self.settings, self.service.name, self.jobs, self.log)
        serves_runtime = self.service.name in RUNTIME_SERVICES
        self._dispatcher = Dispatcher(
            self.settings,
            list(self.jobs),
            self.runner,
            self.log,
            self._nudge,
            process_id,
            handlers=self.handlers if serves_runtime else None,
        )
        if not self._serve_http():
            service.stop(self.settings, process_id, self.log)
            return 1
        try:
            self._loop()
        finally:
            self._dispatcher.drain()  # every run was asked to stop: wait for their records
            service.stop(self.settings, process_id, self.log)
        self._log_stopped()
        return 0

    def _serve_http(self) -> bool:
        """Start the HTTP endpoint when a port is set; False when it cannot listen."""
        if self.settings.http_port is None:
            return True
        from . import web  # only a daemon with a port pays for the server's imports

        try:
            self._web = web.serve(
                self.settings,
                stalled=self.stalled,
                log=self.log,
                on_request=None if self._dispatcher is None else self._dispatcher.poke,
                handlers=self.handlers,
            )
        except OSError as exc:
            self.log.error("http_listen_failed", port=self.settings.http_port, error=str(exc))
            say_error(
                f"cannot listen on {self.settings.http_host}:{self.settings.http_port} "
                f"(WORKER_HTTP_PORT): {exc.strerror or exc}"
            )
            return False
        return True

    def _loop(self) -> None:
        """Dispatch at each wake-up; wait on the monotonic clock for the next one."""
        assert self._dispatcher is not None
        self.log.info("scheduler_loop_started", concurrency=self.settings.concurrency)
        wall_offset_s: float | None = None
        while not self.stopping:
            self._beat_at = time.monotonic()
            wall_offset_s = self._follow_wall_clock(wall_offset_s)
            self.scheduler.run_pending()
            if self._dispatcher.wait_s() <= 0:
                self._dispatcher.dispatch(self._stop)
            idle_s = self.scheduler.idle_seconds
            wait_s = min(self._dispatcher.wait_s(), MAX_IDLE_WAIT_S, idle_s or MAX_IDLE_WAIT_S)
            self._nudge.wait(max(wait_s, 0.0))
            self._nudge.clear()

    def _follow_wall_clock(self, offset_s: float | None) -> float:
        """Set the `schedule` alarm clock's one job, the dispatcher's poll, at the start and
        again from now whenever the wall clock steps (NTP, a VM restored): `schedule` counts
        on the wall clock, and must neither stall for the size of the step nor burst."""
        now_offset_s = time.time() - time.monotonic()
        if offset_s is not None and abs(now_offset_s - offset_s) > CLOCK_STEP_S:
            self.log.warning("clock_stepped", step_s=round(now_offset_s - offset_s, 3))
            self.scheduler.clear()
            offset_s = None
        if offset_s is None:
            assert self._dispatcher is not None
            self.scheduler.every(REQUEST_POLL_S).seconds.do(self._dispatcher.poll)
        return now_offset_s

    def _log_stopped(self, **fields: Any) -> None:
        self.shutdown.announced()
        self.log.info(self.service.stopped_event, signal=self.shutdown.signal, **fields)
