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
    description: str | None = None  # for people: jobs-check, status --json, the dashboard

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
            description="refresh each Tavily key's remaining quota",
        ),
        JobSpec(
            cleanup.TOKENS,
            "cleanup",
            cleanup.clean_tokens,
            _every(lambda s: 3600),
            description="delete expired refresh and password-reset tokens",
        ),
        JobSpec(
            cleanup.SESSIONS,
            "cleanup",
            cleanup.clean_sessions,
            _daily(lambda s: s.cleanup_at),
            description="delete aged-out scrape sessions",
        ),
        JobSpec(
            cleanup.CONTENT,
            "cleanup",
            cleanup.clean_content,
            _daily(lambda s: s.cleanup_content_at, weekday="0"),
            description="delete aged-out Reddit comments, then posts",
        ),
        JobSpec(
            cleanup.HISTORY,
            "cleanup",
            cleanup.clean_history,
            _daily(lambda s: s.cleanup_at),
            check=cleanup.check_extra_rules,
            description="delete the worker's aged-out runs and alerts, and CLEANUP_EXTRA_RULES",
        ),
        JobSpec(
            replenish.NAME,
            "replenish",
            replenish.run_once,
            _every(lambda s: s.replenish_interval_minutes * 60),
            missing=lambda s: None if s.replenish_api_url else "REPLENISH_API_URL",
            description="top up campaigns below their low watermark",
        ),
        JobSpec(
            leases.NAME,
            "replenish",
            leases.run_once,
            _every(lambda s: s.lease_recovery_interval_minutes * 60),
            description="release stock leases that expired unconfirmed",
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


def resolve(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, JobSpec]:
    """Every job as configured (`load`), ConfigError for the first problem of the jobs file,
    a token variable that is not set included: for callers that run every job."""
    loaded = load(settings, env)
    if loaded.problems:
        raise ConfigError(loaded.problems[0].message)
    return loaded.jobs


@dataclass(frozen=True)
class Problem:
    """What keeps a job, or with `job` None the whole jobs file, from running as declared."""

    message: str  # one line: the file read, then `jobs.NAME.KEY: why`
    job: str | None = None  # None: the file as a whole (any job's settings may be in it)
    services: tuple[str, ...] | None = None  # those that would run the job; None: unknown
    at_start: bool = True  # False: only the job's runs fail (a token variable not set)

    def blocks(self, service: str) -> bool:
        """Whether `service` must refuse to start: it would run a job the file garbles."""
        unknown = self.services is None
        return self.at_start and (service == ALL or unknown or service in (self.services or ()))


@dataclass(frozen=True)
class Loaded:
    """The jobs as configured, and the problems of the jobs file (none: all valid)."""

    jobs: dict[str, JobSpec]
    problems: tuple[Problem, ...] = ()
    declared: tuple[jobfile.Declared, ...] = ()  # the jobs file's valid declarations

    def blocking(self, service: str) -> list[Problem]:
        return [problem for problem in self.problems if problem.blocks(service)]

    def problem_of(self, job: str) -> Problem | None:
        """Why `job` cannot run as declared: its entry, or the whole file, is invalid."""
        found = (p for p in self.problems if p.at_start and p.job in (None, job))
        return next(found, None)


def load(settings: Settings, env: Mapping[str, str] | None = None) -> Loaded:
    """Every job as configured: the built-ins with the jobs file's overrides applied, then
    the declared jobs, and what is wrong with the file. An invalid entry leaves its job
    out (a built-in one keeps its own settings); an unreadable file leaves only the
    built-ins, as they are. `env` holds the variables `token_env` names (default: os.environ); a job
    whose variable is not set is kept, without its token (its runs fail, saying so).
    """
    path = settings.jobs_file
    if path is None:
        return Loaded(dict(JOBS))
    try:
        loaded = jobfile.load(path, tuple(JOBS))
    except jobfile.JobsFileError as exc:
        return Loaded(dict(JOBS), (Problem(f"{path}: {exc}"),))
    jobs = dict(JOBS)
    problems = [
        Problem(f"{path}: {broken.error}", broken.name, _services_of(broken))
        for broken in loaded.broken
    ]
    for override in loaded.overrides:
        jobs[override.job] = _overridden(jobs[override.job], override)
    for job in loaded.declared:
        spec = _declared_spec(job, os.environ if env is None else env)
        jobs[job.name] = replace(spec, declared_in=str(path))
        variable = job.action.token_env if isinstance(job.action, HttpCall) else None
        if variable and not spec.secrets:
            where = f"jobs.{job.name}.http.token_env"
            message = f"{path}: {where}: the variable {variable} is not set"
            problems.append(Problem(message, job.name, (job.service,), at_start=False))
    return Loaded(jobs, tuple(problems), loaded.declared)


def _services_of(broken: jobfile.Broken) -> tuple[str, ...] | None:
    """The services that would run a broken entry's job (a built-in's own, and the one the
    entry moves it to); None when that cannot be told (the `service` is the mistake)."""
    own = (JOBS[broken.name].service,) if broken.name in JOBS else ()
    if broken.service is None:
        return own or ("jobs",)
    if broken.service not in jobfile.SERVICES:
        return None
    return tuple(dict.fromkeys((*own, broken.service)))


def _declared_spec(job: jobfile.Declared, env: Mapping[str, str]) -> JobSpec:
    token = None
    if isinstance(job.action, HttpCall) and job.action.token_env:
        token = env.get(job.action.token_env) or None
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
        description=job.description,
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
