"""Which jobs each service runs, and when: the one source of truth for cadences."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import schedule

from .db import Conn
from .jobs import cleanup, leases, quota, replenish
from .jobs.base import JobContext, JobResult
from .settings import Settings

HOUR_S = 3600
DAY_S = 24 * HOUR_S
WEEK_S = 7 * DAY_S


@dataclass(frozen=True)
class Cadence:
    """Every `every_s` seconds, or daily at `at`, or weekly on `weekday` at `at`."""

    every_s: int | None = None
    at: str | None = None
    weekday: str | None = None

    @property
    def period_s(self) -> int:
        if self.at is None:
            assert self.every_s is not None
            return self.every_s
        return WEEK_S if self.weekday else DAY_S

    def register(self, scheduler: schedule.Scheduler, timezone: str) -> schedule.Job:
        """An unconfigured `schedule` job (call `.do(fn)` on it) with this cadence."""
        if self.at is None:
            assert self.every_s is not None
            job: schedule.Job = scheduler.every(self.every_s).seconds
            return job
        start = scheduler.every()
        start = getattr(start, self.weekday) if self.weekday else start.day
        job = start.at(self.at, timezone)
        return job

    def describe(self, timezone: str) -> str:
        if self.at is None:
            assert self.every_s is not None
            return f"every {_duration(self.every_s)}"
        when = f"{self.weekday}s" if self.weekday else "daily"
        return f"{when} at {self.at} {timezone}"


@dataclass(frozen=True)
class JobSpec:
    """A job: its name, its service, its pass, and its cadence under given settings.

    `check`, when set, validates configuration that only the database can judge (e.g. that
    a configured column exists); it runs once at start and raises ConfigError (exit 2).
    """

    name: str
    service: str
    run: Callable[[JobContext], JobResult]
    cadence: Callable[[Settings], Cadence]
    check: Callable[[Conn, Settings], None] | None = None


@dataclass(frozen=True)
class Service:
    """A deployable service: the jobs it runs and the names of its start and stop events."""

    name: str
    jobs: tuple[str, ...]
    started_event: str = "worker_starting"
    stopped_event: str = "worker_stopped"


JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            quota.NAME,
            "quota",
            quota.run_once,
            lambda s: Cadence(every_s=s.quota_update_interval_hours * HOUR_S),
        ),
        JobSpec(cleanup.TOKENS, "cleanup", cleanup.clean_tokens, lambda s: Cadence(every_s=HOUR_S)),
        JobSpec(
            cleanup.SESSIONS, "cleanup", cleanup.clean_sessions, lambda s: Cadence(at=s.cleanup_at)
        ),
        JobSpec(
            cleanup.CONTENT,
            "cleanup",
            cleanup.clean_content,
            lambda s: Cadence(at=s.cleanup_content_at, weekday="sunday"),
        ),
        JobSpec(
            cleanup.HISTORY,
            "cleanup",
            cleanup.clean_history,
            lambda s: Cadence(at=s.cleanup_at),
            check=cleanup.check_extra_rules,
        ),
        JobSpec(
            replenish.NAME,
            "replenish",
            replenish.run_once,
            lambda s: Cadence(every_s=s.replenish_interval_minutes * 60),
        ),
        JobSpec(
            leases.NAME,
            "replenish",
            leases.run_once,
            lambda s: Cadence(every_s=s.lease_recovery_interval_minutes * 60),
        ),
    )
}

SERVICES: dict[str, Service] = {
    "quota": Service(
        "quota",
        ("quota",),
        started_event="tavily_quota_updater_starting",
        stopped_event="tavily_quota_updater_stopped",
    ),
    "cleanup": Service(
        "cleanup", (cleanup.TOKENS, cleanup.SESSIONS, cleanup.CONTENT, cleanup.HISTORY)
    ),
    "replenish": Service("replenish", (replenish.NAME, leases.NAME)),
    "all": Service("all", tuple(JOBS)),
}


# Names users already deploy with (SERVICE_TYPE), mapped to the service they mean.
SERVICE_ALIASES = {"tavily_quota_updater": "quota"}


def jobs_of(service: str) -> list[JobSpec]:
    """The job specs a service runs, in registration order."""
    return [JOBS[name] for name in SERVICES[service].jobs]


def next_due(spec: JobSpec, settings: Settings, last_finished: datetime | None) -> datetime | None:
    """When the daemon will next run `spec`, computed from the same cadence it registers.

    Interval jobs are due one period after the last run finished (None if it never ran);
    clock-time jobs at the next occurrence of their time in SCHEDULE_TIMEZONE.
    """
    cadence = spec.cadence(settings)
    if cadence.at is None:
        return (
            None if last_finished is None else last_finished + timedelta(seconds=cadence.period_s)
        )
    job = cadence.register(schedule.Scheduler(), settings.schedule_timezone).do(lambda: None)
    # `schedule` keeps naive local times; make it an aware UTC instant.
    return job.next_run.astimezone().astimezone(UTC)  # type: ignore[no-any-return]


def _duration(seconds: int) -> str:
    if seconds % HOUR_S == 0:
        return f"{seconds // HOUR_S}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
