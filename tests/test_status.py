"""`worker status`: the table, the JSON, the health verdict and its exit codes, as users run it."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.conftest import WorkerProcess, make_settings
from worker import db, status
from worker.registry import JOBS, SERVICES

Spawn = Callable[..., WorkerProcess]


def period_s(job: str, db_url: str) -> int:
    return JOBS[job].cadence(make_settings(db_url)).period_s


def add_run(
    conn: db.Conn,
    job: str,
    run_status: str = "success",
    *,
    age_s: float = 60,
    duration_ms: int = 1500,
    succeeded: int = 3,
    failed: int = 0,
) -> dict[str, Any]:
    """A finished run row that started `age_s` seconds ago (back-dated, never waited for)."""
    row = conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, started_at, finished_at,"
        " duration_ms, total, succeeded, failed, host, pid)"
        " VALUES (%(job)s, 'schedule', %(status)s, now() - make_interval(secs => %(age)s),"
        " now() - make_interval(secs => %(age)s) + make_interval(secs => %(dur)s / 1000.0),"
        " %(dur)s, %(total)s, %(ok)s, %(failed)s, 'test-host', 1)"
        " RETURNING id, started_at, finished_at",
        {
            "job": job,
            "status": run_status,
            "age": age_s,
            "dur": duration_ms,
            "total": succeeded + failed,
            "ok": succeeded,
            "failed": failed,
        },
    ).fetchone()
    assert row is not None
    return row


def add_recent_runs(conn: db.Conn) -> None:
    for job in JOBS:
        add_run(conn, job, age_s=120)


def run_status(spawn: Spawn, db_url: str, *args: str) -> tuple[int, str, str]:
    process = spawn("status", *args, env={"DATABASE_URL": db_url})
    code = process.wait()
    return code, "".join(process.raw), process.stderr()


def table_rows(output: str) -> dict[str, list[str]]:
    """The table's data rows by job name, split on the runs of spaces between columns."""
    lines = output.splitlines()
    assert lines[0].startswith("JOB ")
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = [cell for cell in line.split("  ") if cell.strip()]
        rows[cells[0].strip()] = [cell.strip() for cell in cells]
    return rows


def test_recent_successful_runs_are_healthy(spawn: Spawn, conn: db.Conn, db_url: str) -> None:
    add_recent_runs(conn)

    code, out, err = run_status(spawn, db_url)

    assert code == 0, err
    rows = table_rows(out)
    assert set(rows) == set(JOBS)
    for job, cells in rows.items():
        assert cells[1] == JOBS[job].service
        assert cells[3] == "success"
        assert cells[5] == "3/0"
        assert cells[-1] == "ok"
    assert "\nhealthy\n" in out


def test_a_stale_job_exits_1_and_is_named(spawn: Spawn, conn: db.Conn, db_url: str) -> None:
    add_recent_runs(conn)
    conn.execute("DELETE FROM worker_job_runs WHERE job = 'quota'")
    add_run(conn, "quota", age_s=3 * period_s("quota", db_url))

    code, out, _ = run_status(spawn, db_url)

    assert code == 1
    assert table_rows(out)["quota"][-1] == "stale"
    assert "UNHEALTHY" in out
    assert "  quota: no success or partial run within 2 x its period" in out
    others = [cells[-1] for job, cells in table_rows(out).items() if job != "quota"]
    assert others == ["ok"] * (len(JOBS) - 1)


def test_just_inside_twice_the_period_is_still_healthy(conn: db.Conn, db_url: str) -> None:
    add_run(conn, "quota", age_s=2 * period_s("quota", db_url) - 60)
    report = status.gather(conn, make_settings(db_url), ["quota"])
    assert report.jobs[0].health == "ok"
    assert report.healthy


def test_database_down_exits_2_without_the_password(spawn: Spawn) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://worker:sekret-password@127.0.0.1:{port}/app"

    code, out, err = run_status(spawn, url)

    assert code == 2
    assert out == ""
    assert "db_host=127.0.0.1" in err
    assert "sekret-password" not in err
    assert len(err.strip().splitlines()) == 1


