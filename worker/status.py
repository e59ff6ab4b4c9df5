"""`worker status`: each job's last run, next due time and pause flag, and a health verdict."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import psycopg

from . import db, jobfile, schedules
from .logs import get_logger
from .registry import JOBS
from .service import report_refused, report_unreachable
from .settings import Settings
from .store import processes, reads

STALE_AFTER_PERIODS = 2  # stale: no run that did its work within 2 x the job's period
CONNECT_TIMEOUT_S = 5  # a HEALTHCHECK must answer quickly: no backoff, one short attempt
# A paused job is reported, never counted as unhealthy; a job waiting for its first due
# time has not had the chance to run.
HEALTHY = ("ok", "paused", "waiting")
EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_UNREACHABLE = 0, 1, 2


@dataclass(frozen=True)
class JobStatus:
    """One row of the status table.

    `health` is `ok`, `paused`, `failed` (its last completed run failed), `stale` (no
    success or partial run within STALE_AFTER_PERIODS periods), `waiting` (registered,
    first due time not yet come) or `never_run` (due and never ran).
    """

    job: str
    service: str
    schedule: str
    cadence: str
    last_started_at: datetime | None
    last_status: str | None
    duration_ms: int | None
    succeeded: int | None
    failed: int | None
    next_due_at: datetime | None
    paused: bool
    last_success_at: datetime | None
    health: str
    service_alive: bool | None = None  # a live process runs its service (None: unknown)
    source: str = "system"  # system (built in), file (the jobs file's) or runtime (the API's)
    declared_in: str | None = None  # the jobs file, for a file job
    definition: dict[str, Any] | None = None  # a runtime job's: handler, kwargs, ...
    runs: int = 0  # since it was created, kept through history pruning
    successes: int = 0
    failures: int = 0
    progress_done: int | None = None  # of the last run, while it runs (its `progress`)
    progress_total: int | None = None
    checked_at: datetime | None = None  # the database's time of the read
    description: str | None = None  # for people (`describe`)

    @property
    def running_ms(self) -> int | None:
        """How long the last run has been running; None unless it still runs."""
        if self.last_status != "running" or self.last_started_at is None or not self.checked_at:
            return None
        return int((self.checked_at - self.last_started_at).total_seconds() * 1000)

    @property
    def healthy(self) -> bool:
        return self.health in HEALTHY


@dataclass(frozen=True)
class Report:
    """The status of a selection of jobs, as of the database's clock."""

    checked_at: datetime
    jobs: list[JobStatus]
    concurrency: int | None = None  # WORKER_CONCURRENCY where the report was made
    processes: list[dict[str, Any]] = field(default_factory=list)  # worker_processes rows
    next_after: str | None = None  # a page's: the cursor of the next page (None: the last)

    @property
    def live_services(self) -> set[str]:
        """The services some live process runs (`all` runs every one)."""
        return {p["service"] for p in self.processes if p["alive"]}

    def service_alive(self, service: str) -> bool:
        return bool(self.live_services & {service, "all"})

    @property
    def orphaned(self) -> dict[str, list[str]]:
        """The jobs of each service that no live process runs, by service."""
        orphans: dict[str, list[str]] = {}
        for job in self.jobs:
            if not self.service_alive(job.service):
                orphans.setdefault(job.service, []).append(job.job)
        return orphans

    @property
    def healthy(self) -> bool:
        return all(job.healthy for job in self.jobs)

    @property
    def running(self) -> list[str]:
        """The jobs with a run in progress (on any process)."""
        return [job.job for job in self.jobs if job.last_status == "running"]


def run(settings: Settings, *, service: str | None, as_json: bool, out: TextIO) -> int:
    """Print the status of the registered jobs; return 0 healthy, 1 unhealthy, 2 unreachable."""
    started = time.monotonic()
    try:
        with _connect(settings) as conn:
            report = replace(gather(conn, service), concurrency=settings.concurrency)
    except psycopg.Error as exc:
        # The URL may hold the password: name the host and the database, never the URL.
        refusal = db.permanent_refusal(exc)
        if refusal is not None:
            report_refused(settings, get_logger(), refusal)
            return EXIT_UNREACHABLE
        error = db.describe_error(exc)
        waited_s = time.monotonic() - started
        report_unreachable(
            settings,
            get_logger(),
            error,
            timeout_s=CONNECT_TIMEOUT_S,
            attempts=1,
            waited_s=waited_s,
        )
        return EXIT_UNREACHABLE
    out.write(render_json(report) if as_json else render_table(report))
    return EXIT_HEALTHY if report.healthy else EXIT_UNHEALTHY


def report_empty(settings: Settings, why: str, *, as_json: bool, out: TextIO) -> int:
    """No database to read yet (`why`): no jobs registered, healthy (exit 0), as a database
    the worker never migrated; nothing is created."""
    report = Report(datetime.now(UTC), [], concurrency=settings.concurrency)
    out.write(render_json(report) if as_json else render_table(report, why))
    return EXIT_HEALTHY


