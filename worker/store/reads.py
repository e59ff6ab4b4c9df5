"""What `worker status`, the dashboard, the JSON API and `/metrics` read of the ledger and
the run history: one function per named query of `reads.sql`, each a bounded slice
through an index."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from .. import db
from ..db import Conn


def job_status(
    conn: Conn,
    service: str | None = None,
    job: str | None = None,
    *,
    after: tuple[str, str] | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Every registered job (of `service`, or only `job`; or at most `limit` after the
    (service, job) `after`) with its latest runs; none on a database the worker has never
    migrated (status must not migrate it silently)."""
    params = {
        "service": service,
        "job": job,
        "after_service": after[0] if after else None,
        "after_job": after[1] if after else None,
        "limit": limit,
    }
    try:
        return conn.execute(db.query("reads.job_status"), params).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return []


def recent_runs(conn: Conn, limit: int) -> list[dict[str, Any]]:
    """The latest runs of every job, newest first."""
    return conn.execute(db.query("reads.recent_runs"), {"limit": limit}).fetchall()


def job_runs(conn: Conn, job: str, limit: int) -> list[dict[str, Any]]:
    """One job's latest runs, newest first."""
    return conn.execute(db.query("reads.job_runs"), {"job": job, "limit": limit}).fetchall()


def run(conn: Conn, run_id: int) -> dict[str, Any] | None:
    """One run with its details, output and result."""
    return conn.execute(db.query("reads.run"), {"id": run_id}).fetchone()


def finished_runs(conn: Conn, since: datetime | None, overlap_s: float) -> list[dict[str, Any]]:
    """Runs that ended since `since` minus `overlap_s` (since now, when None), with the
    database's `now`: the /metrics counters' increments."""
    return conn.execute(
        db.query("reads.finished_runs"), {"since": since, "overlap_s": overlap_s}
    ).fetchall()


def started_runs(conn: Conn, since: datetime | None, overlap_s: float) -> list[dict[str, Any]]:
    """Runs serving an occurrence that started since `since` minus `overlap_s` (since now,
    when None), with their `lateness_s`: the /metrics lateness histogram's increments."""
    return conn.execute(
        db.query("reads.started_runs"), {"since": since, "overlap_s": overlap_s}
    ).fetchall()


def running_runs(conn: Conn) -> dict[str, int]:
    """The number of runs in progress, by job (jobs with none are absent)."""
    rows = conn.execute(db.query("reads.running_runs")).fetchall()
    return {row["job"]: int(row["running"]) for row in rows}


def live_processes(conn: Conn, dead_after_s: float) -> dict[str, int]:
    """The live processes of each service that has or had one, by service."""
    rows = conn.execute(db.query("reads.live_processes"), {"dead_after_s": dead_after_s}).fetchall()
    return {row["service"]: int(row["live"]) for row in rows}
