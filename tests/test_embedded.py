"""The embedded default: one server per data folder, shared, stopped by its last user; and
the `worker db` commands a newcomer needs between runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.processes import BASE_ENV, ROOT, WorkerProcess
from worker import embedded
from worker.settings import Database

Spawn = Callable[..., WorkerProcess]
NO_API = "http://127.0.0.1:9/usage"  # no keys are added: never called


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A WORKER_DATA_DIR of the test's own; a server a failed test left running is stopped."""
    folder = tmp_path / "w"
    yield folder
    pid = embedded.running_pid(Database("", "embedded", embedded_dir=folder))
    if pid is not None:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        psutil.Process(pid).wait(30)


def server_pid(folder: Path) -> int | None:
    return embedded.running_pid(Database("", "embedded", embedded_dir=folder))


def db_command(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "worker", "db", *args],
        cwd=ROOT,
        env={**env, **BASE_ENV, "WORKER_DATA_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_first_start_migrates_reports_it_once_and_the_last_user_stops_the_server(
    spawn: Spawn, data_dir: Path
) -> None:
    env = {"WORKER_DATA_DIR": str(data_dir), "TAVILY_USAGE_URL": NO_API}
    first = spawn("quota", env=env)
    first.wait_for("scheduler_loop_started", timeout_s=60)
    applied = [e for e in first.lines if e.get("migrations_applied")]
    assert [e["event"] for e in applied] == ["embedded_database_ready"]
    assert applied[0]["migrations_applied"][0].startswith("0001")
    pid = server_pid(data_dir)
    assert pid is not None

    second = spawn("migrate", "--app-tables", env=env)  # joins the running server
    assert second.wait(30) == 0
    assert second.events("migrate_completed")[0]["applied"] == []
    assert second.events("embedded_database_ready")[0]["migrations_applied"] == []
    assert server_pid(data_dir) == pid  # still running: the daemon uses it

    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert server_pid(data_dir) is None  # its last user stopped it on the way out


def test_a_killed_workers_server_is_reaped_by_the_next_command_and_db_commands(
    spawn: Spawn, data_dir: Path
) -> None:
    env = {"WORKER_DATA_DIR": str(data_dir), "TAVILY_USAGE_URL": NO_API}
    killed = spawn("quota", env=env)
    killed.wait_for("scheduler_loop_started", timeout_s=60)
    pid = server_pid(data_dir)
    killed.signal(signal.SIGKILL)
    killed.wait()
    assert server_pid(data_dir) == pid  # nobody told it the worker died

    status = spawn("status", env=env)
    assert status.wait(30) == 0
    assert server_pid(data_dir) is None  # the next command forgot the dead one, and stopped it

    psql = db_command(data_dir, "psql", "-tAc", "SELECT count(*) FROM worker_jobs")
    assert (psql.returncode, psql.stdout) == (0, "1\n"), psql.stderr
    assert server_pid(data_dir) is None

    url = db_command(data_dir, "url")
    assert url.returncode == 0, url.stderr
    assert url.stdout.startswith("postgresql://postgres")
    assert server_pid(data_dir) is not None  # left running for whoever uses the URL

    stopped = db_command(data_dir, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert server_pid(data_dir) is None
    assert db_command(data_dir, "stop").returncode == 0  # nothing running: nothing to do
