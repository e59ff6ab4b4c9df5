"""`worker_alerts`: written by the alert path (`worker.alerts`), listed and acknowledged from
the dashboard and the JSON API; and `worker_streaks`, the watchdog's open streaks, each
opened and closed with its alert. One function per named query of `alerts.sql`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .. import db
from ..db import Conn


def insert(
    conn: Conn, *, type: str, level: str, job: str | None, message: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """The new row's `id` and `created_at`."""
    row = conn.execute(
        db.query("alerts.insert_alert"),
        {"type": type, "level": level, "job": job, "message": message, "metadata": Jsonb(metadata)},
    ).fetchone()
    assert row is not None
    return row


def latest_rule_alerts(
    conn: Conn, job: str, rules: list[str], types: list[str]
) -> list[tuple[str, str]]:
    """The latest alert of each of `rules` (of `types`) for the job, as (rule, type)."""
    rows = conn.execute(
        db.query("alerts.latest_rule_alerts"), {"job": job, "rules": rules, "types": types}
    ).fetchall()
    return [(row["rule"], row["type"]) for row in rows]


def open_alerts(conn: Conn, limit: int) -> list[dict[str, Any]]:
    """The latest alerts nobody acknowledged, newest first, each with the `run_id` it is
    about, if any (the whole history, filtered: `store.history.alerts`)."""
    return conn.execute(db.query("alerts.open_alerts"), {"limit": limit}).fetchall()


def acknowledge(conn: Conn, alert_id: int) -> datetime | None:
    """Acknowledge the alert (again is harmless): when it was, or None if there is none."""
    row = conn.execute(db.query("alerts.ack_alert"), {"id": alert_id}).fetchone()
    return None if row is None else row["acknowledged_at"]


def acknowledge_open(
    conn: Conn,
    *,
    type: str | None,
    job: str | None,
    since: datetime | None,
    until: datetime | None,
    upto: int | None,
) -> int:
    """Acknowledge every open alert matching the filters (None: any), none newer than the
    alert `upto`, in one statement: how many."""
    params = {"type": type, "job": job, "since": since, "until": until, "upto": upto}
    row = conn.execute(db.query("alerts.ack_open"), params).fetchone()
    assert row is not None
    return int(row["acknowledged"])


def change_streaks(
    conn: Conn, events: list[dict[str, Any]], *, dead_after_s: float
) -> list[dict[str, Any]]:
    """Open and close the watchdog's streaks (`worker.watchdog.Change.event`), each with its
    alert, in one statement; the alert rows this process raised (none for a streak another
    process opened or closed first). `dead_after_s`: a process silent this long is dead."""
    return conn.execute(
        db.query("alerts.change_streaks"), {"events": Jsonb(events), "dead_after_s": dead_after_s}
    ).fetchall()
