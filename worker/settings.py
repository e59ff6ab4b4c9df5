"""Configuration: every variable the worker reads, parsed and validated in one place."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from psycopg.conninfo import make_conninfo

from .schedules import check_timezone

T = TypeVar("T")

# Every service, by the name a command line or SERVICE_TYPE gives it: the one list
# (registry.SERVICES describes each; `all` runs every job, `jobs` the jobs file's).
SERVICE_NAMES = ("quota", "cleanup", "replenish", "jobs", "all")
WEBHOOK_FORMATS = ("json", "slack", "discord", "dingtalk", "feishu", "wecom")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_BODY_BYTES_RANGE = (1024, 64 * 1024 * 1024)  # a cap near the service's memory is no cap

_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_EXTRA_RULE = re.compile(rf"^(?:({_IDENT})\.)?({_IDENT})\.({_IDENT}):([0-9]{{1,6}})$")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
_TRUE = {"1", "true", "yes", "on"}
MIN_TOKEN_CHARS = 16
_FALSE = {"0", "false", "no", "off"}


class ConfigError(Exception):
    """A variable is missing or malformed; the message names it and never echoes a secret."""


@dataclass(frozen=True)
class RetentionRule:
    """Delete rows of `table` whose `column` is older than `days` days."""

    table: str
    column: str
    days: int
    schema: str | None = None

    @property
    def name(self) -> str:
        prefix = f"{self.schema}." if self.schema else ""
        return f"{prefix}{self.table}.{self.column}"


@dataclass(frozen=True)
class Database:
    """Where the database is: a libpq connection string, or the embedded server's folder."""

    conninfo: str
    source: str  # DATABASE_URL, POSTGRES_HOST, PGHOST or embedded
    embedded_dir: Path | None = None

    @property
    def host(self) -> str:
        return _conninfo_part(self.conninfo, "host") or "localhost"

    @property
    def name(self) -> str:
        return _conninfo_part(self.conninfo, "dbname") or ""

    @property
    def password(self) -> str | None:
        """The password in the connection string, if any: a secret to mask in output."""
        return _conninfo_part(self.conninfo, "password")


@dataclass(frozen=True)
class Deprecated:
    """A variable still read under an old name; logged once at start."""

    old: str
    new: str
    note: str


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one worker process: one field per row of VARIABLES
    (its default, bounds and meaning are there), plus the database and deprecations."""

    database: Database
    environment: str
    log_level: str
    log_format: str
    run_on_start: str  # true | missed | false (ARCHITECTURE.md, "At start...")
    lease_s: float
    concurrency: int  # runs at once per process (ARCHITECTURE.md, "The loop")
    jobs_file: Path | None
    database_pooler: str | None  # informational: the worker is pooler-safe either way
    shutdown_grace_s: float
    db_connect_timeout_s: float
    schedule_timezone: str
    http_timeout_s: float
    http_max_body_bytes: int
    max_retries: int
    retry_base_delay_s: float
    tavily_usage_url: str
    quota_update_interval_hours: int
    quota_concurrency: int
    cleanup_at: str
    cleanup_content_at: str
    cleanup_batch_size: int
    cleanup_batch_target_ms: int
    scrape_session_retention_days: int
    reddit_content_retention_days: int
    job_run_retention_days: int
    alert_retention_days: int
    cleanup_extra_rules: tuple[RetentionRule, ...]
    replenish_api_url: str | None
    replenish_api_token: str | None = field(repr=False)
    replenish_interval_minutes: int
    replenish_retry_times: int
    replenish_retry_delay_ms: int
    campaign_concurrency: int
    lease_recovery_interval_minutes: int
    alert_webhook_url: str | None = field(repr=False)
    alert_webhook_format: str
    alert_failure_rate: float
    alert_slow_run_s: float
    heartbeat_url: str | None = field(repr=False)
    http_port: int | None  # None: no HTTP endpoint (ARCHITECTURE.md, "The HTTP endpoint")
    http_host: str
    http_token: str | None = field(repr=False)
    deprecated: tuple[Deprecated, ...] = ()

    @property
    def production(self) -> bool:
        return self.environment == "production"


# How a variable's text becomes its value: (reader, variable name, default) -> value.
Read = Callable[["_Reader", str, Any], Any]


def integer(minimum: int | None = None, maximum: int | None = None) -> Read:
    return lambda r, name, default: r.integer(name, default, minimum=minimum, maximum=maximum)


def number(minimum: float | None = None, maximum: float | None = None) -> Read:
    return lambda r, name, default: r.number(name, default, minimum=minimum, maximum=maximum)


def choice(allowed: tuple[str, ...], *, upper: bool = False) -> Read:
    return lambda r, name, default: r.choice(name, default, allowed, upper=upper)


def parsed(parse: Callable[[str], Any]) -> Read:
    return lambda r, name, default: r.parsed(name, default, parse)


def _optional_choice(allowed: tuple[str, ...]) -> Read:
    return lambda r, name, default: r.optional_choice(name, allowed)


def _read(method: str) -> Read:
    return lambda r, name, default: getattr(r, method)(name, default)


def _read_optional(method: str) -> Read:
    return lambda r, name, default: getattr(r, method)(name)


@dataclass(frozen=True)
class Var:
    """One environment variable: the one place its name, field, default, bounds (in
    `read`) and meaning are written. The README's configuration table is checked against
    these rows (tests/test_settings.py)."""

    name: str
    field: str
    default: Any
    read: Read
    meaning: str
    shown: str | None = None  # the README's default column, where it is not `default`

    def documented_default(self) -> str:
        """The default as the README's configuration table writes it."""
        if self.shown is not None:
            return self.shown
        if self.default is None or self.default == ():
            return "—"
        value = self.default
        text = f"{value:g}" if isinstance(value, float) else str(value)
        return f"`{text}`"


