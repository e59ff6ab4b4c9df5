"""The jobs file (`WORKER_JOBS_FILE`, default `./worker.toml`): what it may say about jobs.

Read with `tomllib` and validated whole before anything runs; every error names the
offending `jobs.NAME.KEY` (or the line where the TOML itself is broken).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schedules

DEFAULT_PATH = Path("worker.toml")
SERVICES = ("quota", "cleanup", "replenish")
ON_START = ("true", "missed", "false")
# What an entry naming a built-in job may change.
OVERRIDE_KEYS = ("schedule", "timezone", "on_start", "service")
DEFAULTS_KEYS = ("timezone", "on_start")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class JobsFileError(ValueError):
    """The jobs file is unreadable or invalid; the message names the entry and key."""


@dataclass(frozen=True)
class Override:
    """A built-in job's schedule, time zone, start behaviour or service, as the file sets them."""

    job: str
    schedule: str | None = None
    timezone: str | None = None
    on_start: str | None = None
    service: str | None = None


def load(path: Path, builtin_jobs: tuple[str, ...]) -> tuple[Override, ...]:
    """Parse and validate the file at `path`."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise JobsFileError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobsFileError(f"{path} is not valid TOML: {exc}") from None
    _only_keys("", document, ("defaults", "jobs"))
    defaults = _table("defaults", document.get("defaults", {}))
    _only_keys("defaults", defaults, DEFAULTS_KEYS)
    _check_common("defaults", defaults)
    jobs = _table("jobs", document.get("jobs", {}))
    return tuple(
        _entry(name, _table(f"jobs.{name}", entry), builtin_jobs) for name, entry in jobs.items()
    )


def _entry(name: str, entry: Mapping[str, Any], builtin_jobs: tuple[str, ...]) -> Override:
    where = f"jobs.{name}"
    if not _NAME.match(name):
        raise JobsFileError(
            f"{where}: a job name is a lowercase letter, then [a-z0-9_], at most 63"
        )
    if name not in builtin_jobs:
        raise JobsFileError(
            f"{where}: not a built-in job ({', '.join(builtin_jobs)}); "
            "this version of the worker runs only built-in jobs"
        )
    _only_keys(where, entry, OVERRIDE_KEYS)
    _check_common(where, entry)
    if "schedule" in entry:
        _check_schedule(where, entry["schedule"], entry.get("timezone", "UTC"))
    service = entry.get("service")
    if service is not None and service not in SERVICES:
        raise JobsFileError(f"{where}.service: must be one of {', '.join(SERVICES)}")
    return Override(
        name,
        schedule=entry.get("schedule"),
        timezone=entry.get("timezone"),
        on_start=_on_start(entry.get("on_start")),
        service=service,
    )


def _check_common(where: str, entry: Mapping[str, Any]) -> None:
    for key in ("schedule", "timezone", "service"):
        if key in entry and not isinstance(entry[key], str):
            raise JobsFileError(f"{where}.{key}: must be a string")
    if "timezone" in entry:
        try:
            schedules.check_timezone(entry["timezone"])
        except schedules.ScheduleError as exc:
            raise JobsFileError(f"{where}.timezone: {exc}") from None
    if "on_start" in entry and _on_start(entry["on_start"]) not in ON_START:
        raise JobsFileError(f'{where}.on_start: must be true, false or "missed"')


def _check_schedule(where: str, text: str, timezone: str) -> None:
    try:
        schedules.parse(text, timezone)
    except schedules.ScheduleError as exc:
        raise JobsFileError(f"{where}.schedule: {exc}") from None


def _on_start(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise JobsFileError(f"{where}: must be a table")
    return value


def _only_keys(where: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise JobsFileError(f"{name}: unknown key (allowed: {', '.join(allowed)})")