def gather(
    conn: db.Conn,
    service: str | None = None,
    *,
    job: str | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> Report:
    """Read every registered job (of `service`, or only `job`, if given) and its runs in
    one query; with `limit`, one page of them after the cursor `after` (`next_after` is
    the next page's, None on the last)."""
    rows = reads.job_status(
        conn, service, job, after=parse_cursor(after), limit=None if limit is None else limit + 1
    )
    following = None
    if limit is not None and len(rows) > limit:
        rows, following = rows[:limit], f"{rows[limit - 1]['service']}:{rows[limit - 1]['job']}"
    live = processes.listed(conn)
    if not rows:
        return Report(db.now(conn), [], processes=live)
    checked_at: datetime = rows[0]["checked_at"]
    report = Report(
        checked_at,
        [_judge(row, checked_at) for row in rows],
        processes=live,
        next_after=following,
    )
    jobs = [replace(job, service_alive=report.service_alive(job.service)) for job in report.jobs]
    return replace(report, jobs=jobs)


def parse_cursor(after: str | None) -> tuple[str, str] | None:
    """A page cursor, `SERVICE:JOB` (ValueError for anything else)."""
    if after is None:
        return None
    service, sep, job = after.partition(":")
    if not sep or not job:
        raise ValueError("a page cursor is SERVICE:JOB, as `next` gave it")
    return service, job


def _judge(row: dict[str, Any], now: datetime) -> JobStatus:
    schedule = schedules.parse(row["schedule"])
    return JobStatus(
        job=row["job"],
        service=row["service"] or "-",
        schedule=schedule.text,
        cadence=schedule.describe(),
        last_started_at=row["last_started_at"],
        last_status=row["last_status"],
        duration_ms=row["duration_ms"],
        succeeded=row["succeeded"],
        failed=row["failed"],
        next_due_at=None if row["next_due_at"] == schedules.NEVER else row["next_due_at"],
        paused=bool(row["paused"]),
        last_success_at=row["last_success_at"],
        health=health(row, _period(schedule.period_s), now),
        source=row["source"],
        declared_in=row["declared_in"],
        definition=row["definition"],
        runs=row["runs"],
        successes=row["successes"],
        failures=row["failures"],
        progress_done=row["progress_done"],
        progress_total=row["progress_total"],
        checked_at=now,
        description=describe(row),
    )


def describe(row: dict[str, Any]) -> str | None:
    """A job's description: a runtime job's definition's, a built-in job's own, or a jobs
    file job's, read from the file its row names (`declared_in`) where this process runs."""
    if row["definition"] is not None:
        return row["definition"].get("description") or None
    if row["source"] == "system":
        builtin = JOBS.get(row["job"])
        return None if builtin is None else builtin.description
    if row["declared_in"] is None:
        return None
    try:
        job = jobfile.declared_jobs(Path(row["declared_in"]), tuple(JOBS)).get(row["job"])
    except jobfile.JobsFileError:
        return None
    return None if job is None else job.description


def _period(seconds: int | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def health(row: dict[str, Any], period: timedelta | None, now: datetime) -> str:
    """A job's verdict from its `reads.job_status` row (the README, "`worker status`").
    A job with no period (`manual`, `at`) is never stale: only its last run judges it.
    Staleness is counted from the last resume at the earliest: the occurrences a pause
    skipped are not held against the job."""
    if row["paused"]:
        return "paused"
    if row["last_completed_status"] == "failed":
        return "failed"
    if period is None:
        return "waiting" if row["last_started_at"] is None else "ok"
    resumed_at: datetime | None = row.get("resumed_at")

    def since(moment: datetime) -> datetime:
        return moment if resumed_at is None else max(moment, resumed_at)

    if row["last_started_at"] is None:
        due_since = now - since(row["next_due_at"])
        return "never_run" if due_since > STALE_AFTER_PERIODS * period else "waiting"
    if row["last_success_at"] is None:
        # Trying since its first run: stale only once that is 2 periods ago.
        tried_for = now - since(row["first_started_at"])
        return "stale" if tried_for > STALE_AFTER_PERIODS * period else "waiting"
    if now - since(row["last_success_at"]) > STALE_AFTER_PERIODS * period:
        return "stale"
    return "ok"


def render_json(report: Report) -> str:
    """{"healthy", "checked_at", "jobs": [...]} with ISO 8601 UTC times."""
    return json.dumps(report_dict(report), indent=2) + "\n"


def report_dict(report: Report) -> dict[str, Any]:
    """The JSON shape `status --json` prints and the HTTP endpoint's /api/jobs answers."""
    return {
        "healthy": report.healthy,
        "checked_at": iso(report.checked_at),
        "running": report.running,
        "concurrency": report.concurrency,
        "live_services": sorted(report.live_services),
        "jobs": [job_dict(job) for job in report.jobs],
    }


def process_dict(process: dict[str, Any]) -> dict[str, Any]:
    """One row of `GET /api/processes`."""
    return {
        **{k: process[k] for k in ("id", "host", "pid", "service", "version", "concurrency")},
        "started_at": iso(process["started_at"]),
        "last_seen_at": iso(process["last_seen_at"]),
        "alive": process["alive"],
        "running": process["running"],
        "jobs": process.get("jobs"),
    }


def job_dict(job: JobStatus) -> dict[str, Any]:
    """One job of `report_dict`."""
    return {
        "job": job.job,
        "service": job.service,
        "schedule": job.schedule,
        "cadence": job.cadence,
        "last_started_at": iso(job.last_started_at),
        "last_status": job.last_status,
        "duration_ms": job.duration_ms,
        "succeeded": job.succeeded,
        "failed": job.failed,
        "next_due_at": iso(job.next_due_at),
        "paused": job.paused,
        "last_success_at": iso(job.last_success_at),
        "health": job.health,
        "healthy": job.healthy,
        "service_alive": job.service_alive,
        "source": job.source,
        "declared_in": job.declared_in,
        "definition": job.definition,
        "counters": {"runs": job.runs, "successes": job.successes, "failures": job.failures},
        # While its last run goes on: for how long, and its items done of total so far.
        "running": None
        if job.running_ms is None
        else {"elapsed_ms": job.running_ms, "done": job.progress_done, "total": job.progress_total},
        "description": job.description,
    }


_COLUMNS = (
    "JOB",
    "SERVICE",
    "LAST START (UTC)",
    "STATUS",
    "DURATION",
    "OK/FAILED",
    "NEXT DUE (UTC)",
    "PAUSED",
    "LAST SUCCESS (UTC)",
    "HEALTH",
)


def render_table(report: Report, why_empty: str | None = None) -> str:
    """An aligned table, then one verdict line naming every unhealthy or paused job; no
    table when no job is registered (`why_empty`: why none can be)."""
    cells = [_COLUMNS, *(_table_row(job) for job in report.jobs)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    table = [*lines, ""] if report.jobs else []
    verdict = _verdict(report, why_empty)
    return "\n".join([*table, *verdict, "", *_capacity(report)]) + "\n"


def _table_row(job: JobStatus) -> tuple[str, ...]:
    counts = "-" if job.succeeded is None else f"{job.succeeded}/{job.failed}"
    return (
        job.job,
        job.service,
        _clock(job.last_started_at),
        job.last_status or "never run",
        duration(job.duration_ms),
        counts,
        _clock(job.next_due_at),
        "yes" if job.paused else "no",
        _clock(job.last_success_at),
        job.health,
    )


def _verdict(report: Report, why_empty: str | None = None) -> list[str]:
    reasons = {
        "failed": "its last completed run failed",
        "stale": f"no success or partial run within {STALE_AFTER_PERIODS} x its period",
        "never_run": f"it has never run, though due for {STALE_AFTER_PERIODS} x its period",
    }
    unhealthy = [f"  {job.job}: {reasons[job.health]}" for job in report.jobs if not job.healthy]
    lines = ["healthy" if report.healthy else "UNHEALTHY", *unhealthy]
    if not report.jobs:
        why = why_empty or "no service has started on this database yet"
        lines.append(f"no jobs registered: {why}")
    paused = [job.job for job in report.jobs if job.paused]
    if paused:
        lines.append(
            f"paused (skipped by every replica; not counted as unhealthy): {', '.join(paused)}"
        )
    return lines


def _capacity(report: Report) -> list[str]:
    """What runs now, and how many runs a process takes at once."""
    lines = [f"running now: {', '.join(report.running) or 'nothing'}"] if report.jobs else []
    if report.concurrency is not None:
        lines.append(
            f"each service process runs up to {report.concurrency} jobs at once "
            "(WORKER_CONCURRENCY); a job never has two runs at a time"
        )
    alive = sorted(report.live_services)
    if alive:
        lines.append(f"live processes run: {', '.join(alive)}")
    for service, jobs in report.orphaned.items():
        lines.append(f"no live process runs service {service} (jobs: {', '.join(jobs)})")
    return lines


def _connect(settings: Settings) -> db.Conn:
    # A health check answers within CONNECT_TIMEOUT_S: one attempt, no backoff.
    return db.connect(
        settings.database, application_name="worker:status", connect_timeout_s=CONNECT_TIMEOUT_S
    )


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, or None."""
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _clock(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(duration_ms: int | None) -> str:
    """A run's duration for people: `4.2s`, `3m07s`, `-` when unknown."""
    if duration_ms is None:
        return "-"
    seconds = duration_ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"