VARIABLES: tuple[Var, ...] = (
    Var(
        "ENVIRONMENT",
        "environment",
        "development",
        choice(("development", "staging", "production", "test")),
        "the deployment",
    ),
    Var("LOG_LEVEL", "log_level", "INFO", choice(LOG_LEVELS, upper=True), "the least level logged"),
    Var(
        "LOG_FORMAT",
        "log_format",
        "json",
        choice(("json", "console")),
        "how lines are written",
        shown="`json` (`console` on a terminal)",
    ),
    Var(
        "RUN_ON_START",
        "run_on_start",
        "true",
        parsed(lambda v: parse_run_on_start(v)),
        "what a start does",
    ),
    Var("LEASE_SECONDS", "lease_s", 30.0, number(3, 24 * 3600), "a run's lease without renewal"),
    Var("WORKER_CONCURRENCY", "concurrency", 4, integer(1, 64), "runs at once per process"),
    Var(
        "WORKER_JOBS_FILE",
        "jobs_file",
        Path("worker.toml"),
        _read("jobs_file"),
        "the jobs file",
        shown="`./worker.toml` if present",
    ),
    Var(
        "DATABASE_POOLER",
        "database_pooler",
        None,
        _optional_choice(("session", "transaction")),
        "informational: the pooler in front of the database",
    ),
    Var(
        "SHUTDOWN_GRACE_SECONDS",
        "shutdown_grace_s",
        5.0,
        number(0),
        "how long a busy stop may take",
    ),
    Var(
        "DB_CONNECT_TIMEOUT_SECONDS",
        "db_connect_timeout_s",
        60.0,
        number(0),
        "how long to retry the database at start",
        shown="`60` (`10` for one-shot commands)",
    ),
    Var(
        "SCHEDULE_TIMEZONE",
        "schedule_timezone",
        "UTC",
        _read("timezone"),
        "the zone of clock times and cron schedules",
    ),
    Var(
        "HTTP_TIMEOUT_SECONDS",
        "http_timeout_s",
        30.0,
        lambda r, n, d: _http_timeout(r)[0],
        "seconds per HTTP attempt, as a whole",
    ),
    Var(
        "HTTP_MAX_BODY_BYTES",
        "http_max_body_bytes",
        DEFAULT_MAX_BODY_BYTES,
        integer(*MAX_BODY_BYTES_RANGE),
        "the largest answer body read",
        shown="`1048576` (1 MiB)",
    ),
    Var("MAX_RETRIES", "max_retries", 3, integer(1, 20), "attempts per Tavily key"),
    Var("RETRY_BASE_DELAY_SECONDS", "retry_base_delay_s", 2.0, number(0), "first backoff delay"),
    Var(
        "TAVILY_USAGE_URL",
        "tavily_usage_url",
        "https://api.tavily.com/usage",
        _read("url"),
        "Tavily's usage endpoint",
    ),
    Var(
        "QUOTA_UPDATE_INTERVAL_HOURS",
        "quota_update_interval_hours",
        1,
        integer(1, 24 * 7),
        "cadence of quota",
    ),
    Var("QUOTA_CONCURRENCY", "quota_concurrency", 4, integer(1, 64), "keys in flight at once"),
    Var("CLEANUP_AT", "cleanup_at", "02:00", _read("clock"), "daily time of the cleanups"),
    Var(
        "CLEANUP_CONTENT_AT",
        "cleanup_content_at",
        "02:30",
        _read("clock"),
        "Sunday time of cleanup_content",
    ),
    Var(
        "CLEANUP_BATCH_SIZE",
        "cleanup_batch_size",
        5000,
        integer(1, 1_000_000),
        "the batch size delete batches adapt from",
    ),
    Var(
        "CLEANUP_BATCH_TARGET_MS",
        "cleanup_batch_target_ms",
        50,
        integer(1, 10_000),
        "how long each batch transaction should take",
    ),
    Var(
        "SCRAPE_SESSION_RETENTION_DAYS",
        "scrape_session_retention_days",
        30,
        integer(1),
        "scrape sessions kept",
    ),
    Var(
        "REDDIT_CONTENT_RETENTION_DAYS",
        "reddit_content_retention_days",
        90,
        integer(1),
        "Reddit content kept",
    ),
    Var("JOB_RUN_RETENTION_DAYS", "job_run_retention_days", 30, integer(1), "run history kept"),
    Var("ALERT_RETENTION_DAYS", "alert_retention_days", 90, integer(1), "alerts kept"),
    Var(
        "CLEANUP_EXTRA_RULES",
        "cleanup_extra_rules",
        (),
        parsed(lambda v: parse_extra_rules(v)),
        "more retention rules",
    ),
    Var(
        "REPLENISH_API_URL",
        "replenish_api_url",
        None,
        _read_optional("optional_url"),
        "the producer endpoint",
    ),
    Var(
        "REPLENISH_API_TOKEN",
        "replenish_api_token",
        None,
        _read_optional("optional"),
        "the producer's bearer token",
    ),
    Var(
        "REPLENISH_INTERVAL_MINUTES",
        "replenish_interval_minutes",
        10,
        integer(1, 24 * 60),
        "cadence of replenish",
    ),
    Var(
        "REPLENISH_RETRY_TIMES", "replenish_retry_times", 3, integer(1, 20), "attempts per campaign"
    ),
    Var(
        "REPLENISH_RETRY_DELAY_MS",
        "replenish_retry_delay_ms",
        60_000,
        integer(0),
        "wait between attempts",
    ),
    Var(
        "CAMPAIGN_CONCURRENCY",
        "campaign_concurrency",
        3,
        integer(1, 64),
        "campaigns in flight at once",
    ),
    Var(
        "LEASE_RECOVERY_INTERVAL_MINUTES",
        "lease_recovery_interval_minutes",
        5,
        integer(1, 24 * 60),
        "cadence of lease_recovery",
    ),
    Var(
        "ALERT_WEBHOOK_URL",
        "alert_webhook_url",
        None,
        _read_optional("optional_url"),
        "where alerts are posted",
    ),
    Var(
        "ALERT_WEBHOOK_FORMAT",
        "alert_webhook_format",
        "json",
        choice(WEBHOOK_FORMATS),
        "the webhook's payload shape",
    ),
    Var(
        "ALERT_FAILURE_RATE",
        "alert_failure_rate",
        0.2,
        number(0, 1),
        "failed/total above which a run alerts",
    ),
    Var(
        "ALERT_SLOW_RUN_SECONDS",
        "alert_slow_run_s",
        600.0,
        number(0),
        "a run slower than this alerts",
    ),
    Var(
        "HEARTBEAT_URL",
        "heartbeat_url",
        None,
        _read_optional("optional_url"),
        "pinged after each run",
    ),
    Var(
        "WORKER_HTTP_PORT",
        "http_port",
        None,
        lambda r, n, d: r.http_port(),
        "the HTTP endpoint's port",
        shown="`PORT` when the platform sets it, else off",
    ),
    Var(
        "WORKER_HTTP_HOST",
        "http_host",
        "127.0.0.1",
        _read("host"),
        "the address to listen on",
        shown="`0.0.0.0` in production, else `127.0.0.1`",
    ),
    Var(
        "WORKER_HTTP_TOKEN",
        "http_token",
        None,
        parsed(lambda v: parse_token(v)),
        "the HTTP endpoint's token",
    ),
)


