"""The command line as users run it: pipes, exit codes, SERVICE_TYPE, --version, usage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.fakes import Reply, Request, serving, usage_body
from tests.support.processes import BASE_ENV, ROOT, WorkerProcess
from worker import db
from worker.registry import JOBS


def worker_env(**env: str) -> dict[str, str]:
    """The environment a test child starts from: no database of the test runner's own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    for name in ("DATABASE_URL", "SERVICE_TYPE"):
        clean.pop(name, None)
    return {**clean, **BASE_ENV, **env}


def run_row(conn: db.Conn, job: str) -> dict[str, Any]:
    [row] = conn.execute(
        "SELECT status, total, succeeded, failed FROM worker_job_runs WHERE job = %s", (job,)
    ).fetchall()
    return dict(row)


def test_a_closed_stdout_neither_breaks_nor_fails_the_run(db_url: str, conn: db.Conn) -> None:
    # `worker quota --once | head -1`: the reader goes away after the first line.
    conn.execute("INSERT INTO tavily_api_keys (api_key, plan_limit) VALUES ('tvly-pipe-1', 10)")
    reader_gone = threading.Event()

    def usage(request: Request) -> Reply:
        reader_gone.wait(10)  # answer only once nobody reads the worker's stdout any more
        return Reply(200, usage_body(15000, 500))

    with serving(usage) as api:
        child = subprocess.Popen(
            [sys.executable, "-m", "worker", "quota", "--once"],
            cwd=ROOT,
            env=worker_env(DATABASE_URL=db_url, TAVILY_USAGE_URL=f"{api.url}/usage"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stderr is not None
        child.stdout.readline()
        child.stdout.close()
        reader_gone.set()
        _, stderr = child.communicate(timeout=30)

    assert child.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr and b"BrokenPipe" not in stderr
    assert run_row(conn, "quota") == {"status": "success", "total": 1, "succeeded": 1, "failed": 0}


def run_worker(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_in(worker_env(**env), *args)


def run_in(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m worker ARGS` with exactly this environment."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version_prints_the_package_version() -> None:
    done = run_worker("--version")

    assert (done.returncode, done.stdout, done.stderr) == (0, f"worker {version('worker')}\n", "")


def test_a_mistyped_flag_shows_the_subcommands_usage() -> None:
    done = run_worker("quota", "--onse")

    assert done.returncode == 2
    assert done.stderr.startswith("usage: worker quota [-h] [--once]")
    assert "worker quota: error: unrecognized arguments: --onse" in done.stderr


def test_service_type_picks_the_command_when_none_is_given(db_url: str, conn: db.Conn) -> None:
    # The alias, as the entrypoint reads it; extra arguments pass through.
    done = run_worker(
        "--once",
        SERVICE_TYPE="tavily_quota_updater",
        DATABASE_URL=db_url,
        TAVILY_USAGE_URL="http://127.0.0.1:9/usage",
    )

    assert done.returncode == 0, done.stderr
    assert '"event": "tavily_quota_updater_starting"' in done.stdout
    assert conn.execute("SELECT job FROM worker_job_runs").fetchall() == [{"job": "quota"}]


def test_without_a_command_or_service_type_the_message_names_service_type() -> None:
    done = run_worker()

    assert done.returncode == 2
    assert "SERVICE_TYPE" in done.stderr
    assert "COMMAND" in done.stderr


def test_all_without_a_producer_runs_every_other_job_and_says_which_it_left_out(
    db_url: str, conn: db.Conn
) -> None:
    done = run_worker("all", "--once", DATABASE_URL=db_url)

    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    disabled = [(e["job"], e["variable"]) for e in lines if e["event"] == "job_disabled"]
    assert disabled == [("replenish", "REPLENISH_API_URL")]
    ran = {row["job"] for row in conn.execute("SELECT job FROM worker_job_runs").fetchall()}
    assert ran == set(JOBS) - {"replenish"}
    assert run_worker("replenish", "--once", DATABASE_URL=db_url).returncode == 2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


ONE_SHOT_COMMANDS = [
    ("status",),
    ("pause", "quota"),
    ("resume", "quota"),
    ("migrate",),
    ("quota", "--once"),
    ("run", "quota"),
    ("run", "quota", "--request"),
]


@pytest.mark.slow  # starts a worker process per command, each waiting out its timeout
def test_an_unreachable_database_gets_one_answer_from_every_command() -> None:
    url = f"postgresql://app:s3cret-pw@127.0.0.1:{closed_port()}/app"
    env = worker_env(DATABASE_URL=url)
    env.pop("DB_CONNECT_TIMEOUT_SECONDS")  # one-shot commands wait at most 10 s by default
    started = time.monotonic()
    children = {
        args: subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in ONE_SHOT_COMMANDS
    }
    try:
        done = {
            args: (child.communicate(timeout=30), child.returncode)
            for args, child in children.items()
        }
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait(5)

    assert time.monotonic() - started < 20
    for args, ((stdout, stderr), code) in done.items():
        assert code == (2 if args == ("status",) else 1), (args, stdout, stderr)
        # status keeps stdout for its table: its log lines go to stderr.
        log_stream, human = (stderr, stdout) if args == ("status",) else (stdout, stderr)
        events = [json.loads(line) for line in log_stream.splitlines() if line.startswith("{")]
        [event] = [e for e in events if e["event"] == "database_unreachable"]
        assert event["db_host"] == "127.0.0.1", args
        errors = [line for line in stderr.splitlines() if not line.startswith("{")]
        assert len(errors) == 1 and errors[0].startswith("worker: error: "), (args, stderr)
        assert "db_host=127.0.0.1" in errors[0], args
        assert "s3cret-pw" not in stdout + stderr, args
        assert human == "" or args != ("status",), args


def test_the_test_helper_notices_lines_no_test_expected() -> None:
    printed = WorkerProcess(["--version"], {})
    assert printed.wait() == 0
    assert printed.noise() == [f"worker {version('worker')}\n"]
    allowed = WorkerProcess(["--version"], {}, expect_noise=True)
    assert allowed.wait() == 0
    assert allowed.noise() == []


def test_help_names_what_each_service_runs() -> None:
    done = run_worker("--help")

    assert done.returncode == 0, done.stderr
    assert "()" not in done.stdout
    assert "run the jobs service as a daemon (the jobs file's jobs, and runtime jobs)" in (
        " ".join(done.stdout.split())
    )


def embedded_env(data_dir: Path) -> dict[str, str]:
    """No database configured: the embedded one under `data_dir`."""
    env = worker_env(WORKER_DATA_DIR=str(data_dir))
    env.pop("WORKER_JOBS_FILE", None)
    return env


def test_status_on_a_fresh_data_directory_creates_nothing_and_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "w"
    done = run_in(embedded_env(data_dir), "status")

    assert done.returncode == 0, done.stderr  # no jobs registered: healthy, as the README says
    assert done.stdout.startswith("healthy\nno jobs registered: the embedded database ")
    assert f"{data_dir / 'pgdata'} does not exist yet" in done.stdout
    assert "JOB" not in done.stdout  # no header of an empty table
    assert not data_dir.exists()  # no initdb, no folder


def test_status_of_a_database_without_jobs_prints_no_empty_table(db_url: str) -> None:
    done = run_worker("status", DATABASE_URL=db_url)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "healthy",
        "no jobs registered: no service has started on this database yet",
    ]
    assert "JOB" not in done.stdout


@pytest.mark.slow  # an initdb of its own
def test_status_reads_an_embedded_database_without_migrating_it_and_db_stop_says_what_it_did(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "w"
    env = embedded_env(data_dir)

    def worker(*args: str) -> subprocess.CompletedProcess[str]:
        return run_in(env, *args, timeout=120)

    url = worker("db", "url")  # creates the database, applies no migration, leaves it running
    assert url.returncode == 0, url.stderr
    try:
        done = worker("status")
        assert done.returncode == 0, done.stderr
        assert "no jobs registered" in done.stdout
        assert "JOB" not in done.stdout
        assert worker("db", "url").returncode == 0  # status, its last user, stopped it: again
        with psycopg.connect(url.stdout.strip(), autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass('worker_jobs') AS t").fetchone()
        assert row == (None,)  # status created no table
    finally:
        stopped = worker("db", "stop")
    assert (stopped.returncode, stopped.stdout) == (
        0,
        f"stopped the embedded server at {data_dir / 'pgdata'}\n",
    )
    again = worker("db", "stop")
    assert (again.returncode, again.stdout) == (
        0,
        f"the embedded server at {data_dir / 'pgdata'} was not running\n",
    )


def test_a_jobs_file_that_cannot_be_parsed_blocks_neither_db_nor_status(tmp_path: Path) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text('[jobs.etl]\nschedule = "every 1h"\nsql = SELECT 1\n', encoding="utf-8")
    env = {**embedded_env(tmp_path / "w"), "WORKER_JOBS_FILE": str(jobs_file)}

    def worker(*args: str) -> subprocess.CompletedProcess[str]:
        return run_in(env, *args, timeout=60)

    stopped = worker("db", "stop")
    assert (stopped.returncode, stopped.stderr) == (0, ""), stopped.stderr
    assert stopped.stdout.endswith("was not running\n")
    assert worker("status").returncode == 0
    refused = worker("quota", "--once")  # any service: the broken part may hold its jobs
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"worker: error: {jobs_file}: not valid TOML: ")
