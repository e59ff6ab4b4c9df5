"""What the charts read of the run history (`web/charts.py` draws them): one function per
named query of `charts.sql`, each a bounded walk of `(job, started_at DESC, id DESC)`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .. import db
from ..db import Conn


def last_runs(conn: Conn, job: str, limit: int) -> list[dict[str, Any]]:
    """A job's last `limit` runs, newest first: id, status, started_at, duration_ms, and
    `elapsed_ms` while one runs."""
    return conn.execute(db.query("charts.last_runs"), {"job": job, "limit": limit}).fetchall()


def runs_per_hour(
    conn: Conn, job: str, zone: str, hours: int
) -> tuple[datetime, list[dict[str, Any]]]:
    """The first hour's start (`zone`'s hours, by the database's clock) and a job's runs
    per hour and status since then (`hour`, `status`, `runs`)."""
    rows = conn.execute(
        db.query("charts.runs_per_hour"), {"job": job, "zone": zone, "hours": hours}
    ).fetchall()
    return rows[0]["since"], [row for row in rows if row["hour"] is not None]


def recent_outcomes(
    conn: Conn, jobs: Sequence[str], per_job: int
) -> dict[str, list[dict[str, Any]]]:
    """The last `per_job` runs of each job, newest first, by job (a job without runs is
    absent)."""
    rows = conn.execute(
        db.query("charts.recent_outcomes"), {"jobs": list(jobs), "per_job": per_job}
    ).fetchall()
    by_job: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_job.setdefault(row["job"], []).append(row)
    return by_job
