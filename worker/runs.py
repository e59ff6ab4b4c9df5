"""Run history and per-job flags in worker_job_runs and worker_jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from . import db
from .db import Conn
from .jobs.base import JobResult


@dataclass(frozen=True)
class Run:
    id: int
    started_at: datetime


def abandon_running(conn: Conn, job: str) -> list[dict[str, Any]]:
    """Mark `running` rows of `job` abandoned. Call only while holding the job's lock:
    then no live process can own them."""
    return conn.execute(db.query("abandon_running_runs"), {"job": job}).fetchall()


def start(conn: Conn, job: str, trigger: str) -> Run:
    host, pid = db.process_identity()
    row = conn.execute(
        db.query("insert_run"), {"job": job, "trigger": trigger, "host": host, "pid": pid}
    ).fetchone()
    assert row is not None
    return Run(row["id"], row["started_at"])


def finish(
    conn: Conn, run: Run, *, status: str, result: JobResult, duration_ms: int, error: str | None
) -> None:
    """Write the run's outcome; `details` carries the failures and the job's own details."""
    details: dict[str, Any] = dict(result.details)
    if result.failures:
        details["failures"] = result.failures
    conn.execute(
        db.query("finish_run"),
        {
            "id": run.id,
            "status": status,
            "duration_ms": duration_ms,
            "total": result.total,
            "succeeded": result.succeeded,
            "failed": result.failed,
            "error": error,
            "details": Jsonb(details),
        },
    )


def is_paused(conn: Conn, job: str) -> bool:
    row = conn.execute(db.query("is_paused"), {"job": job}).fetchone()
    return bool(row and row["paused"])


def set_paused(conn: Conn, job: str, paused: bool) -> None:
    conn.execute(db.query("set_paused"), {"job": job, "paused": paused})
