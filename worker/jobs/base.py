"""What every job receives (JobContext) and fills in (JobResult); the fence of its writes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from .. import db
from ..db import Conn
from ..settings import Settings
from ..store import ledger
from ..vocab import RunStatus

MAX_DETAILED_FAILURES = 100


@dataclass
class JobResult:
    """Counts of one pass, up to MAX_DETAILED_FAILURES failures with reasons, and extra details."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    result: Any = None
    error: str | None = None  # why the run failed, when the job itself says so

    def ok(self, count: int = 1) -> None:
        self.total += count
        self.succeeded += count

    def fail(self, item: str, reason: str, **extra: Any) -> None:
        """Count one failed item; `item` and `extra` must not hold secrets."""
        self.total += 1
        self.failed += 1
        if len(self.failures) < MAX_DETAILED_FAILURES:
            self.failures.append({"item": item, "reason": reason, **extra})

    def status(self, *, broken: bool, interrupted: bool) -> RunStatus:
        """How the run ended (ARCHITECTURE.md, "The life of a run", step 5)."""
        if broken:
            return RunStatus.FAILED
        if interrupted:
            return RunStatus.INTERRUPTED
        if self.failed and not self.succeeded:
            return RunStatus.FAILED
        return RunStatus.PARTIAL if self.failed else RunStatus.SUCCESS


@dataclass
class ItemOutcome:
    """Set by `JobContext.guard` and `JobContext.item`: the error that failed the block, if any."""

    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


AlertFn = Callable[..., None]

# The SQLSTATE worker_fence() raises when the run no longer holds its job's lease.
FENCE_SQLSTATE = "WK001"


@dataclass(frozen=True)
class Fence:
    """The run's lease as each of its transactions checks it (ARCHITECTURE.md, "Fencing")."""

    job: str
    run_id: int
    owner: str
    idle_timeout_ms: int
    lost: Callable[[], None]  # called once a transaction found the lease gone

    def check(self, conn: Conn) -> None:
        """Inside a transaction: end it (SQLSTATE WK001) unless the lease is still ours."""
        ledger.fence(conn, self.job, self.run_id, self.owner, self.idle_timeout_ms)


def fenced_out(exc: BaseException) -> bool:
    """Whether `exc` is worker_fence() refusing a write of a run that lost its lease."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate == FENCE_SQLSTATE


@dataclass(frozen=True)
class JobContext:
    """Everything a pass may use: time and configuration come from here or from PostgreSQL."""

    job: str
    conn: Conn
    settings: Settings
    http: httpx.Client
    log: Any
    result: JobResult
    should_stop: Callable[[], bool]
    sleep: Callable[[float], None]
    alert: AlertFn
    dry_run: bool = False
    started: float = field(default_factory=time.monotonic)
    fence: Fence | None = None  # None: no lease to check (a dry run)
    kwargs: dict[str, Any] | None = None  # the run's parameters, when its claim carries any
    # `progress(done, total)`: how many items are done, for the run page while it runs
    # (jobs.live.LiveRun: written at most once a second; cheap to call after every item).
    progress: Callable[[int, int | None], None] = lambda done, total: None

    @contextmanager
    def transaction(self, conn: Conn | None = None) -> Iterator[Conn]:
        """One item's transaction on `conn` (default: the context's), fenced: it commits
        nothing once the run's lease was taken over, and a frozen process's is ended by the
        server before the lease runs out."""
        conn = conn or self.conn
        with conn.transaction():
            if self.fence is not None:
                self.fence.check(conn)
            yield conn

    def elapsed_s(self) -> float:
        """Seconds since the pass started, rounded for logs."""
        return round(time.monotonic() - self.started, 3)

    @contextmanager
    def guard(self) -> Iterator[ItemOutcome]:
        """Catch a database error of one item's block into the outcome (which says so).

        A lost connection is not the item's fault: it propagates and fails the run.
        """
        outcome = ItemOutcome()
        try:
            yield outcome
        except psycopg.Error as exc:
            if self.conn.broken:
                raise
            if fenced_out(exc) and self.fence is not None:
                self.fence.lost()  # the run stops: should_stop() is now true
                outcome.error = "lease_lost"
                return
            outcome.error = db.describe_error(exc)

    @contextmanager
    def item(self, item: str, event: str, **fields: Any) -> Iterator[ItemOutcome]:
        """`guard`, and a failure is logged as `event` and counted with reason `db_error`;
        `fields` (never a secret) go to the log line and to the run's `details.failures`."""
        with self.guard() as outcome:
            yield outcome
        if outcome.error is not None:
            self.log.error(event, error=outcome.error, **fields)
            self.result.fail(item, "db_error", error=outcome.error, **fields)
