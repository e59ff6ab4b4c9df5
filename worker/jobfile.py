"""The jobs file (`WORKER_JOBS_FILE`, default `./worker.toml`): declared jobs and overrides.

Read with `tomllib` and validated before anything runs, entry by entry: every error names
the offending `jobs.NAME.KEY` (or the line where the TOML itself is broken). What a broken
entry stops is the registry's and the command line's to say (README, "Your own jobs").
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import schedules
from .schedules import Policy
from .settings import SERVICE_NAMES

SERVICES = tuple(name for name in SERVICE_NAMES if name != "all")  # a job's own service
ON_START = ("true", "missed", "false")
KINDS = ("http", "command", "python", "sql")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# What a job does with a late occurrence, an overlapping one, and an owed one (every job).
POLICY_KEYS = ("max_lateness", "overlap", "max_attempts")
OVERRIDE_KEYS = ("schedule", "timezone", "on_start", "service", "heartbeat_url", *POLICY_KEYS)
COMMON_KEYS = (
    "schedule",
    "timezone",
    "service",
    "on_start",
    "timeout",
    "retries",
    "retry_delay",
    "heartbeat_url",
    "description",
    *POLICY_KEYS,
)
DEFAULTS_KEYS = (
    "timezone",
    "service",
    "on_start",
    "timeout",
    "retries",
    "retry_delay",
    *POLICY_KEYS,
)
OVERLAP = ("queue", "skip")
MAX_ATTEMPTS = 100
KIND_EXTRAS = {"command": ("cwd", "env"), "python": ("kwargs",)}
HTTP_KEYS = ("url", "method", "headers", "json", "token_env")
DEFAULT_TIMEOUT = "1h"
DEFAULT_RETRY_DELAY = "30s"
MAX_RETRIES = 100
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JobsFileError(ValueError):
    """The jobs file is unreadable or invalid; the message names the entry and key."""


@dataclass(frozen=True)
class Override:
    """A built-in job's schedule, time zone, start behaviour, service or heartbeat."""

    job: str
    schedule: str | None = None
    timezone: str | None = None
    on_start: str | None = None
    service: str | None = None
    heartbeat_url: str | None = None
    policy: Policy | None = None


@dataclass(frozen=True)
class HttpCall:
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    token_env: str | None = None


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PythonCall:
    target: str  # module:function (a catalogue handler's: also /path/script.py:run)
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    handler: bool = False  # a catalogue handler (`worker.call --handler`): a runtime job


@dataclass(frozen=True)
class SqlStatement:
    sql: str


Action = HttpCall | Command | PythonCall | SqlStatement


@dataclass(frozen=True)
class Declared:
    """One of the app's own jobs, as the file declares it."""

    name: str
    action: Action
    schedule: str
    timezone: str | None = None
    service: str = "jobs"
    on_start: str | None = None
    timeout_s: int = 3600
    retries: int = 0
    retry_delay_s: int = 30
    heartbeat_url: str | None = None
    description: str | None = None
    policy: Policy = field(default_factory=Policy)

    @property
    def kind(self) -> str:
        return _KIND_OF.get(type(self.action), type(self.action).__name__)


_KIND_OF: dict[type, str] = {
    HttpCall: "http",
    Command: "command",
    PythonCall: "python",
    SqlStatement: "sql",
}


@dataclass(frozen=True)
class Broken:
    """An entry of the file that is invalid: only the services that run it refuse to start.

    `service` is what the entry (or `[defaults]`, for a declared job) names as its service,
    as written (None when it names none); the error may be that very value.
    """

    name: str
    error: str  # `jobs.NAME.KEY: why`
    service: Any = None


@dataclass(frozen=True)
class JobsFile:
    overrides: tuple[Override, ...] = ()
    declared: tuple[Declared, ...] = ()
    broken: tuple[Broken, ...] = ()


_READ: dict[Path, tuple[int, dict[str, Declared]]] = {}  # by file: its mtime, its jobs


def declared_jobs(path: Path, builtin_jobs: tuple[str, ...]) -> dict[str, Declared]:
    """The valid jobs the file at `path` declares, by name, read again only when the file
    changed: what a job is, for its page and `status`. JobsFileError when it cannot be read
    here."""
    try:
        changed_ns = path.stat().st_mtime_ns
    except OSError as exc:
        raise JobsFileError(f"cannot be read: {exc.strerror}") from None
    known = _READ.get(path)
    if known is None or known[0] != changed_ns:
        known = (changed_ns, {job.name: job for job in load(path, builtin_jobs).declared})
        _READ[path] = known
    return known[1]


