"""The settings' types: what a parsed configuration is (`Settings`), its parts, and the
names and bounds the variables share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Every service, by the name a command line or SERVICE_TYPE gives it: the one list
# (registry.SERVICES describes each; `all` runs every job, `jobs` the jobs file's).
SERVICE_NAMES = ("quota", "cleanup", "replenish", "jobs", "all")
WEBHOOK_FORMATS = ("json", "slack", "discord", "dingtalk", "feishu", "wecom")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_BODY_BYTES_RANGE = (1024, 64 * 1024 * 1024)  # a cap near the service's memory is no cap


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
    handlers: tuple[str, ...]  # WORKER_HANDLERS: directories and modules (worker.handlers)
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
    # None: each job's own grace, max(60 s, 10 % of its period) (ARCHITECTURE.md, "Watchdog")
    overdue_grace_s: float | None
    service_down_s: float
    heartbeat_url: str | None = field(repr=False)
    http_port: int | None  # None: no HTTP endpoint (ARCHITECTURE.md, "The HTTP endpoint")
    http_host: str
    http_token: str | None = field(repr=False)
    deprecated: tuple[Deprecated, ...] = ()

    @property
    def production(self) -> bool:
        return self.environment == "production"


def _conninfo_part(conninfo: str, key: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        value = conninfo_to_dict(conninfo).get(key)
    except Exception:
        return None
    return None if value is None else str(value)