def load_environment(
    environ: Mapping[str, str] | None = None, dotenv_path: str = ".env"
) -> dict[str, str]:
    """The process environment over the `.env` file: the real environment wins."""
    from dotenv import dotenv_values

    merged = {k: v for k, v in dotenv_values(dotenv_path).items() if v is not None}
    merged.update(os.environ if environ is None else environ)
    return merged


def from_env(
    env: Mapping[str, str],
    *,
    service: str | None = None,
    stdout_is_tty: bool = False,
    need_database: bool = True,
) -> Settings:
    """Parse and validate every variable of VARIABLES; raise ConfigError naming the first
    bad one. Without `need_database` (commands that touch no database) none is resolved.
    """
    r = _Reader(env)
    environment = VARIABLES[0].read(r, VARIABLES[0].name, VARIABLES[0].default)
    production = environment == "production" or bool(env.get("RAILWAY_ENVIRONMENT_NAME"))
    # Defaults that depend on where the worker runs.
    defaults = {"LOG_FORMAT": "console" if stdout_is_tty else "json"}
    if production:
        defaults["WORKER_HTTP_HOST"] = "0.0.0.0"  # the platform routes to it
    values = {
        var.field: var.read(r, var.name, defaults.get(var.name, var.default)) for var in VARIABLES
    }
    settings = Settings(
        database=(
            resolve_database(env, production=production) if need_database else Database("", "none")
        ),
        deprecated=_http_timeout(r)[1],
        **values,
    )
    if service == "replenish" and not settings.replenish_api_url:  # `all` leaves the job out
        raise ConfigError(f"REPLENISH_API_URL is required by the {service} service")
    return settings


