"""railway_entrypoint.sh: SERVICE_TYPE picks the service, and Python replaces the shell."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.support.processes import ROOT
from worker import db
from worker.logs import get_logger
from worker.registry import JOBS
from worker.service import register

ENTRYPOINT = ROOT / "railway_entrypoint.sh"


def run_entrypoint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # `python` on PATH is this environment's, as it is the image's venv in the container.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    clean.pop("SERVICE_TYPE", None)
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={**clean, "PATH": path, "LOG_FORMAT": "json", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("service_type", ["", "quota_updater", "worker; rm -rf /"])
def test_unknown_or_missing_service_type_is_a_usage_error(service_type: str) -> None:
    # The worker reads SERVICE_TYPE itself: a usage error like any other (exit 2; the
    # script's own check exited 64 before it became a plain `exec`).
    done = run_entrypoint(env={"SERVICE_TYPE": service_type} if service_type else {})
    assert done.returncode == 2
    assert "SERVICE_TYPE" in done.stderr
    services = "quota (alias tavily_quota_updater), cleanup, replenish, jobs, all, migrate"
    assert services in done.stderr


def test_migrate_service(db_url: str) -> None:
    done = run_entrypoint(env={"SERVICE_TYPE": "migrate", "DATABASE_URL": db_url})
    assert done.returncode == 0, done.stderr
    assert '"migrate_completed"' in done.stdout


def test_alias_runs_quota_in_the_same_process(db_url: str, conn: db.Conn) -> None:
    conn.execute("INSERT INTO tavily_api_keys (api_key, plan_limit) VALUES ('tvly-k', 5)")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {
        **os.environ,
        "PATH": path,
        "SERVICE_TYPE": "tavily_quota_updater",
        "DATABASE_URL": db_url,
        "TAVILY_USAGE_URL": "http://127.0.0.1:9/usage",
        "RETRY_BASE_DELAY_SECONDS": "0",
        "LOG_FORMAT": "json",
    }
    shell = subprocess.Popen(
        ["sh", str(ENTRYPOINT), "--once"], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    stdout, _ = shell.communicate(timeout=60)
    assert shell.returncode == 1  # the only key's API is unreachable: the run failed
    assert '"tavily_quota_updater_starting"' in stdout
    [run] = conn.execute("SELECT job, pid FROM worker_job_runs").fetchall()
    # The run row's pid is the shell's: `exec` replaced the shell with Python, so the
    # platform's SIGTERM goes straight to the worker.
    assert (run["job"], run["pid"]) == ("quota", shell.pid)


def test_status_accepts_the_service_type_alias(db_url: str, conn: db.Conn) -> None:
    # quota ran a minute ago; cleanup_tokens (hourly) last succeeded 3 hours ago: stale.
    register(conn, make_settings(db_url), [JOBS["quota"], JOBS["cleanup_tokens"]], get_logger())
    for job, age_s in (("quota", 60), ("cleanup_tokens", 3 * 3600)):
        conn.execute(
            "INSERT INTO worker_job_runs (job, trigger, status, started_at, finished_at, host, pid)"
            " VALUES (%s, 'schedule', 'success', now() - make_interval(secs => %s),"
            " now() - make_interval(secs => %s), 'test-host', 1)",
            (job, age_s, age_s),
        )
    done = subprocess.run(
        [sys.executable, "-m", "worker", "status", "--service", "tavily_quota_updater", "--json"],
        env={**os.environ, "DATABASE_URL": db_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Not a usage error (2), and scoped to quota: the stale cleanup job is not its concern.
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert [(job["job"], job["health"]) for job in body["jobs"]] == [("quota", "ok")]


def healthcheck_command() -> list[str]:
    """The Dockerfile's HEALTHCHECK CMD, as Docker runs it."""
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^HEALTHCHECK .*?\\\n\s+CMD (\[.*\])$", text, re.MULTILINE)
    assert match is not None
    command: list[str] = json.loads(match.group(1))
    return command


@pytest.mark.parametrize(
    ("service_type", "database", "expected"),
    [
        ("quota", "up", 0),
        ("quota", "closed", 1),  # status exits 2 here, which Docker reserves
        ("migrate", "closed", 0),  # a one-shot service: nothing to check
    ],
)
def test_the_image_healthcheck_exits_0_or_1(
    db_url: str, service_type: str, database: str, expected: int
) -> None:
    if database == "closed":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            db_url = f"postgresql://app:pw@127.0.0.1:{sock.getsockname()[1]}/app"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    done = subprocess.run(
        healthcheck_command(),
        env={**clean, "PATH": path, "SERVICE_TYPE": service_type, "DATABASE_URL": db_url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == expected, done.stderr
