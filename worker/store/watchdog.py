"""The watchdog's read of the ledger, the run history, the processes and the open streaks,
once a poll (ARCHITECTURE.md, "Watchdog"). One function per named query of `watchdog.sql`;
the streaks themselves change through `store.alerts.change_streaks`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .. import db
from ..db import Conn


@dataclass(frozen=True)
class Bounds:
    """What the scan judges by: the overdue grace (`grace_s` for every job when set, else
    max(`grace_floor_s`, `grace_fraction` x the job's period)), how long a service may have no
    live process (`down_s`), when a process is dead (`dead_after_s`), and how many of a job's
    successful runs a slow run is judged against (`slow_sample`, at least `slow_min_runs`)."""

    grace_s: float | None
    grace_floor_s: float
    grace_fraction: float
    down_s: float
    dead_after_s: float
    slow_sample: int
    slow_min_runs: int
    jobs_listed: int  # a SERVICE_DOWN alert names at most this many of its jobs
    limit: int  # overdue jobs opened per check: a poll's work stays bounded

    @property
    def least_grace_s(self) -> float:
        return self.grace_s if self.grace_s is not None else self.grace_floor_s


def scan(conn: Conn, bounds: Bounds) -> list[dict[str, Any]]:
    """What may open or close a streak now: `action, type, subject, job, run_id, since,
    facts` per row (watchdog.sql, `scan`)."""
    params = {**asdict(bounds), "least_grace_s": bounds.least_grace_s}
    return conn.execute(db.query("watchdog.scan"), params).fetchall()
