"""`worker jobs-check`: every job as configured, its schedule in words, its next due times.

Touches no database: it is for CI and for editing the jobs file.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from . import schedules
from .registry import JobSpec
from .settings import Settings

SHOWN_DUE_TIMES = 3


def run(settings: Settings, jobs: Mapping[str, JobSpec], *, out: TextIO) -> int:
    """Print each job; the file was validated when `jobs` was resolved. Exit 0."""
    now = datetime.now(UTC)
    source = settings.jobs_file or "no jobs file: built-in jobs only"
    out.write(f"jobs file: {source}\n\n")
    for spec in jobs.values():
        out.write(describe(spec, settings, now))
    out.write(
        f"\n{len(jobs)} jobs, all valid (token_env variables are checked when a service starts)\n"
    )
    return 0


def describe(spec: JobSpec, settings: Settings, now: datetime) -> str:
    """Two lines: name, kind, service, schedule in words, on start; the next due times."""
    schedule = spec.schedule(settings)
    zone = ZoneInfo(schedule.timezone if isinstance(schedule, schedules.Cron) else "UTC")
    due = schedules.upcoming(schedule, now, SHOWN_DUE_TIMES)
    times = ", ".join(moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") for moment in due)
    return (
        f"{spec.name}  [{spec.kind}]  service={spec.service}  {schedule.describe()}"
        f"  on_start={spec.starts(settings)}\n    next: {times}\n"
    )
