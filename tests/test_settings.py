"""Configuration: parsing, validation, database resolution and the exit-2 contract."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.processes import ROOT, WorkerProcess
from worker.settings import ConfigError, from_env, load_environment, parse_extra_rules

Spawn = Callable[..., WorkerProcess]
UNREACHABLE_DB = "postgresql://app:pw@127.0.0.1:9/appdb"


def test_defaults_match_the_contract() -> None:
    settings = from_env({"DATABASE_URL": UNREACHABLE_DB})
    assert settings.quota_update_interval_hours == 1
    assert settings.max_retries == 3
    assert settings.quota_concurrency == 4
    assert settings.http_timeout_s == 30.0
    assert settings.cleanup_batch_size == 5000
    assert settings.cleanup_batch_target_ms == 50
    assert (settings.cleanup_at, settings.cleanup_content_at) == ("02:00", "02:30")
    assert settings.replenish_retry_delay_ms == 60_000
    assert settings.campaign_concurrency == 3
    assert settings.alert_failure_rate == 0.2
    assert settings.shutdown_grace_s == 5.0
    assert settings.log_format == "json"
    assert settings.database.source == "DATABASE_URL"
    assert (settings.database.host, settings.database.name) == ("127.0.0.1", "appdb")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("QUOTA_CONCURRENCY", "four", "QUOTA_CONCURRENCY must be a whole number"),
        ("QUOTA_CONCURRENCY", "0", "QUOTA_CONCURRENCY must be at least 1"),
        ("HTTP_TIMEOUT_SECONDS", "nan", "HTTP_TIMEOUT_SECONDS must be a finite number"),
        ("HTTP_TIMEOUT", "0", "HTTP_TIMEOUT must be at least"),
        ("HTTP_MAX_BODY_BYTES", "1MB", "HTTP_MAX_BODY_BYTES must be a whole number"),
        ("HTTP_MAX_BODY_BYTES", "100", "HTTP_MAX_BODY_BYTES must be at least 1024"),
        ("HTTP_MAX_BODY_BYTES", str(2**30), "HTTP_MAX_BODY_BYTES must be at most"),
        ("MAX_RETRIES", "-1", "MAX_RETRIES must be at least 1"),
        ("RUN_ON_START", "maybe", "RUN_ON_START: must be true, missed or false"),
        ("LEASE_SECONDS", "2", "LEASE_SECONDS must be at least 3"),
        ("DATABASE_POOLER", "statement", "DATABASE_POOLER must be one of session, transaction"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of json, console"),
        ("CLEANUP_AT", "25:00", "CLEANUP_AT must be a time of day"),
        ("SCHEDULE_TIMEZONE", "Mars/Olympus", "SCHEDULE_TIMEZONE: unknown time zone 'Mars/"),
        ("ALERT_WEBHOOK_FORMAT", "teams", "ALERT_WEBHOOK_FORMAT must be one of"),
        ("ALERT_FAILURE_RATE", "1.5", "ALERT_FAILURE_RATE must be at most 1"),
        ("CLEANUP_EXTRA_RULES", "users; drop table x", "CLEANUP_EXTRA_RULES"),
        ("CLEANUP_BATCH_TARGET_MS", "fast", "CLEANUP_BATCH_TARGET_MS must be a whole number"),
        ("CLEANUP_BATCH_TARGET_MS", "0", "CLEANUP_BATCH_TARGET_MS must be at least 1"),
        ("CLEANUP_BATCH_TARGET_MS", "60000", "CLEANUP_BATCH_TARGET_MS must be at most 10000"),
        ("ENVIRONMENT", "prod", "ENVIRONMENT must be one of"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        from_env({"DATABASE_URL": UNREACHABLE_DB, name: value})


@pytest.mark.parametrize(
    ("env", "timeout_s", "deprecated"),
    [
        ({}, 30.0, []),
        ({"HTTP_TIMEOUT_SECONDS": "2.5"}, 2.5, []),
        ({"HTTP_TIMEOUT": "2.5"}, 2.5, [("HTTP_TIMEOUT", "HTTP_TIMEOUT_SECONDS")]),
        (
            {"HTTP_TIMEOUT": "9", "HTTP_TIMEOUT_SECONDS": "4"},
            4.0,
            [("HTTP_TIMEOUT", "HTTP_TIMEOUT_SECONDS")],
        ),
    ],
    ids=["default", "new-name", "old-name", "both-new-wins"],
)
def test_http_timeout_seconds_and_its_old_name(
    env: dict[str, str], timeout_s: float, deprecated: list[tuple[str, str]]
) -> None:
    settings = from_env({"DATABASE_URL": UNREACHABLE_DB, **env})
    assert settings.http_timeout_s == timeout_s
    assert [(d.old, d.new) for d in settings.deprecated] == deprecated
    for notice in settings.deprecated:
        assert "HTTP_TIMEOUT " in f"{notice.note} " and "HTTP_TIMEOUT_SECONDS" in notice.note


def test_http_max_body_bytes_defaults_to_one_mebibyte() -> None:
    assert from_env({"DATABASE_URL": UNREACHABLE_DB}).http_max_body_bytes == 1048576
    settings = from_env({"DATABASE_URL": UNREACHABLE_DB, "HTTP_MAX_BODY_BYTES": "4096"})
    assert settings.http_max_body_bytes == 4096


def test_secret_urls_are_not_echoed_when_malformed() -> None:
    with pytest.raises(ConfigError) as raised:
        from_env({"DATABASE_URL": UNREACHABLE_DB, "ALERT_WEBHOOK_URL": "hooks.example/T0K3N"})
    assert "ALERT_WEBHOOK_URL" in str(raised.value) and "T0K3N" not in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        from_env({"DATABASE_URL": "host=db password=s3cr3t port=notaport =="})
    assert "DATABASE_URL" in str(raised.value) and "s3cr3t" not in str(raised.value)


def test_database_resolution_order() -> None:
    both = {"DATABASE_URL": UNREACHABLE_DB, "POSTGRES_HOST": "other", "PGHOST": "third"}
    assert from_env(both).database.source == "DATABASE_URL"
    postgres = from_env(
        {"POSTGRES_HOST": "db.internal", "POSTGRES_DB": "app", "POSTGRES_PASSWORD": "pw"}
    )
    assert (postgres.database.source, postgres.database.host) == ("POSTGRES_HOST", "db.internal")
    assert postgres.database.name == "app"
    assert from_env({"PGHOST": "pg.internal"}).database.source == "PGHOST"
    local = from_env({"WORKER_DATA_DIR": "/tmp/somewhere"})
    assert local.database.source == "embedded"
    assert local.database.embedded_dir == Path("/tmp/somewhere")


@pytest.mark.parametrize(
    "env", [{"ENVIRONMENT": "production"}, {"RAILWAY_ENVIRONMENT_NAME": "production"}]
)
def test_production_requires_a_database(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL is required"):
        from_env(env)


def test_replenish_requires_its_api_url() -> None:
    with pytest.raises(ConfigError, match="REPLENISH_API_URL is required by the replenish"):
        from_env({"DATABASE_URL": UNREACHABLE_DB}, service="replenish")
    from_env({"DATABASE_URL": UNREACHABLE_DB}, service="quota")  # not needed there


def test_extra_rules_parse_and_refuse_hostile_input() -> None:
    rules = parse_extra_rules(" audit_log.created_at:7 , analytics.events.ts:30,")
    assert [(r.schema, r.table, r.column, r.days) for r in rules] == [
        (None, "audit_log", "created_at", 7),
        ("analytics", "events", "ts", 30),
    ]
    for hostile in ["users; drop table x", 'a."b".c:1', "a.b:0", "a.b", "a b.c:1", "a.b:-3"]:
        with pytest.raises(ValueError):
            parse_extra_rules(hostile)


def test_dotenv_is_read_and_the_real_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("QUOTA_CONCURRENCY=7\nMAX_RETRIES=5\n")
    merged = load_environment({"MAX_RETRIES": "2"}, dotenv_path=str(dotenv))
    settings = from_env({**merged, "DATABASE_URL": UNREACHABLE_DB})
    assert (settings.quota_concurrency, settings.max_retries) == (7, 2)


def run_cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["quota"], {"QUOTA_CONCURRENCY": "abc"}, "QUOTA_CONCURRENCY"),
        (["quota"], {"HTTP_TIMEOUT_SECONDS": "-1"}, "HTTP_TIMEOUT_SECONDS"),
        (["replenish", "--once"], {}, "REPLENISH_API_URL"),
        (["cleanup"], {"CLEANUP_EXTRA_RULES": "t.c:0"}, "CLEANUP_EXTRA_RULES"),
        (["cleanup"], {"CLEANUP_BATCH_TARGET_MS": "50ms"}, "CLEANUP_BATCH_TARGET_MS"),
        (["unknown-service"], {}, "invalid choice: 'unknown-service'"),
    ],
)
def test_bad_configuration_exits_2_before_touching_the_database(
    args: list[str], env: dict[str, str], named: str
) -> None:
    # The database URL points at nothing: had the worker tried to connect, it would retry
    # for DB_CONNECT_TIMEOUT_SECONDS and then exit 1, not 2.
    started = time.monotonic()
    done = run_cli(
        *args, env={"DATABASE_URL": UNREACHABLE_DB, "DB_CONNECT_TIMEOUT_SECONDS": "30", **env}
    )
    assert done.returncode == 2
    assert named in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3  # a message, not a traceback
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert time.monotonic() - started < 15


def test_production_without_a_database_exits_2(tmp_path: Path) -> None:
    done = run_cli("quota", env={"ENVIRONMENT": "production"}, cwd=tmp_path)
    assert done.returncode == 2
    assert "DATABASE_URL is required" in done.stderr
    assert not (tmp_path / ".worker").exists()  # no embedded server was started


def test_migrate_is_idempotent(db_url: str) -> None:
    first = run_cli("migrate", "--app-tables", env={"DATABASE_URL": db_url})
    second = run_cli("migrate", env={"DATABASE_URL": db_url})
    assert (first.returncode, second.returncode) == (0, 0)
    assert '"applied": []' in second.stdout


def test_concurrent_migrations_on_a_fresh_database_apply_once(server_url: str) -> None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS worker_migrate_race WITH (FORCE)")
        admin.execute("CREATE DATABASE worker_migrate_race")
    url = make_conninfo(server_url, dbname="worker_migrate_race")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "migrate", "--app-tables"],
            env={**clean, "DATABASE_URL": url},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    applied = [out for out, _ in outputs if '"0001_worker_tables"' in out]
    assert len(applied) == 1  # exactly one process applied the migration
    with psycopg.connect(url) as conn:
        versions = conn.execute(
            "SELECT version FROM worker_schema_migrations ORDER BY version"
        ).fetchall()
        tables = conn.execute("SELECT to_regclass('campaign_stock') IS NOT NULL").fetchone()
    migrations = sorted((ROOT / "worker" / "sql" / "migrations").glob("*.sql"))
    assert versions == [(path.stem,) for path in migrations]
    assert tables == (True,)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE worker_migrate_race WITH (FORCE)")


def test_the_old_timeout_name_is_warned_about_once_at_start(
    db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    # BASE_ENV sets HTTP_TIMEOUT_SECONDS too: the new name wins and the old one is named.
    worker = spawn("quota", "--once", env={"DATABASE_URL": db_url, "HTTP_TIMEOUT": "2.5"})
    assert worker.wait() == 0
    [warning] = worker.events("setting_deprecated")
    assert (warning["variable"], warning["replacement"]) == ("HTTP_TIMEOUT", "HTTP_TIMEOUT_SECONDS")
    assert "HTTP_TIMEOUT " in warning["message"] and "HTTP_TIMEOUT_SECONDS" in warning["message"]
    assert warning["level"] == "warning"


def readme_configuration_rows() -> dict[str, str]:
    """`| `NAME` | default | meaning |` rows of the README's Configuration section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_every_variable_is_declared_once_and_documented_with_its_default() -> None:
    from worker.settings import VARIABLES

    names = [var.name for var in VARIABLES]
    fields = [var.field for var in VARIABLES]
    assert len(set(names)) == len(names) and len(set(fields)) == len(fields)
    readme = readme_configuration_rows()
    assert sorted(readme) == sorted(names), "README's configuration table and VARIABLES differ"
    for var in VARIABLES:
        assert readme[var.name] == var.documented_default(), var.name


def test_the_declared_defaults_are_what_an_empty_environment_gets(tmp_path: Path) -> None:
    from worker.settings import VARIABLES

    settings = from_env({"DATABASE_URL": "postgresql://db/app"})
    for var in VARIABLES:
        if var.name == "WORKER_JOBS_FILE":
            continue  # the default file is read only where it exists
        assert getattr(settings, var.field) == var.default, var.name