def parse_run_on_start(value: str) -> str:
    """`true|missed|false` (also 1/0, yes/no, on/off for true and false)."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return "true"
    if lowered in _FALSE:
        return "false"
    if lowered == "missed":
        return "missed"
    raise ValueError(f"must be true, missed or false; got {value!r}")


def _http_timeout(r: _Reader) -> tuple[float, tuple[Deprecated, ...]]:
    """HTTP_TIMEOUT_SECONDS, or the old HTTP_TIMEOUT (uv reads that name itself and refuses
    a fraction, so `HTTP_TIMEOUT=2.5 uv run ...` fails before the worker starts)."""
    new, old = "HTTP_TIMEOUT_SECONDS", "HTTP_TIMEOUT"
    if r.optional(old) is None:
        return r.number(new, 30.0, minimum=0.001), ()
    if r.optional(new) is not None:
        note = f"{old} is ignored: {new} is set and wins; unset {old}"
        return r.number(new, 30.0, minimum=0.001), (Deprecated(old, new, note),)
    note = f"{old} is deprecated: rename it {new} (uv reads {old} itself)"
    return r.number(old, 30.0, minimum=0.001), (Deprecated(old, new, note),)


def parse_token(value: str) -> str:
    """A bearer token: at least MIN_TOKEN_CHARS visible ASCII characters, no spaces."""
    if len(value) < MIN_TOKEN_CHARS:
        raise ValueError(f"must be at least {MIN_TOKEN_CHARS} characters long")
    if not all("!" <= char <= "~" for char in value):
        raise ValueError("must be visible ASCII characters without spaces")
    return value


def resolve_database(env: Mapping[str, str], *, production: bool) -> Database:
    """First match wins: DATABASE_URL, POSTGRES_*, libpq's PG*, then the embedded server."""
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return Database(_normalise_url(url), "DATABASE_URL")
    if env.get("POSTGRES_HOST"):
        port = env.get("POSTGRES_PORT", "5432")
        if not port.isdigit():
            raise ConfigError(f"POSTGRES_PORT must be a port number, got {port!r}")
        conninfo = make_conninfo(
            host=env["POSTGRES_HOST"],
            port=port,
            user=env.get("POSTGRES_USER") or None,
            password=env.get("POSTGRES_PASSWORD") or None,
            dbname=env.get("POSTGRES_DB") or None,
        )
        return Database(conninfo, "POSTGRES_HOST")
    if env.get("PGHOST") or env.get("PGSERVICE"):
        return Database("", "PGHOST")  # libpq reads PGHOST, PGUSER, PGPASSWORD... itself
    if production:
        raise ConfigError(
            "DATABASE_URL is required in production "
            "(or POSTGRES_HOST, or PGHOST); the embedded database is for development only"
        )
    data_dir = Path(env.get("WORKER_DATA_DIR") or ".worker")
    return Database("", "embedded", embedded_dir=data_dir)