def test_json_matches_the_table(spawn: Spawn, conn: db.Conn, db_url: str) -> None:
    add_recent_runs(conn)
    add_run(conn, "quota", "partial", age_s=30, duration_ms=75_000, succeeded=7, failed=2)

    code, out, _ = run_status(spawn, db_url)
    json_code, json_out, _ = run_status(spawn, db_url, "--json")

    body = json.loads(json_out)
    assert (code, json_code) == (0, 0)
    assert body["healthy"] is True
    rows = table_rows(out)
    assert [job["job"] for job in body["jobs"]] == list(rows)
    for job in body["jobs"]:
        cells = rows[job["job"]]
        assert cells[1] == job["service"]
        assert cells[2] == _clock(job["last_started_at"])
        assert cells[3] == job["last_status"]
        assert cells[5] == f"{job['succeeded']}/{job['failed']}"
        assert cells[6] == _clock(job["next_due"])
        assert cells[7] == ("yes" if job["paused"] else "no")
        assert cells[8] == _clock(job["last_success_at"])
        assert cells[9] == job["health"]
    quota = next(job for job in body["jobs"] if job["job"] == "quota")
    assert (quota["last_status"], quota["succeeded"], quota["failed"]) == ("partial", 7, 2)
    assert quota["duration_ms"] == 75_000 and rows["quota"][4] == "1m15s"
    assert quota["health"] == "ok"  # a partial run did run: it is not stale


def test_interval_jobs_are_due_one_period_after_the_last_finish(conn: db.Conn, db_url: str) -> None:
    older = add_run(conn, "quota", age_s=600)
    add_run(conn, "quota", "running", age_s=5)  # still running: next due counts from `older`
    conn.execute("UPDATE worker_job_runs SET finished_at = NULL WHERE status = 'running'")

    report = status.gather(conn, make_settings(db_url), ["quota"])

    quota = report.jobs[0]
    assert quota.last_status == "running"
    assert quota.next_due == older["finished_at"] + timedelta(seconds=period_s("quota", db_url))


def test_a_failed_last_run_is_unhealthy_until_a_good_one(conn: db.Conn, db_url: str) -> None:
    settings = make_settings(db_url)
    add_run(conn, "quota", age_s=300)
    add_run(conn, "quota", "failed", age_s=200, succeeded=0, failed=4)
    assert status.gather(conn, settings, ["quota"]).jobs[0].health == "failed"

    # An interrupted run (a deploy) says nothing about whether the job works.
    add_run(conn, "quota", "interrupted", age_s=100)
    assert status.gather(conn, settings, ["quota"]).jobs[0].health == "failed"

    add_run(conn, "quota", "partial", age_s=50, succeeded=3, failed=1)
    report = status.gather(conn, settings, ["quota"])
    assert report.jobs[0].health == "ok" and report.healthy


def test_paused_jobs_are_reported_but_not_unhealthy(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    add_recent_runs(conn)
    conn.execute("DELETE FROM worker_job_runs WHERE job = 'quota'")
    add_run(conn, "quota", "failed", age_s=10 * period_s("quota", db_url), failed=3)
    conn.execute("INSERT INTO worker_jobs (job, paused, paused_at) VALUES ('quota', true, now())")

    code, out, _ = run_status(spawn, db_url)

    assert code == 0
    assert table_rows(out)["quota"][7:] == ["yes", "-", "paused"]
    assert "paused (skipped by every replica; not counted as unhealthy): quota" in out


def test_jobs_that_never_ran_are_unhealthy(spawn: Spawn, conn: db.Conn, db_url: str) -> None:
    code, out, _ = run_status(spawn, db_url, "--json")

    body = json.loads(out)
    assert code == 1
    assert body["healthy"] is False
    assert {job["job"]: job["health"] for job in body["jobs"]} == dict.fromkeys(JOBS, "never_run")
    assert all(job["last_status"] is None for job in body["jobs"])


@pytest.fixture
def unmigrated_url(server_url: str) -> Iterator[str]:
    """A database the worker has never migrated: no worker tables at all."""
    name = "worker_status_unmigrated"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    yield make_conninfo(server_url, dbname=name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_missing_worker_tables_report_never_run_without_migrating(
    spawn: Spawn, unmigrated_url: str
) -> None:
    code, out, err = run_status(spawn, unmigrated_url)

    assert code == 1, err
    assert {cells[-1] for cells in table_rows(out).values()} == {"never_run"}
    with psycopg.connect(unmigrated_url, row_factory=dict_row) as conn:
        left = conn.execute("SELECT to_regclass('worker_job_runs') AS t").fetchone()
    assert left == {"t": None}  # status read, it did not create anything


def test_service_scopes_the_rows_and_the_verdict(spawn: Spawn, conn: db.Conn, db_url: str) -> None:
    add_run(conn, "quota", age_s=60)  # every other job has never run

    code, out, _ = run_status(spawn, db_url, "--json", "--service", "quota")

    assert code == 0
    assert [job["job"] for job in json.loads(out)["jobs"]] == list(SERVICES["quota"].jobs)


def test_unknown_service_exits_2_listing_the_known_ones(spawn: Spawn, db_url: str) -> None:
    code, out, err = run_status(spawn, db_url, "--service", "nope")

    assert code == 2
    assert out == ""
    assert "--service: unknown service 'nope'" in err
    for name in SERVICES:
        assert name in err


def _clock(iso: str | None) -> str:
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
