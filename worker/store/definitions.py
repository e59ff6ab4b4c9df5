"""Runtime jobs' definitions (`worker_jobs` rows with `source = 'runtime'`) and the record of
every change (`worker_job_changes`): one function per named query of `definitions.sql`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .. import db
from ..db import Conn


@dataclass(frozen=True)
class Written:
    """What a runtime job's create or update sets in its `worker_jobs` row."""

    schedule: str  # the canonical text
    first_due: datetime  # next_due_at, for a new job or a changed schedule
    max_attempts: int
    period_s: int | None  # the watchdog's overdue grace is taken from it
    definition: dict[str, Any]


def create(conn: Conn, job: str, written: Written, actor: str) -> bool:
    """Insert the runtime job and its `create` change; False when the name is taken."""
    return _write(conn, db.query("definitions.create_job"), job, written, actor)


def update(conn: Conn, job: str, written: Written, actor: str) -> bool:
    """Replace the runtime job's definition, recording the change; False if none such."""
    return _write(conn, db.query("definitions.update_job"), job, written, actor)


def _write(conn: Conn, query: str, job: str, written: Written, actor: str) -> bool:
    params = {
        "job": job,
        "schedule": written.schedule,
        "first_due": written.first_due,
        "max_attempts": written.max_attempts,
        "period_s": written.period_s,
        "definition": Jsonb(written.definition),
        "actor": actor,
    }
    return conn.execute(query, params).fetchone() is not None


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
