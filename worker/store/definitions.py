"""Runtime jobs' definitions (`worker_jobs` rows with `source = 'runtime'`) and the record of
every change (`worker_job_changes`): one function per named query of `definitions.sql`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .. import db
from ..db import Conn


def create(
    conn: Conn,
    job: str,
    *,
    schedule: str,
    first_due: datetime,
    max_attempts: int,
    definition: dict[str, Any],
    actor: str,
    period_s: int | None = None,
) -> bool:
    """Insert the runtime job and its `create` change; False when the name is taken."""
    row = conn.execute(
        db.query("definitions.create_job"),
        {
            "job": job,
            "schedule": schedule,
            "first_due": first_due,
            "max_attempts": max_attempts,
            "period_s": period_s,
            "definition": Jsonb(definition),
            "actor": actor,
        },
    ).fetchone()
    return row is not None


def update(
    conn: Conn,
    job: str,
    *,
    schedule: str,
    first_due: datetime,
    max_attempts: int,
    definition: dict[str, Any],
    actor: str,
    period_s: int | None = None,
) -> bool:
    """Replace the runtime job's definition, recording the change; False if none such."""
    row = conn.execute(
        db.query("definitions.update_job"),
        {
            "job": job,
            "schedule": schedule,
            "first_due": first_due,
            "max_attempts": max_attempts,
            "period_s": period_s,
            "definition": Jsonb(definition),
            "actor": actor,
        },
    ).fetchone()
    return row is not None


def delete(conn: Conn, job: str, actor: str) -> bool:
    """Delete the runtime job (its runs stay), cancelling a run in progress; False if none."""
    row = conn.execute(db.query("definitions.delete_job"), {"job": job, "actor": actor})
    return row.fetchone() is not None


def record_change(
    conn: Conn,
    job: str,
    action: str,
    actor: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        db.query("definitions.record_change"),
        {
            "job": job,
            "action": action,
            "actor": actor,
            "before": None if before is None else Jsonb(before),
            "after": None if after is None else Jsonb(after),
        },
    )


def changes(conn: Conn, job: str, limit: int) -> list[dict[str, Any]]:
    """The job's changes, newest first."""
    return conn.execute(
        db.query("definitions.job_changes"), {"job": job, "limit": limit}
    ).fetchall()


def source(conn: Conn, job: str) -> dict[str, Any] | None:
    """Where the job comes from (`source`, `declared_in`) and its definition; None if unknown."""
    return conn.execute(db.query("definitions.job_source"), {"job": job}).fetchone()


def runtime_jobs(conn: Conn, after: str = "", limit: int = 100) -> list[dict[str, Any]]:
    """Runtime jobs by name, after `after`."""
    return conn.execute(
        db.query("definitions.runtime_jobs"), {"after": after, "limit": limit}
    ).fetchall()
