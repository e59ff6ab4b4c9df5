"""Which jobs exist, which service runs each, and on what schedule: the one source of truth."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from . import jobfile, schedules
from .db import Conn
from .jobfile import HttpCall
from .jobs import cleanup, declared, leases, quota, replenish
from .jobs.base import JobContext
from .schedules import DEFAULT_POLICY, Policy, Schedule
from .settings import SERVICE_NAMES, ConfigError, Settings


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
    on_start: str | None = None  # true | missed | false; None: RUN_ON_START
    heartbeat_url: str | None = None  # None: HEARTBEAT_URL
    kind: str = "builtin"  # or a declared job's kind: http, command, python, sql
    # The variable the job cannot run without, when it is not set; None when it can run.
    missing: Callable[[Settings], str | None] = lambda s: None
    secrets: tuple[str, ...] = ()  # values of its own to mask wherever text leaves the process
    policy: Policy = DEFAULT_POLICY  # late, overlapping and owed occurrences
    source: str = "system"  # or `file` (the jobs file's), or `runtime` (created through the API)
    declared_in: str | None = None  # the jobs file that declares it

    def starts(self, settings: Settings) -> str:
        """What this job does when its service starts (ARCHITECTURE.md, "At start...")."""
        return self.on_start or settings.run_on_start


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
            missing=lambda s: None if s.replenish_api_url else "REPLENISH_API_URL",
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
    "jobs": Service("jobs"),
    ALL: Service(ALL),
}
assert tuple(SERVICES) == SERVICE_NAMES, "settings.SERVICE_NAMES lists every service"

# Names users already deploy with (SERVICE_TYPE), mapped to the service they mean.
SERVICE_ALIASES = {"tavily_quota_updater": "quota"}


def select(jobs: Mapping[str, JobSpec], service: str) -> list[JobSpec]:
    """The jobs of `jobs` that `service` runs, in order (`all`: every one)."""
    return [spec for spec in jobs.values() if service in (ALL, spec.service)]


def runnable(
    jobs: Sequence[JobSpec], settings: Settings
) -> tuple[list[JobSpec], list[tuple[JobSpec, str]]]:
    """The jobs whose configuration is present, and the others with the variable each needs."""
    missing = [(spec, spec.missing(settings)) for spec in jobs]
    return (
        [spec for spec, variable in missing if variable is None],
        [(spec, variable) for spec, variable in missing if variable is not None],
    )


def jobs_of(service: str, settings: Settings | None = None) -> list[JobSpec]:
    """The jobs a service runs, in registration order (`all`: every job).

    With `settings`, as the jobs file configures them (`resolve`: ConfigError for a bad file).
    """
    return select(JOBS if settings is None else resolve(settings), service)


def resolve(
    settings: Settings, env: Mapping[str, str] | None = None, *, need_tokens: bool = True
) -> dict[str, JobSpec]:
    """Every job as configured: the built-ins with the jobs file's overrides applied, then
    the declared jobs. `env` holds the variables `token_env` names (default: os.environ);
    a variable that is not set is a ConfigError unless `need_tokens` is false.
    """
    if settings.jobs_file is None:
        return dict(JOBS)
    try:
        loaded = jobfile.load(settings.jobs_file, tuple(JOBS))
    except jobfile.JobsFileError as exc:
        raise ConfigError(f"WORKER_JOBS_FILE: {exc}") from None
    jobs = dict(JOBS)
    for override in loaded.overrides:
        jobs[override.job] = _overridden(jobs[override.job], override)
    for job in loaded.declared:
        spec = _declared_spec(job, os.environ if env is None else env, need_tokens)
        jobs[job.name] = replace(spec, declared_in=str(settings.jobs_file))
    return jobs


def _declared_spec(job: jobfile.Declared, env: Mapping[str, str], need_tokens: bool) -> JobSpec:
    token = None
    if isinstance(job.action, HttpCall) and job.action.token_env:
        token = env.get(job.action.token_env)
        if not token and need_tokens:
            raise ConfigError(
                f"WORKER_JOBS_FILE: jobs.{job.name}.http.token_env: the variable "
                f"{job.action.token_env} is not set"
            )
    text, zone = job.schedule, job.timezone
    return JobSpec(
        job.name,
        job.service,
        declared.spec_runner(job, token),
        lambda s: schedules.parse(text, zone or s.schedule_timezone),
        on_start=job.on_start,
        heartbeat_url=job.heartbeat_url,
        kind=job.kind,
        secrets=(token,) if token else (),
        policy=job.policy,
        source="file",
    )


def _overridden(spec: JobSpec, override: jobfile.Override) -> JobSpec:
    schedule = spec.schedule
    if override.schedule is not None:
        text, zone = override.schedule, override.timezone
        schedule = lambda s: schedules.parse(text, zone or s.schedule_timezone)  # noqa: E731
    elif override.timezone is not None:
        zone = override.timezone
        schedule = lambda s: _in_zone(spec.schedule(s), zone)  # noqa: E731
    return replace(
        spec,
        schedule=schedule,
        service=override.service or spec.service,
        on_start=override.on_start or spec.on_start,
        heartbeat_url=override.heartbeat_url or spec.heartbeat_url,
        policy=override.policy or spec.policy,
    )


def _in_zone(schedule: Schedule, zone: str) -> Schedule:
    if isinstance(schedule, schedules.Cron):
        return schedules.Cron(schedule.expression, zone)
    return schedule
