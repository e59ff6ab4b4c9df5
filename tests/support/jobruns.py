"""Helpers of the subprocess tests of dispatch and completion: a jobs file, its
environment, the run rows and ledger row they check, bounded waits, a graceful stop."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.processes import WorkerProcess
from worker import db

WAIT_S = 30.0  # the machine is shared and busy: generous, but every wait is bounded


def write_jobs(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(text, encoding="utf-8")
    return path


def jobs_env(db_url: str, jobs_file: Path, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": db_url, "WORKER_JOBS_FILE": str(jobs_file), **extra}


def runs_of(conn: db.Conn, job: str | None = None) -> list[dict[str, Any]]:
    """The run rows (of `job`, if given) in order, with `late_s`: start minus occurrence."""
    return conn.execute(
        "SELECT *, extract(epoch FROM started_at - scheduled_for) AS late_s"
        "  FROM worker_job_runs WHERE %(job)s::text IS NULL OR job = %(job)s ORDER BY id",
        {"job": job},
    ).fetchall()


def job_row(conn: db.Conn, job: str) -> dict[str, Any]:
    row = conn.execute("SELECT *, now() AS now FROM worker_jobs WHERE job = %s", (job,)).fetchone()
    assert row is not None, f"no ledger row for {job}"
    return row


def wait_until(predicate: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """The predicate's first true value; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


def stop(worker: WorkerProcess) -> int:
    """SIGTERM, then the exit code."""
    worker.signal(signal.SIGTERM)
    return worker.wait(WAIT_S)