def load(path: Path, builtin_jobs: tuple[str, ...]) -> JobsFile:
    """Parse and validate the file at `path`.

    JobsFileError when the file as a whole cannot be read (unreadable, not TOML, a bad
    `[defaults]`); an invalid entry is in `broken`, and the others load.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise JobsFileError(f"cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobsFileError(f"not valid TOML: {exc}") from None
    _only_keys("", document, ("defaults", "jobs"))
    defaults = _table("defaults", document.get("defaults", {}))
    _only_keys("defaults", defaults, DEFAULTS_KEYS)
    _check_common("defaults", defaults)
    overrides, declared, broken = [], [], []
    for name, raw in _table("jobs", document.get("jobs", {})).items():
        builtin = name in builtin_jobs
        try:
            entry = _table(f"jobs.{name}", raw)
            if builtin:
                overrides.append(_override(name, entry))
            else:
                declared.append(_declared(name, {**defaults, **entry}))
        except JobsFileError as exc:
            written = raw if isinstance(raw, dict) else {}
            service = written.get("service", None if builtin else defaults.get("service"))
            broken.append(Broken(name, str(exc), service))
    return JobsFile(tuple(overrides), tuple(declared), tuple(broken))


def _override(name: str, entry: Mapping[str, Any]) -> Override:
    where = f"jobs.{name}"
    for key in entry:
        if key not in OVERRIDE_KEYS:
            raise JobsFileError(
                f"{where}.{key}: {name} is a built-in job; an entry for it may set only "
                f"{', '.join(OVERRIDE_KEYS)}"
            )
    _check_common(where, entry)
    if entry.get("service") == "jobs":
        raise JobsFileError(f"{where}.service: a built-in job runs in quota, cleanup or replenish")
    if "schedule" in entry:
        _check_schedule(where, entry["schedule"], entry.get("timezone", "UTC"))
    return Override(
        name,
        schedule=entry.get("schedule"),
        timezone=entry.get("timezone"),
        on_start=_on_start(entry.get("on_start")),
        service=entry.get("service"),
        heartbeat_url=entry.get("heartbeat_url"),
        policy=_policy(where, entry) if any(k in entry for k in POLICY_KEYS) else None,
    )


def _declared(name: str, entry: Mapping[str, Any]) -> Declared:
    where = f"jobs.{name}"
    if not _NAME.match(name):
        raise JobsFileError(
            f"{where}: a job name is a lowercase letter, then lowercase letters, digits or _"
            " (at most 63)"
        )
    every_extra = tuple(key for extras in KIND_EXTRAS.values() for key in extras)
    _only_keys(where, entry, (*COMMON_KEYS, *KINDS, *every_extra))
    kinds = [kind for kind in KINDS if kind in entry]
    if not kinds:
        raise JobsFileError(f"{where}: no kind: set one of {', '.join(KINDS)}")
    if len(kinds) > 1:
        raise JobsFileError(
            f"{where}.{kinds[1]}: a job has exactly one kind, not {' and '.join(kinds)}"
        )
    kind = kinds[0]
    _only_keys(where, entry, (*COMMON_KEYS, kind, *KIND_EXTRAS.get(kind, ())))
    _check_common(where, entry)
    if "schedule" not in entry:
        raise JobsFileError(f"{where}.schedule: required (a cron expression or `every 15m`)")
    _check_schedule(where, entry["schedule"], entry.get("timezone", "UTC"))
    return Declared(
        name,
        _action(where, kind, entry),
        schedule=entry["schedule"],
        timezone=entry.get("timezone"),
        service=entry.get("service", "jobs"),
        on_start=_on_start(entry.get("on_start")),
        timeout_s=_duration(where, "timeout", entry.get("timeout", DEFAULT_TIMEOUT)),
        retries=entry.get("retries", 0),
        retry_delay_s=_duration(
            where, "retry_delay", entry.get("retry_delay", DEFAULT_RETRY_DELAY)
        ),
        heartbeat_url=entry.get("heartbeat_url"),
        description=entry.get("description"),
        policy=_policy(where, entry),
    )


def _action(where: str, kind: str, entry: Mapping[str, Any]) -> Action:
    value = entry[kind]
    if kind == "http":
        return _http(f"{where}.http", value)
    if kind == "command":
        return _command(where, value, entry)
    if kind == "python":
        if not isinstance(value, str) or not _TARGET.match(value):
            raise JobsFileError(f'{where}.python: must be "module:function", e.g. "app.tasks:sync"')
        return PythonCall(value, _table(f"{where}.kwargs", entry.get("kwargs", {})))
    if not isinstance(value, str) or not value.strip():
        raise JobsFileError(f"{where}.sql: must be a non-empty SQL statement")
    return SqlStatement(value)


def _http(where: str, value: Any) -> HttpCall:
    table = _table(where, value)
    _only_keys(where, table, HTTP_KEYS)
    url = table.get("url")
    if not isinstance(url, str) or not _is_http_url(url):
        raise JobsFileError(f"{where}.url: required, an http:// or https:// URL")
    method = table.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise JobsFileError(f"{where}.method: must be one of {', '.join(HTTP_METHODS)}")
    token_env = table.get("token_env")
    if token_env is not None and (not isinstance(token_env, str) or not _ENV_NAME.match(token_env)):
        raise JobsFileError(f"{where}.token_env: must name an environment variable, e.g. ETL_TOKEN")
    return HttpCall(
        url,
        method.upper(),
        _strings(f"{where}.headers", table.get("headers", {})),
        table.get("json"),
        token_env,
    )


def _command(where: str, value: Any, entry: Mapping[str, Any]) -> Command:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise JobsFileError(f"{where}.command: must be a non-empty list of strings (no shell)")
    cwd = entry.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise JobsFileError(f"{where}.cwd: must be a string")
    return Command(tuple(value), cwd, _strings(f"{where}.env", entry.get("env", {})))


def _check_common(where: str, entry: Mapping[str, Any]) -> None:
    for key in ("schedule", "timezone", "service", "heartbeat_url", "description"):
        if key in entry and not isinstance(entry[key], str):
            raise JobsFileError(f"{where}.{key}: must be a string")
    _check_choices(where, entry)
    retries = entry.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES:
        raise JobsFileError(f"{where}.retries: must be a whole number from 0 to {MAX_RETRIES}")
    for key in ("timeout", "retry_delay"):
        if key in entry:
            _duration(where, key, entry[key])
    _policy(where, entry)


def _check_choices(where: str, entry: Mapping[str, Any]) -> None:
    if "timezone" in entry:
        try:
            schedules.check_timezone(entry["timezone"])
        except schedules.ScheduleError as exc:
            raise JobsFileError(f"{where}.timezone: {exc}") from None
    if "service" in entry and entry["service"] not in SERVICES:
        raise JobsFileError(f"{where}.service: must be one of {', '.join(SERVICES)}")
    if "on_start" in entry and _on_start(entry["on_start"]) not in ON_START:
        raise JobsFileError(f'{where}.on_start: must be true, false or "missed"')
    if "heartbeat_url" in entry and not _is_http_url(entry["heartbeat_url"]):
        raise JobsFileError(f"{where}.heartbeat_url: must be an http:// or https:// URL")


def _policy(where: str, entry: Mapping[str, Any]) -> Policy:
    """`max_lateness`, `overlap` and `max_attempts`, checked; the defaults where not set."""
    lateness = entry.get("max_lateness")
    overlap = entry.get("overlap", "queue")
    if overlap not in OVERLAP:
        raise JobsFileError(f'{where}.overlap: must be "queue" or "skip"')
    attempts = entry.get("max_attempts", Policy().max_attempts)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 100:
        raise JobsFileError(
            f"{where}.max_attempts: must be a whole number from 1 to {MAX_ATTEMPTS}"
        )
    return Policy(
        max_attempts=attempts,
        max_lateness_s=None if lateness is None else _duration(where, "max_lateness", lateness),
        overlap=overlap,
    )


def _check_schedule(where: str, text: str, timezone: str) -> None:
    try:
        schedules.parse(text, timezone)
    except schedules.ScheduleError as exc:
        raise JobsFileError(f"{where}.schedule: {exc}") from None


def _duration(where: str, key: str, value: Any) -> int:
    if not isinstance(value, str):
        raise JobsFileError(f'{where}.{key}: must be a duration such as "30s", "15m", "6h"')
    try:
        return schedules.duration_seconds(value)
    except schedules.ScheduleError as exc:
        raise JobsFileError(f"{where}.{key}: {exc}") from None


def _on_start(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_http_url(value: Any) -> bool:
    parts = urlsplit(value) if isinstance(value, str) else None
    return bool(parts and parts.scheme in ("http", "https") and parts.netloc)


def _strings(where: str, value: Any) -> dict[str, str]:
    table = _table(where, value)
    for key, item in table.items():
        if not isinstance(item, str):
            raise JobsFileError(f"{where}.{key}: must be a string")
    return dict(table)


def _table(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise JobsFileError(f"{where}: must be a table")
    return value


def _only_keys(where: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise JobsFileError(f"{name}: unknown key (allowed: {', '.join(allowed)})")
