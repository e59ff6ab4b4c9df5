"""Configuration: every variable the worker reads, parsed and validated in one place."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from psycopg.conninfo import make_conninfo

from .schedules import check_timezone

T = TypeVar("T")

SERVICES = ("quota", "cleanup", "replenish", "jobs", "all")
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
    """The validated configuration of one worker process."""

    database: Database
    environment: str = "development"
    log_level: str = "INFO"
    log_format: str = "json"
    run_on_start: str = "true"  # true | missed | false (ARCHITECTURE.md, "At start...")
    lease_s: float = 30.0
    concurrency: int = 4  # runs at once per process (ARCHITECTURE.md, "The loop")
    database_pooler: str | None = None  # session | transaction; None: detected
    shutdown_grace_s: float = 5.0
    db_connect_timeout_s: float = 60.0
    schedule_timezone: str = "UTC"

    tavily_usage_url: str = "https://api.tavily.com/usage"
    http_timeout_s: float = 30.0
    http_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_retries: int = 3
    retry_base_delay_s: float = 2.0
    quota_update_interval_hours: int = 1
    quota_concurrency: int = 4

    cleanup_at: str = "02:00"
    cleanup_content_at: str = "02:30"
    cleanup_batch_size: int = 5000
    cleanup_batch_target_ms: int = 50
    scrape_session_retention_days: int = 30
    reddit_content_retention_days: int = 90
    job_run_retention_days: int = 30
    alert_retention_days: int = 90
    cleanup_extra_rules: tuple[RetentionRule, ...] = ()

    replenish_api_url: str | None = None
    replenish_api_token: str | None = field(default=None, repr=False)
    replenish_interval_minutes: int = 10
    replenish_retry_times: int = 3
    replenish_retry_delay_ms: int = 60_000
    campaign_concurrency: int = 3
    lease_recovery_interval_minutes: int = 5

    alert_webhook_url: str | None = field(default=None, repr=False)
    alert_webhook_format: str = "json"
    alert_failure_rate: float = 0.2
    alert_slow_run_s: float = 600.0
    heartbeat_url: str | None = field(default=None, repr=False)
    jobs_file: Path | None = None
    deprecated: tuple[Deprecated, ...] = ()

    http_port: int | None = None  # None: no HTTP endpoint (ARCHITECTURE.md, "The HTTP endpoint")
    http_host: str = "127.0.0.1"
    http_token: str | None = field(default=None, repr=False)

    @property
    def production(self) -> bool:
        return self.environment == "production"


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
    """Parse and validate every variable; raise ConfigError naming the first bad one.

    Without `need_database` (commands that touch no database) no database is resolved.
    """
    r = _Reader(env)
    environment = r.choice(
        "ENVIRONMENT", "development", ("development", "staging", "production", "test")
    )
    production = environment == "production" or bool(env.get("RAILWAY_ENVIRONMENT_NAME"))
    http_timeout_s, deprecated = _http_timeout(r)
    settings = Settings(
        database=(
            resolve_database(env, production=production) if need_database else Database("", "none")
        ),
        environment=environment,
        log_level=r.choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
        log_format=r.choice(
            "LOG_FORMAT", "console" if stdout_is_tty else "json", ("json", "console")
        ),
        run_on_start=r.parsed("RUN_ON_START", "true", parse_run_on_start),
        lease_s=r.number("LEASE_SECONDS", 30.0, minimum=3, maximum=24 * 3600),
        concurrency=r.integer("WORKER_CONCURRENCY", 4, minimum=1, maximum=64),
        database_pooler=r.optional_choice("DATABASE_POOLER", ("session", "transaction")),
        shutdown_grace_s=r.number("SHUTDOWN_GRACE_SECONDS", 5.0, minimum=0),
        db_connect_timeout_s=r.number("DB_CONNECT_TIMEOUT_SECONDS", 60.0, minimum=0),
        schedule_timezone=r.timezone("SCHEDULE_TIMEZONE", "UTC"),
        tavily_usage_url=r.url("TAVILY_USAGE_URL", "https://api.tavily.com/usage"),
        http_timeout_s=http_timeout_s,
        http_max_body_bytes=r.integer(
            "HTTP_MAX_BODY_BYTES",
            DEFAULT_MAX_BODY_BYTES,
            minimum=MAX_BODY_BYTES_RANGE[0],
            maximum=MAX_BODY_BYTES_RANGE[1],
        ),
        max_retries=r.integer("MAX_RETRIES", 3, minimum=1, maximum=20),
        retry_base_delay_s=r.number("RETRY_BASE_DELAY_SECONDS", 2.0, minimum=0),
        quota_update_interval_hours=r.integer(
            "QUOTA_UPDATE_INTERVAL_HOURS", 1, minimum=1, maximum=24 * 7
        ),
        quota_concurrency=r.integer("QUOTA_CONCURRENCY", 4, minimum=1, maximum=64),
        cleanup_at=r.clock("CLEANUP_AT", "02:00"),
        cleanup_content_at=r.clock("CLEANUP_CONTENT_AT", "02:30"),
        cleanup_batch_size=r.integer("CLEANUP_BATCH_SIZE", 5000, minimum=1, maximum=1_000_000),
        cleanup_batch_target_ms=r.integer("CLEANUP_BATCH_TARGET_MS", 50, minimum=1, maximum=10_000),
        scrape_session_retention_days=r.integer("SCRAPE_SESSION_RETENTION_DAYS", 30, minimum=1),
        reddit_content_retention_days=r.integer("REDDIT_CONTENT_RETENTION_DAYS", 90, minimum=1),
        job_run_retention_days=r.integer("JOB_RUN_RETENTION_DAYS", 30, minimum=1),
        alert_retention_days=r.integer("ALERT_RETENTION_DAYS", 90, minimum=1),
        cleanup_extra_rules=r.parsed("CLEANUP_EXTRA_RULES", (), parse_extra_rules),
        replenish_api_url=r.optional_url("REPLENISH_API_URL"),
        replenish_api_token=r.optional("REPLENISH_API_TOKEN"),
        replenish_interval_minutes=r.integer(
            "REPLENISH_INTERVAL_MINUTES", 10, minimum=1, maximum=24 * 60
        ),
        replenish_retry_times=r.integer("REPLENISH_RETRY_TIMES", 3, minimum=1, maximum=20),
        replenish_retry_delay_ms=r.integer("REPLENISH_RETRY_DELAY_MS", 60_000, minimum=0),
        campaign_concurrency=r.integer("CAMPAIGN_CONCURRENCY", 3, minimum=1, maximum=64),
        lease_recovery_interval_minutes=r.integer(
            "LEASE_RECOVERY_INTERVAL_MINUTES", 5, minimum=1, maximum=24 * 60
        ),
        alert_webhook_url=r.optional_url("ALERT_WEBHOOK_URL"),
        alert_webhook_format=r.choice("ALERT_WEBHOOK_FORMAT", "json", WEBHOOK_FORMATS),
        alert_failure_rate=r.number("ALERT_FAILURE_RATE", 0.2, minimum=0, maximum=1),
        alert_slow_run_s=r.number("ALERT_SLOW_RUN_SECONDS", 600.0, minimum=0),
        heartbeat_url=r.optional_url("HEARTBEAT_URL"),
        jobs_file=r.jobs_file("WORKER_JOBS_FILE", Path("worker.toml")),
        deprecated=deprecated,
        http_port=r.http_port(),
        http_host=r.host("WORKER_HTTP_HOST", "0.0.0.0" if production else "127.0.0.1"),
        http_token=r.parsed("WORKER_HTTP_TOKEN", None, parse_token),
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

    def boolean(self, name: str, default: bool) -> bool:
        raw = self._raw(name)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

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
