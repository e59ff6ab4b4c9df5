"""`worker_processes`: one row per live daemon, refreshed by its loop's read once a poll
(ARCHITECTURE.md, "Processes"); and `worker_services`, every service a daemon ever ran, live
as of its last start or clean stop (the watchdog's memory). One function per named query of
`processes.sql`."""

from __future__ import annotations

from typing import Any

import psycopg

from .. import db
from ..db import Conn

# Every daemon refreshes its row once a poll (the heartbeat rides on `ledger.due_jobs`); one
# silent this many polls is dead.
POLL_S = 5
DEAD_AFTER_POLLS = 3
DEAD_AFTER_S = POLL_S * DEAD_AFTER_POLLS


def register(
    conn: Conn, service: str, version: str, concurrency: int, jobs: list[str] | None = None
) -> int:
    """This daemon's row, with the declared and built-in `jobs` it runs (None: every job of
    its service, as an older version's row says) (a dead one of the same host and pid goes),
    its service remembered as live; rows silent for a day are pruned on the way."""
    host, pid = db.process_identity()
    row = conn.execute(
        db.query("processes.register_process"),
        {
            "host": host,
            "pid": pid,
            "service": service,
            "version": version,
            "concurrency": concurrency,
            "jobs": jobs,
        },
    ).fetchone()
    conn.execute(db.query("processes.prune_processes"))
    assert row is not None
    return int(row["id"])


def deregister(conn: Conn, process_id: int) -> None:
    """A clean stop: the row goes, its service remembered as live until now."""
    conn.execute(db.query("processes.deregister_process"), {"id": process_id})


def listed(conn: Conn) -> list[dict[str, Any]]:
    """Every registered process, `alive` while seen within DEAD_AFTER_S; none on a database
    no v3 process has migrated."""
    try:
        return conn.execute(
            db.query("processes.list_processes"), {"dead_after_s": DEAD_AFTER_S}
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return []


def declared_by(conn: Conn, job: str, service: str) -> list[dict[str, Any]]:
    """The live processes (`service, host, pid`) of the job's `service` (or `all`) that run
    `job` (or may: an older version's row runs every job of its service)."""
    params = {"job": job, "service": service, "dead_after_s": DEAD_AFTER_S}
    return conn.execute(db.query("processes.declared_by"), params).fetchall()


def unserved(conn: Conn, service: str | None, job: str | None = None) -> str | None:
    """Why a request to run a job of `service` would wait for ever: no live process serves
    it (its own or an `all` one), or, for a declared or built-in `job`, none of those runs
    it (they started without it); None when one does (or the service is unknown)."""
    if not service:
        return None
    serving = [p for p in listed(conn) if p["alive"] and p["service"] in (service, "all")]
    if not serving:
        return (
            f"no live process of the {service} service serves this job: start "
            f"`worker {service}` (or `worker all`), then ask again"
        )
    if job is None or declared_by(conn, job, service):
        return None
    return (
        f"no live process of the {service} service runs {job}: the {len(serving)} live "
        f"started without it in their jobs file; restart one with it declared, then ask again"
    )
