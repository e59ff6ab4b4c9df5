"""The run and alert history, searched and paged: `/runs`, `/alerts` and their JSON (one
function per named query of `history.sql`). A page is newest first; its `next` is the id of
its last row when more follow, for the next page's `before`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from .. import db
from ..db import Conn

Page = tuple[list[dict[str, Any]], int | None]  # the rows, and the next page's `before`


@dataclass(frozen=True)
class RunFilters:
    """Which runs: every field optional (None: any), combined with AND."""

    job: str | None = None
    status: str | None = None
    trigger: str | None = None
    since: datetime | None = None  # started at or after
    until: datetime | None = None  # started before
    before: int | None = None  # after this run, in the order of the list


@dataclass(frozen=True)
class AlertFilters:
    """Which alerts: as RunFilters, on the time an alert was raised."""

    type: str | None = None
    job: str | None = None
    only_open: bool = False  # only those nobody acknowledged
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None


def runs(conn: Conn, filters: RunFilters, limit: int) -> Page:
    """At most `limit` runs matching `filters`, newest first."""
    return _page(conn, db.query("history.runs"), asdict(filters), limit)


def alerts(conn: Conn, filters: AlertFilters, limit: int) -> Page:
    """At most `limit` alerts matching `filters`, newest first, each with its `run_id`."""
    return _page(conn, db.query("history.alerts"), asdict(filters), limit)


def _page(conn: Conn, statement: str, params: dict[str, Any], limit: int) -> Page:
    """One row more than `limit` is read: it tells whether another page follows."""
    rows = conn.execute(statement, {**params, "limit": limit + 1}).fetchall()
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], int(rows[limit - 1]["id"])
