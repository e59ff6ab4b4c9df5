"""The loop's dispatcher: read what is due, claim it, and hand each run to a bounded pool.

The loop claims (so a run's `started_at` is the moment its occurrence was taken) and a
thread of the pool runs it to its end, so a long run never delays another job's start.
ARCHITECTURE.md, "The loop", describes the reads and the wake-ups.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import psycopg

from . import db
from .jobs import runtime
from .registry import JobSpec
from .runs import Runner
from .settings import Settings
from .store import ledger, processes
from .vocab import Claim, Mode, RunStatus
from .watchdog import Change, Watchdog

REQUEST_POLL_S = processes.POLL_S  # the ledger is read at least this often, and the heart beats
WAKE_MARGIN_S = 0.001  # wake this much after a due instant, never just before it
# A read this close to the next poll carries the heartbeat instead (no read of its own).
BEAT_EARLY = 0.8
READ_EXTRA_ROWS = 16  # rows read beyond the free slots: saturation seen, paused ones consumed


class Dispatcher:
    """Claims due runs of one process's jobs and runs them on `settings.concurrency` threads.

    Only the loop's thread calls `dispatch`; pool threads only report a run's end. Wake-ups
    are kept on the monotonic clock, computed from the database's `now()`: neither this
    machine's wall clock nor its steps move them.
    """

    def __init__(
        self,
        settings: Settings,
        jobs: list[JobSpec],
        runner: Runner,
        log: Any,
        nudge: threading.Event,
        process_id: int | None = None,
        handlers: runtime.Handlers | None = None,
    ) -> None:
        self.concurrency = settings.concurrency
        self._settings = settings
        self._specs = {spec.name: spec for spec in jobs}
        # With `handlers`, this process runs the `jobs` service's runtime jobs too.
        self._handlers = handlers
        self._runtime: dict[str, tuple[Any, JobSpec]] = {}  # job -> (definition, its spec)
        services = {spec.service for spec in jobs} | ({"jobs"} if handlers else set())
        self._services = sorted(services)
        self._runner = runner
        self._log = log
        self._nudge = nudge  # set to wake the loop: a run ended, a local request
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="run")
        self._lock = threading.Lock()
        self._running: dict[str, Claim] = {}  # the claims of the runs on the pool, by job
        self._process_id = process_id  # this process's worker_processes row
        self._wake_at = 0.0  # monotonic instant of the next read; 0: read now
        self._beat_at = -math.inf  # monotonic instant of the last read that was a heartbeat
        self._clock: tuple[datetime, float] | None = None  # (database now, monotonic) at a read
        self._conn: db.Conn | None = None  # the loop's: reads and claims
        self._slots = threading.local()  # each pool thread's connection, kept between runs
        self._slot_conns: list[db.Conn] = []
        self._down = False
        self._saturated = False
        # Every live process watches what none sees on its own, once a poll (the reads that
        # carry the heartbeat): ARCHITECTURE.md, "Watchdog".
        self._watchdog = None if process_id is None else Watchdog(settings, runner.http, log)
        self._wanted: list[Change] | None = None  # what the last scan called for, to apply

    @property
    def running(self) -> list[str]:
        """The jobs this process is running right now."""
        with self._lock:
            return sorted(self._running)

    def wait_s(self) -> float:
        """Seconds until the next read is due (0 or less: now)."""
        with self._lock:
            return self._wake_at - time.monotonic()

    def poke(self) -> None:
        """Read the ledger at once (a request made through this process), waking the loop."""
        with self._lock:
            self._wake_at = 0.0
        self._nudge.set()

    def poll(self) -> None:
        """The loop's periodic poll: read, and beat, unless a read beat within the poll."""
        with self._lock:
            if time.monotonic() - self._beat_at >= REQUEST_POLL_S - WAKE_MARGIN_S:
                self._wake_at = 0.0

    def dispatch(self, stopping: threading.Event) -> None:
        """Claim every due or requested job a slot is free for; set the next wake-up."""
        free = self.concurrency - len(self._running)
        due = self._read(free + READ_EXTRA_ROWS)
        if due is None:
            return
        waiting: list[str] = []
        for row in due.rows:
            spec = self._specs.get(row["job"]) or self._runtime_spec(row)
            if spec is None or row["job"] in self._running:
                continue  # another version's job, or a run of ours whose lease lapsed
            if stopping.is_set():
                return
            if free <= 0:
                waiting.append(spec.name)
                continue
            claimed = self._claim(spec, row)
            if isinstance(claimed, Claim):
                self._submit(spec, claimed)
                free -= 1
        self._note_saturation(waiting)
        self._watch()

    def drain(self) -> None:
        """Wait for every run in progress to end (they were asked to stop); close the pool.

        The shutdown watcher bounds this by SHUTDOWN_GRACE_SECONDS.
        """
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._watchdog is not None:
            self._watchdog.close()
        for conn in [self._conn, *self._slot_conns]:
            if conn is not None:
                conn.close()

    def _read(self, limit: int) -> ledger.Due | None:
        beat = self._beat()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(self._settings.database, application_name="worker:loop")
            if beat is not None and self._watchdog is not None:
                due = self._read_watching(self._conn, limit, beat)
            else:
                due = ledger.due_jobs(self._conn, self._services, limit, beat)
        except psycopg.Error as exc:
            self._lost_ledger(exc)
            return None
        read_at = time.monotonic()
        if self._down:
            self._log.info("ledger_available")
        self._down = False
        with self._lock:
            self._clock = (due.now, read_at)
            self._beat_at = read_at if beat is not None else self._beat_at
            self._wake_at = max(self._beat_at, read_at - REQUEST_POLL_S) + REQUEST_POLL_S
            if due.next_wake is not None:
                self._wake_at = min(self._wake_at, self._monotonic(due.next_wake))
            if due.reaped:
                self._wake_at = 0.0  # their owed occurrences are claimable now
        if due.reaped:
            self._runner.report_reaped(self._conn, due.reaped)
        return due

    def _runtime_spec(self, row: dict[str, Any]) -> JobSpec | None:
        """A runtime job's spec, built again whenever its definition changed."""
        if self._handlers is None or row.get("source") != "runtime" or not row.get("definition"):
            return None
        known = self._runtime.get(row["job"])
        if known is not None and known[0] == row["definition"]:
            return known[1]
        spec = runtime.spec(row["job"], row["definition"], self._handlers)
        self._runtime[row["job"]] = (row["definition"], spec)
        return spec

    def _read_watching(self, conn: db.Conn, limit: int, beat: ledger.Beat) -> ledger.Due:
        """The read that beats, and the watchdog's scan before it, in one transaction: one
        commit a poll for both. A scan that fails is logged, and the read made alone."""
        assert self._watchdog is not None
        scanned = False
        try:
            with conn.transaction():
                wanted = self._watchdog.observe(conn)
                scanned = True
                due = ledger.due_jobs(conn, self._services, limit, beat)
        except Exception as exc:
            if scanned or conn.broken:
                raise  # the read's own failure, or the connection's
            self._watchdog.failed(exc)
            return ledger.due_jobs(conn, self._services, limit, beat)
        self._wanted = wanted
        return due

    def _watch(self) -> None:
        """Once this process claimed what the read gave it: the changes the watchdog's scan
        called for, each opening checked again as it is made (so a process's own due jobs,
        claimed just now, are not overdue)."""
        wanted, self._wanted = self._wanted, None
        if self._watchdog is None or wanted is None or self._conn is None:
            return
        self._watchdog.check(self._conn, wanted)
        if self._conn.broken:
            self._conn.close()

    def _beat(self) -> ledger.Beat | None:
        """This read's heartbeat, when the last one is most of a poll old."""
        if self._process_id is None:
            return None
        with self._lock:
            if time.monotonic() - self._beat_at < REQUEST_POLL_S * BEAT_EARLY:
                return None
            running = [
                {"job": job, "run_id": claim.run.id, "started_at": claim.run.started_at.isoformat()}
                for job, claim in sorted(self._running.items())
            ]
        return ledger.Beat(self._process_id, running)

    def _claim(self, spec: JobSpec, row: dict[str, Any]) -> Claim | None:
        assert self._conn is not None
        claimed = self._runner.claim(self._conn, spec, Mode.SCHEDULED, seen=row)
        if not isinstance(claimed, Claim):
            if self._conn.broken:  # the claim failed with the connection: read again later
                self._conn.close()
            return None
        with self._lock:
            self._wake_at = min(self._wake_at, self._monotonic(claimed.next_due_at))
        return claimed

    def _submit(self, spec: JobSpec, claim: Claim) -> None:
        with self._lock:
            future = self._pool.submit(self._run, spec, claim)
            self._running[spec.name] = claim
        future.add_done_callback(lambda _: self._ended(claim))

    def _run(self, spec: JobSpec, claim: Claim) -> RunStatus:
        """On a pool thread: the run, on the connection this thread keeps between runs (a
        connection is a backend start-up, a commit of its own). One on which the app's own
        SQL ran (a `sql` job: it may leave session state) or that broke is not kept."""
        conn: db.Conn | None = getattr(self._slots, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = db.connect(self._settings.database, application_name="worker:run")
            except psycopg.OperationalError:
                return self._runner.complete(spec, claim)  # connects, and reports, itself
            with self._lock:
                self._slot_conns.append(conn)
            self._slots.conn = conn
        try:
            return self._runner.complete(spec, claim, conn)
        finally:
            idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            if spec.kind == "sql" or conn.broken or not idle:
                conn.close()
                with self._lock:
                    self._slot_conns.remove(conn)
                self._slots.conn = None

    def _ended(self, claim: Claim) -> None:
        """On the run's thread: free its slot; read again when its job is due (the
        occurrence that fell due while it ran) or when due jobs wait for a slot."""
        with self._lock:
            self._running.pop(claim.job, None)
            due_at = self._monotonic(claim.next_due_at)
            self._wake_at = 0.0 if self._saturated else min(self._wake_at, due_at)
        self._nudge.set()

    def _note_saturation(self, waiting: list[str]) -> None:
        if waiting and not self._saturated:
            self._log.warning(
                "dispatch_saturated",
                concurrency=self.concurrency,
                running=self.running,
                waiting=waiting,
            )
        with self._lock:
            self._saturated = bool(waiting)

    def _monotonic(self, at: datetime) -> float:
        """The monotonic instant of a database time (called under the lock)."""
        assert self._clock is not None
        now, read_at = self._clock
        return read_at + (at - now).total_seconds() + WAKE_MARGIN_S

    def _lost_ledger(self, exc: psycopg.Error) -> None:
        if not self._down:
            self._log.warning("ledger_unavailable", error=db.describe_error(exc))
        self._down = True
        if self._conn is not None:
            self._conn.close()
        with self._lock:
            self._wake_at = time.monotonic() + REQUEST_POLL_S
