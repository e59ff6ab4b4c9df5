"""Every variable the worker reads, once: name, field, default, bounds and one-line meaning
(`VARIABLES`), checked against the README's configuration table by tests/test_settings.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .readers import (
    Read,
    choice,
    http_timeout,
    integer,
    number,
    optional_choice,
    parse_extra_rules,
    parse_handlers,
    parse_run_on_start,
    parse_token,
    parsed,
    read_optional,
    read_with,
)
from .types import DEFAULT_MAX_BODY_BYTES, LOG_LEVELS, MAX_BODY_BYTES_RANGE, WEBHOOK_FORMATS


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
        read_with("jobs_file"),
        "the jobs file",
        shown="`./worker.toml` if present",
    ),
    Var(
        "WORKER_HANDLERS",
        "handlers",
        (),
        parsed(lambda v: parse_handlers(v)),
        "the handlers runtime jobs may run",
    ),
    Var(
        "DATABASE_POOLER",
        "database_pooler",
        None,
        optional_choice(("session", "transaction")),
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
        read_with("timezone"),
        "the zone of clock times and cron schedules",
    ),
    Var(
        "HTTP_TIMEOUT_SECONDS",
        "http_timeout_s",
        30.0,
        lambda r, n, d: http_timeout(r)[0],
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
        read_with("url"),
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
    Var("CLEANUP_AT", "cleanup_at", "02:00", read_with("clock"), "daily time of the cleanups"),
    Var(
        "CLEANUP_CONTENT_AT",
        "cleanup_content_at",
        "02:30",
        read_with("clock"),
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
        read_optional("optional_url"),
        "the producer endpoint",
    ),
    Var(
        "REPLENISH_API_TOKEN",
        "replenish_api_token",
        None,
        read_optional("optional"),
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
        read_optional("optional_url"),
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
        "OVERDUE_GRACE_SECONDS",
        "overdue_grace_s",
        None,
        number(1, 7 * 24 * 3600),
        "how long past its due time a job may stay unclaimed before JOB_OVERDUE",
        shown="`max(60, 10 % of the job's period)`",
    ),
    Var(
        "SERVICE_DOWN_SECONDS",
        "service_down_s",
        120.0,
        number(1, 7 * 24 * 3600),
        "how long a service may have no live process before SERVICE_DOWN",
    ),
    Var(
        "HEARTBEAT_URL",
        "heartbeat_url",
        None,
        read_optional("optional_url"),
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
        read_with("host"),
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