def parse_extra_rules(value: str) -> tuple[RetentionRule, ...]:
    """Parse `table.column:days[,schema.table.column:days...]`; reject anything else."""
    rules = []
    for raw in value.split(","):
        part = raw.strip()
        if not part:
            continue
        match = _EXTRA_RULE.match(part)
        if not match:
            raise ValueError(f"rule {part!r} is not of the form table.column:days")
        schema, table, column, days = match.groups()
        if int(days) < 1:
            raise ValueError(f"rule {part!r}: days must be at least 1")
        rules.append(RetentionRule(table=table, column=column, days=int(days), schema=schema))
    return tuple(rules)


def _normalise_url(url: str) -> str:
    # libpq takes URLs and key=value strings alike; a malformed one must fail here, with a
    # message that does not echo the value (it may hold the password).
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except Exception:
        raise ConfigError(
            "DATABASE_URL is not a valid PostgreSQL connection string "
            "(expected postgresql://user:password@host:5432/dbname)"
        ) from None
    return url


def _conninfo_part(conninfo: str, key: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        value = conninfo_to_dict(conninfo).get(key)
    except Exception:
        return None
    return None if value is None else str(value)


class _Reader:
    """Typed access to environment variables; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def parsed(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def optional(self, name: str) -> str | None:
        return self._raw(name)

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        return self._bounded(name, value, minimum, maximum)

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {raw!r}")
        return self._bounded(name, value, minimum, maximum)

    @staticmethod
    def _bounded(name: str, value: T, minimum: float | None, maximum: float | None) -> T:
        if minimum is not None and value < minimum:  # type: ignore[operator]
            raise ConfigError(f"{name} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:  # type: ignore[operator]
            raise ConfigError(f"{name} must be at most {maximum}, got {value}")
        return value

    def choice(
        self, name: str, default: str, allowed: tuple[str, ...], *, upper: bool = False
    ) -> str:
        raw = self._raw(name)
        if raw is None:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {raw!r}")
        return value

    def optional_choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        if self._raw(name) is None:
            return None
        return self.choice(name, allowed[0], allowed)

    def jobs_file(self, name: str, default: Path) -> Path | None:
        """The named file, which must exist; else `default` when it exists; else None."""
        raw = self._raw(name)
        if raw is None:
            return default if default.is_file() else None
        if not Path(raw).is_file():
            raise ConfigError(f"{name}: no such file: {raw}")
        return Path(raw)

    def http_port(self) -> int | None:
        """WORKER_HTTP_PORT, else the platform's PORT, else None (no endpoint)."""
        for name in ("WORKER_HTTP_PORT", "PORT"):
            if self._raw(name) is not None:
                return self.integer(name, 0, minimum=1, maximum=65535)
        return None

    def host(self, name: str, default: str) -> str:
        """An IP address to listen on (`0.0.0.0`, `::`, `127.0.0.1`); `localhost` is 127.0.0.1.

        One address, never a name that may resolve to several: the server binds one socket.
        """
        raw = self._raw(name) or default
        if raw.lower() == "localhost":
            return "127.0.0.1"
        try:
            return str(ipaddress.ip_address(raw.strip("[]")))
        except ValueError:
            raise ConfigError(
                f"{name} must be an IP address (0.0.0.0, ::, 127.0.0.1...), got {raw!r}"
            ) from None

    def clock(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        if not _CLOCK.match(raw):
            raise ConfigError(f"{name} must be a time of day as HH:MM (24-hour), got {raw!r}")
        return raw

    def timezone(self, name: str, default: str) -> str:
        raw = self._raw(name) or default
        try:
            return check_timezone(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def url(self, name: str, default: str) -> str:
        return self.optional_url(name) or default

    def optional_url(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            # The value may carry a token: name the variable, not the value.
            raise ConfigError(f"{name} must be an http:// or https:// URL")
        return raw
