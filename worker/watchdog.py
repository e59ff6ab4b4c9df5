"""The watchdog: what no process sees on its own, checked by every live process once a poll.

A job nobody claims past its grace raises JOB_OVERDUE, and JOB_RECOVERED once a live process
takes it; a service that had processes and has had no live one for SERVICE_DOWN_SECONDS
raises SERVICE_DOWN, and SERVICE_RECOVERED once one is live; a run going on longer than three
times the 95th percentile of its job's last 20 successful runs raises RUN_SLOW, once, while
it runs. One alert per streak, whichever process sees it first: the streak's key in
worker_streaks decides (`store.alerts.change_streaks`). ARCHITECTURE.md, "Watchdog".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import psycopg

from . import alerts, db
from .settings import Settings
from .store import alerts as alert_store
from .store import processes
from .store import watchdog as store

GRACE_FLOOR_S = 60.0  # a job is overdue this long after its due time at the least...
GRACE_FRACTION = 0.1  # ...or a tenth of its period, whichever is longer
SLOW_FACTOR = 3.0  # RUN_SLOW: this many times...
SLOW_PERCENTILE = 0.95  # ...the 95th percentile...
SLOW_SAMPLE = 20  # ...of the job's last 20 successful runs...
SLOW_MIN_RUNS = 10  # ...when at least 10 exist
# Shorter runs are judged by what it takes to claim and record them, not by their work.
SLOW_FLOOR_MS = 1000.0
JOBS_LISTED = 20  # a SERVICE_DOWN message names at most this many of the service's jobs
OPENS_PER_CHECK = 100  # overdue jobs opened per check; more wait for the next poll


def overdue_grace_s(period_s: int | None, override_s: float | None = None) -> float:
    """How long past its due time a job may stay unclaimed: OVERDUE_GRACE_SECONDS when set,
    else a tenth of its period, at least a minute (the minute when the period is unknown)."""
    if override_s is not None:
        return override_s
    return max(GRACE_FLOOR_S, GRACE_FRACTION * (period_s or 0))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` percentile, interpolated between the closest ranks (as PostgreSQL's
    percentile_cont)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def slow_threshold_ms(durations_ms: Sequence[float]) -> float | None:
    """How long a run may go on before RUN_SLOW: three times the 95th percentile of its job's
    last 20 successful runs (`durations_ms`, newest first), at least SLOW_FLOOR_MS; None
    with fewer than 10 to judge by."""
    sample = list(durations_ms)[:SLOW_SAMPLE]
    if len(sample) < SLOW_MIN_RUNS:
        return None
    return max(SLOW_FLOOR_MS, SLOW_FACTOR * percentile(sample, SLOW_PERCENTILE))


@dataclass(frozen=True)
class Alert:
    """The alert a change of streak raises."""

    type: str
    level: str
    job: str | None
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """A streak to open or close (`action`), keyed by (`type`, `subject`), as the scan saw it
    (`since`); with the alert it raises, if any (a slow run's end raises none)."""

    action: str
    type: str
    subject: str
    since: datetime
    run_id: int | None = None
    alert: Alert | None = None

    def event(self) -> dict[str, Any]:
        """The change as `store.alerts.change_streaks` takes it."""
        alert = self.alert
        return {
            "action": self.action,
            "type": self.type,
            "subject": self.subject,
            "run_id": self.run_id,
            "since": self.since.isoformat(),
            "alert_type": alert.type if alert else None,
            "level": alert.level if alert else None,
            "job": alert.job if alert else None,
            "message": alert.message if alert else None,
            "metadata": alert.metadata if alert else None,
        }


def changes(observed: Iterable[dict[str, Any]], override_s: float | None = None) -> list[Change]:
    """The changes of streak the scan's rows call for (`store.watchdog.scan`); `override_s`
    is OVERDUE_GRACE_SECONDS. A run in progress becomes RUN_SLOW only past its threshold."""
    found = []
    for row in observed:
        change = _BUILDERS[(row["action"], row["type"])](row, override_s)
        if change is not None:
            found.append(change)
    return found


def _at(moment: datetime | str | None) -> str:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return "unknown" if moment is None else moment.isoformat(timespec="seconds")


def _overdue(row: dict[str, Any], override_s: float | None) -> Change:
    facts, job = row["facts"], row["job"]
    grace_s = overdue_grace_s(facts["period_s"], override_s)
    late_s = float(facts["late_s"])
    message = (
        f"Job {job} is overdue: it was due at {_at(row['since'])} and no live process has "
        f"claimed it for {late_s:.0f} s (grace {grace_s:g} s). Is its service "
        f"{facts['service']} down, or saturated? (rule OVERDUE)"
    )
    metadata = {
        "rule": "OVERDUE",
        "service": facts["service"],
        "schedule": facts["schedule"],
        "next_due_at": facts["next_due_at"],
        "grace_s": grace_s,
        "late_s": round(late_s, 3),
    }
    alert = Alert("JOB_OVERDUE", "WARNING", job, message, metadata)
    return Change("open", row["type"], row["subject"], row["since"], alert=alert)


def _overdue_ended(row: dict[str, Any], override_s: float | None) -> Change:
    facts, job, run_id = row["facts"], row["job"], row["run_id"]
    if run_id is not None:
        how = f"run {run_id} ({facts['run_status']})"
    elif facts["next_due_at"] is not None:
        how = "its occurrence was consumed without a run"
    else:
        how = "its ledger row is gone"
    message = (
        f"Job {job} recovered: a live process took the occurrence due at {_at(row['since'])}, "
        f"{how}; clears JOB_OVERDUE (rule OVERDUE)."
    )
    metadata = {
        "rule": "OVERDUE",
        "cleared": "JOB_OVERDUE",
        "cleared_alert_id": facts["alert_id"],
        "run_id": run_id,
        "next_due_at": facts["next_due_at"],
        "overdue_s": round(float(facts["overdue_s"]), 3),
    }
    alert = Alert(alerts.RECOVERED, "INFO", job, message, metadata)
    return Change("close", row["type"], row["subject"], row["since"], run_id, alert)


def _down(row: dict[str, Any], override_s: float | None) -> Change:
    facts, service = row["facts"], row["subject"]
    jobs, count = facts["jobs"], int(facts["job_count"])
    listed = ", ".join(jobs) + (f" and {count - len(jobs)} more" if count > len(jobs) else "")
    down_s = float(facts["down_s"])
    message = (
        f"Service {service} has had no live process for {down_s:.0f} s (last live at "
        f"{_at(row['since'])}): its jobs are not running: {listed}. (rule SERVICE_DOWN)"
    )
    metadata = {
        "rule": "SERVICE_DOWN",
        "service": service,
        "last_live_at": facts["last_live_at"],
        "down_s": round(down_s, 3),
        "jobs": jobs,
        "job_count": count,
    }
    alert = Alert("SERVICE_DOWN", "ERROR", None, message, metadata)
    return Change("open", row["type"], service, row["since"], alert=alert)


def _down_ended(row: dict[str, Any], override_s: float | None) -> Change:
    facts, service = row["facts"], row["subject"]
    live = facts["processes"] or []
    down_s = float(facts["down_s"])
    message = (
        f"Service {service} recovered: {', '.join(live)} live after {down_s:.0f} s without "
        f"a live process; clears SERVICE_DOWN (rule SERVICE_DOWN)."
    )
    metadata = {
        "rule": "SERVICE_DOWN",
        "service": service,
        "cleared": "SERVICE_DOWN",
        "cleared_alert_id": facts["alert_id"],
        "processes": live,
        "down_s": round(down_s, 3),
    }
    alert = Alert("SERVICE_RECOVERED", "INFO", None, message, metadata)
    return Change("close", row["type"], service, row["since"], alert=alert)


def _slow(row: dict[str, Any], override_s: float | None) -> Change | None:
    facts, job, run_id = row["facts"], row["job"], row["run_id"]
    durations = facts["durations_ms"]
    threshold_ms = slow_threshold_ms(durations)
    elapsed_ms = float(facts["elapsed_ms"])
    if threshold_ms is None or elapsed_ms <= threshold_ms:
        return None
    p95_s = percentile(durations[:SLOW_SAMPLE], SLOW_PERCENTILE) / 1000
    message = (
        f"Job {job}: run {run_id} has been running for {elapsed_ms / 1000:.1f} s, over "
        f"{SLOW_FACTOR:g} x the 95th percentile ({p95_s:.1f} s) of its last {len(durations)} "
        f"successful runs (rule RUN_SLOW)."
    )
    metadata = {
        "rule": "RUN_SLOW",
        "run_id": run_id,
        "elapsed_s": round(elapsed_ms / 1000, 3),
        "p95_s": round(p95_s, 3),
        "threshold_s": round(threshold_ms / 1000, 3),
        "runs": len(durations),
    }
    alert = Alert("RUN_SLOW", "WARNING", job, message, metadata)
    return Change("open", row["type"], row["subject"], row["since"], run_id, alert)


def _slow_ended(row: dict[str, Any], override_s: float | None) -> Change:
    return Change("close", row["type"], row["subject"], row["since"])


_BUILDERS: dict[tuple[str, str], Callable[[dict[str, Any], float | None], Change | None]] = {
    ("open", "JOB_OVERDUE"): _overdue,
    ("close", "JOB_OVERDUE"): _overdue_ended,
    ("open", "SERVICE_DOWN"): _down,
    ("close", "SERVICE_DOWN"): _down_ended,
    ("open", "RUN_SLOW"): _slow,
    ("close", "RUN_SLOW"): _slow_ended,
}


class Watchdog:
    """One process's watchdog. The dispatcher scans (`observe`) in the transaction of each
    read that carries the heartbeat (once a poll) and applies what it found (`check`) after
    that read's claims; the alerts' webhooks go out on a thread of its own, so a slow
    receiver never delays a claim."""

    def __init__(self, settings: Settings, http: httpx.Client, log: Any) -> None:
        self._settings = settings
        self._http = http
        self._log = log
        self._bounds = store.Bounds(
            grace_s=settings.overdue_grace_s,
            grace_floor_s=GRACE_FLOOR_S,
            grace_fraction=GRACE_FRACTION,
            down_s=settings.service_down_s,
            dead_after_s=processes.DEAD_AFTER_S,
            slow_sample=SLOW_SAMPLE,
            slow_min_runs=SLOW_MIN_RUNS,
            jobs_listed=JOBS_LISTED,
            limit=OPENS_PER_CHECK,
        )
        self._notifier: ThreadPoolExecutor | None = None

    def check(self, conn: db.Conn, wanted: list[Change] | None = None) -> list[dict[str, Any]]:
        """Open and close what a scan calls for (`wanted`, one the caller made; else one made
        now); the alert rows this process raised. Never raises: an error is logged
        (`watchdog_failed`), the next poll checks again."""
        try:
            return self.apply(conn, self.observe(conn) if wanted is None else wanted)
        except Exception as exc:  # the loop it runs on must go on whatever a check meets
            self.failed(exc)
        return []

    def failed(self, exc: BaseException) -> None:
        """Log a check's failure: a database error by its description, anything else with
        its traceback."""
        if isinstance(exc, psycopg.Error):
            self._log.warning("watchdog_failed", error=db.describe_error(exc))
        else:
            self._log.error("watchdog_failed", exc_info=exc)

    def observe(self, conn: db.Conn) -> list[Change]:
        """The check's first half: the changes of streak the scan calls for."""
        return changes(store.scan(conn, self._bounds), self._settings.overdue_grace_s)

    def apply(self, conn: db.Conn, wanted: list[Change]) -> list[dict[str, Any]]:
        """The check's second half: make the changes (those another process made first are
        nothing), then announce the alerts raised here; their rows."""
        if not wanted:
            return []
        raised = alert_store.change_streaks(
            conn, [change.event() for change in wanted], dead_after_s=processes.DEAD_AFTER_S
        )
        for alert in raised:
            self._announce(alert)
        return raised

    def close(self) -> None:
        """Wait for the webhooks still going out (the shutdown's grace bounds the wait)."""
        if self._notifier is not None:
            self._notifier.shutdown(wait=True)

    def _announce(self, alert: dict[str, Any]) -> None:
        if self._notifier is None:
            self._notifier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alerts")
        self._notifier.submit(
            alerts.announce,
            alert,
            webhook_url=self._settings.alert_webhook_url,
            webhook_format=self._settings.alert_webhook_format,
            http=self._http,
            log=self._log,
        )
