"""Which jobs exist, which service runs each, and on what schedule: the one source of truth."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import schedules
from .db import Conn
from .jobs import cleanup, leases, quota, replenish
from .jobs.base import JobContext
from .schedules import Schedule
from .settings import Settings


@dataclass(frozen=True)
class JobSpec:
    """A job: its name, its service, its pass and its schedule under given settings.

    `run` is one pass (a built-in job module's, or later a declared job's kind): the
    lifecycle neither knows nor cares which. `check`, when set, validates configuration
    only the database can judge; it runs once at start and raises ConfigError (exit 2).
    """

    name: str
    service: str
    run: Callable[[JobContext], None]
    schedule: Callable[[Settings], Schedule]
    check: Callable[[Conn, Settings], None] | None = None


@dataclass(frozen=True)
class Service:
    """A deployable service and the names of its start and stop events."""

    name: str
    started_event: str = "worker_starting"
    stopped_event: str = "worker_stopped"


def _every(seconds: Callable[[Settings], int]) -> Callable[[Settings], Schedule]:
    return lambda s: schedules.Interval(seconds(s))


def _daily(at: Callable[[Settings], str], weekday: str = "*") -> Callable[[Settings], Schedule]:
    def schedule(s: Settings) -> Schedule:
        hour, minute = at(s).split(":")
        return schedules.Cron(f"{int(minute)} {int(hour)} * * {weekday}", s.schedule_timezone)

    return schedule


JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            quota.NAME,
            "quota",
            quota.run_once,
            _every(lambda s: s.quota_update_interval_hours * 3600),
        ),
        JobSpec(cleanup.TOKENS, "cleanup", cleanup.clean_tokens, _every(lambda s: 3600)),
        JobSpec(
            cleanup.SESSIONS, "cleanup", cleanup.clean_sessions, _daily(lambda s: s.cleanup_at)
        ),
        JobSpec(
            cleanup.CONTENT,
            "cleanup",
            cleanup.clean_content,
            _daily(lambda s: s.cleanup_content_at, weekday="0"),
        ),
        JobSpec(
            cleanup.HISTORY,
            "cleanup",
            cleanup.clean_history,
            _daily(lambda s: s.cleanup_at),
            check=cleanup.check_extra_rules,
        ),
        JobSpec(
            replenish.NAME,
            "replenish",
            replenish.run_once,
            _every(lambda s: s.replenish_interval_minutes * 60),
        ),
        JobSpec(
            leases.NAME,
            "replenish",
            leases.run_once,
            _every(lambda s: s.lease_recovery_interval_minutes * 60),
        ),
    )
}

ALL = "all"
SERVICES: dict[str, Service] = {
    "quota": Service(
        "quota",
        started_event="tavily_quota_updater_starting",
        stopped_event="tavily_quota_updater_stopped",
    ),
    "cleanup": Service("cleanup"),
    "replenish": Service("replenish"),
    ALL: Service(ALL),
}

# Names users already deploy with (SERVICE_TYPE), mapped to the service they mean.
SERVICE_ALIASES = {"tavily_quota_updater": "quota"}


def jobs_of(service: str) -> list[JobSpec]:
    """The jobs a service runs, in registration order (`all`: every job)."""
    return [spec for spec in JOBS.values() if service in (ALL, spec.service)]
