"""`worker status`: the registered jobs of the ledger, their health and the exit code.

Expected schedules and periods are the README's ("How it works"), written out here as
literals: never derived from the code under test.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.conftest import make_settings
from tests.support.processes import WorkerProcess
from worker import db, service
from worker.logs import get_logger
from worker.registry import JOBS

Spawn = Callable[..., WorkerProcess]

MINUTE, HOUR, DAY = 60, 3600, 86400

# The contract's schedules with default settings, and each job's service.
SCHEDULES = {
    "quota": "every 1h",
    "cleanup_tokens": "every 1h",
    "cleanup_sessions": "cron 0 2 * * * UTC",
    "cleanup_content": "cron 30 2 * * 0 UTC",
    "cleanup_history": "cron 0 2 * * * UTC",
    "replenish": "every 10m",
    "lease_recovery": "every 5m",
}
SERVICE_OF = {
    "quota": "quota",
    "cleanup_tokens": "cleanup",
    "cleanup_sessions": "cleanup",
    "cleanup_content": "cleanup",
    "cleanup_history": "cleanup",
    "replenish": "replenish",
    "lease_recovery": "replenish",
}
CLEANUP_JOBS = ["cleanup_content", "cleanup_history", "cleanup_sessions", "cleanup_tokens"]

# One job of each kind of schedule, with the period the contract gives it.
PERIODS = [
    pytest.param("quota", HOUR, id="quota-hourly"),
    pytest.param("lease_recovery", 5 * MINUTE, id="lease_recovery-5min"),
    pytest.param("cleanup_sessions", DAY, id="cleanup_sessions-daily"),
    pytest.param("cleanup_content", 7 * DAY, id="cleanup_content-weekly"),
]


# --- setting up the ledger -------------------------------------------------------------


def register(conn: db.Conn, db_url: str, *jobs: str, **env: str) -> None:
    """Register `jobs` in the ledger the way a starting service does."""
    settings = make_settings(db_url, **env)
    service.register(conn, settings, [JOBS[job] for job in jobs], get_logger())


def add_job(
    conn: db.Conn,
    job: str,
    schedule: str,
    *,
    service_name: str | None = None,
    due_in_s: float = 10 * MINUTE,
    paused: bool = False,
) -> dict[str, Any]:
    """A ledger row written directly; `due_in_s` < 0 puts next_due_at in the past."""
    row = conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at, paused, paused_at)"
        " VALUES (%(job)s, %(service)s, %(schedule)s, now() + make_interval(secs => %(due)s),"
        " %(paused)s, CASE WHEN %(paused)s THEN now() END)"
        " RETURNING job, next_due_at",
        {
            "job": job,
            "service": service_name or SERVICE_OF[job],
            "schedule": schedule,
            "due": due_in_s,
            "paused": paused,
        },
    ).fetchone()
    assert row is not None
    return row


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


def register_all_with_recent_runs(conn: db.Conn, db_url: str) -> None:
    register(conn, db_url, *SCHEDULES)
    for job in SCHEDULES:
        add_run(conn, job, age_s=2 * MINUTE)


# --- running it ------------------------------------------------------------------------


def run_status(spawn: Spawn, db_url: str, *args: str) -> tuple[int, str, str]:
    process = spawn("status", *args, env={"DATABASE_URL": db_url})
    code = process.wait()
    return code, "".join(process.raw), process.stderr()


def status_json(spawn: Spawn, db_url: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run_status(spawn, db_url, "--json", *args)
    assert code in (0, 1), err
    return code, json.loads(out)


def health_of(body: dict[str, Any]) -> dict[str, str]:
    return {job["job"]: job["health"] for job in body["jobs"]}


def table_rows(output: str) -> dict[str, list[str]]:
    """The table's data rows by job name, split on the runs of spaces between columns; none
    when no job is registered (then there is no table, not even its header)."""
    lines = output.splitlines()
    if "no jobs registered: " in output:
        assert not lines[0].startswith("JOB ")
        return {}
    assert lines[0].startswith("JOB ")
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = [cell for cell in line.split("  ") if cell.strip()]
        rows[cells[0].strip()] = [cell.strip() for cell in cells]
    return rows


def sections(output: str) -> list[str]:
    """The table (empty when there is none), the verdict and the capacity lines."""
    parts = output.split("\n\n")
    return parts if parts[0].startswith("JOB ") else ["", *parts]


def verdict(output: str) -> list[str]:
    """The lines between the table and the capacity lines (each after a blank line)."""
    return sections(output)[1].splitlines()


def capacity(output: str) -> list[str]:
    """The last lines: what runs now, and how many runs a process takes at once."""
    return sections(output)[2].splitlines()


def clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


# --- which jobs are reported -----------------------------------------------------------


def test_registered_jobs_carry_the_contract_schedules_and_wait_healthy(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    register(conn, db_url, *SCHEDULES)
    ledger = {
        r["job"]: r["next_due_at"]
        for r in conn.execute("SELECT job, next_due_at FROM worker_jobs").fetchall()
    }

    code, body = status_json(spawn, db_url)

    assert code == 0
    assert body["healthy"] is True
    jobs = {job["job"]: job for job in body["jobs"]}
    assert {name: job["schedule"] for name, job in jobs.items()} == SCHEDULES
    assert {name: job["service"] for name, job in jobs.items()} == SERVICE_OF
    for name, job in jobs.items():
        assert datetime.fromisoformat(job["next_due_at"]) == ledger[name]
        assert (job["last_status"], job["health"], job["healthy"]) == (None, "waiting", True)


def test_schedule_settings_show_in_the_registered_schedule(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    register(
        conn,
        db_url,
        "quota",
        "cleanup_sessions",
        SCHEDULE_TIMEZONE="Asia/Shanghai",
        QUOTA_UPDATE_INTERVAL_HOURS="6",
    )

    _, body = status_json(spawn, db_url)

    jobs = {job["job"]: job for job in body["jobs"]}
    assert jobs["quota"]["schedule"] == "every 6h"
    assert jobs["cleanup_sessions"]["schedule"] == "cron 0 2 * * * Asia/Shanghai"
    # 02:00 in Shanghai (UTC+8, no DST) is 18:00 UTC.
    due = datetime.fromisoformat(jobs["cleanup_sessions"]["next_due_at"]).astimezone(UTC)
    assert (due.hour, due.minute) == (18, 0)


def test_only_registered_jobs_appear_quota_alone_is_healthy(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    # The quickstart: only the quota service ever started, and ran once at start. A pause
    # set for a job no service registered leaves a ledger row without a schedule.
    register(conn, db_url, "quota")
    add_run(conn, "quota", age_s=30)
    conn.execute("INSERT INTO worker_jobs (job, paused) VALUES ('replenish', true)")

    code, out, err = run_status(spawn, db_url)

    assert code == 0, err
    assert list(table_rows(out)) == ["quota"]
    assert table_rows(out)["quota"][-1] == "ok"
    assert verdict(out) == ["healthy"]
    assert capacity(out) == [
        "running now: nothing",
        "each service process runs up to 4 jobs at once (WORKER_CONCURRENCY);"
        " a job never has two runs at a time",
        "no live process runs service quota (jobs: quota)",  # it registered, then stopped
    ]


def test_no_registered_jobs_is_healthy_and_says_so(spawn: Spawn, db_url: str) -> None:
    code, out, _ = run_status(spawn, db_url)
    json_code, body = status_json(spawn, db_url)

    assert code == 0
    assert table_rows(out) == {}
    assert verdict(out) == [
        "healthy",
        "no jobs registered: no service has started on this database yet",
    ]
    assert json_code == 0
    assert (body["healthy"], body["jobs"]) == (True, [])


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


def test_an_unmigrated_database_reports_no_jobs_without_migrating(
    spawn: Spawn, unmigrated_url: str
) -> None:
    code, out, err = run_status(spawn, unmigrated_url)

    assert code == 0, err
    assert table_rows(out) == {}
    assert "no jobs registered: no service has started on this database yet" in verdict(out)
    with psycopg.connect(unmigrated_url, row_factory=dict_row) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog',"
            " 'information_schema')"
        ).fetchall()
    assert tables == []  # status read; it created nothing


# --- health ----------------------------------------------------------------------------


def test_recent_successful_runs_are_healthy(spawn: Spawn, conn: db.Conn, db_url: str) -> None:
    register_all_with_recent_runs(conn, db_url)

    code, out, err = run_status(spawn, db_url)

    assert code == 0, err
    rows = table_rows(out)
    assert set(rows) == set(SCHEDULES)
    for job, cells in rows.items():
        assert cells[1] == SERVICE_OF[job]
        assert (cells[3], cells[5], cells[-1]) == ("success", "3/0", "ok")
    assert verdict(out) == ["healthy"]


@pytest.mark.parametrize(("stale_job", "period_s"), PERIODS)
def test_a_stale_job_exits_1_and_is_named(
    spawn: Spawn, conn: db.Conn, db_url: str, stale_job: str, period_s: int
) -> None:
    register_all_with_recent_runs(conn, db_url)
    conn.execute("DELETE FROM worker_job_runs WHERE job = %s", (stale_job,))
    add_run(conn, stale_job, age_s=2 * period_s + MINUTE)

    code, out, _ = run_status(spawn, db_url)

    assert code == 1
    rows = table_rows(out)
    assert rows[stale_job][-1] == "stale"
    assert {job: cells[-1] for job, cells in rows.items() if job != stale_job} == dict.fromkeys(
        set(SCHEDULES) - {stale_job}, "ok"
    )
    assert verdict(out) == [
        "UNHEALTHY",
        f"  {stale_job}: no success or partial run within 2 x its period",
    ]


@pytest.mark.parametrize(("job", "period_s"), PERIODS)
def test_just_inside_twice_the_period_is_still_healthy(
    spawn: Spawn, conn: db.Conn, db_url: str, job: str, period_s: int
) -> None:
    register(conn, db_url, job)
    add_run(conn, job, age_s=2 * period_s - MINUTE)

    code, body = status_json(spawn, db_url)

    assert code == 0
    assert health_of(body) == {job: "ok"}


@pytest.mark.parametrize(("age_s", "health"), [(5 * DAY, "ok"), (6 * DAY + HOUR, "stale")])
def test_a_cron_period_is_its_longest_gap(
    spawn: Spawn, conn: db.Conn, db_url: str, age_s: int, health: str
) -> None:
    # Weekdays at 02:00: gaps of 1 day, and 3 days over the weekend. The period is 3 days.
    add_job(conn, "weekday_report", "cron 0 2 * * 1-5 UTC", service_name="jobs")
    add_run(conn, "weekday_report", age_s=age_s)

    _, body = status_json(spawn, db_url)

    assert health_of(body) == {"weekday_report": health}


def test_a_failed_last_run_is_unhealthy_until_a_good_one(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    register(conn, db_url, "quota")
    add_run(conn, "quota", age_s=300)
    add_run(conn, "quota", "failed", age_s=200, succeeded=0, failed=4)

    code, out, _ = run_status(spawn, db_url)
    assert code == 1
    assert table_rows(out)["quota"][-1] == "failed"
    assert verdict(out) == ["UNHEALTHY", "  quota: its last completed run failed"]

    # An interrupted run (a deploy) says nothing about whether the job works.
    add_run(conn, "quota", "interrupted", age_s=100)
    code, body = status_json(spawn, db_url)
    assert code == 1
    assert health_of(body) == {"quota": "failed"}

    add_run(conn, "quota", "partial", age_s=50, succeeded=3, failed=1)
    code, body = status_json(spawn, db_url)
    assert code == 0
    assert health_of(body) == {"quota": "ok"}


def test_paused_jobs_are_reported_but_not_unhealthy(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    register_all_with_recent_runs(conn, db_url)
    conn.execute("DELETE FROM worker_job_runs WHERE job = 'quota'")
    add_run(conn, "quota", "failed", age_s=10 * HOUR, succeeded=0, failed=3)
    conn.execute("UPDATE worker_jobs SET paused = true, paused_at = now() WHERE job = 'quota'")

    code, out, _ = run_status(spawn, db_url)

    assert code == 0
    assert table_rows(out)["quota"][7:] == ["yes", "-", "paused"]
    assert verdict(out) == [
        "healthy",
        "paused (skipped by every replica; not counted as unhealthy): quota",
    ]


def test_jobs_not_yet_due_for_two_periods_are_waiting_and_healthy(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    add_job(conn, "quota", "every 1h", due_in_s=10 * MINUTE)  # not due yet
    add_job(conn, "cleanup_tokens", "every 1h", due_in_s=-(2 * HOUR - MINUTE))
    add_job(conn, "cleanup_sessions", "cron 0 2 * * * UTC", due_in_s=-(2 * DAY - MINUTE))
    add_job(conn, "cleanup_content", "cron 30 2 * * 0 UTC", due_in_s=-(14 * DAY - MINUTE))

    code, out, _ = run_status(spawn, db_url)

    assert code == 0
    rows = table_rows(out)
    assert {job: cells[-1] for job, cells in rows.items()} == {
        "quota": "waiting",
        "cleanup_tokens": "waiting",
        "cleanup_sessions": "waiting",
        "cleanup_content": "waiting",
    }
    assert {cells[3] for cells in rows.values()} == {"never run"}
    assert verdict(out) == ["healthy"]


def test_a_first_run_still_running_is_not_unhealthy(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    # The weekly job was just registered and its start-up run began 5 s ago.
    add_job(conn, "cleanup_content", "cron 30 2 * * 0 UTC", due_in_s=DAY)
    conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, started_at, host, pid)"
        " VALUES ('cleanup_content', 'startup', 'running', now() - interval '5 seconds',"
        " 'test-host', 1)"
    )

    code, body = status_json(spawn, db_url)

    assert (code, body["healthy"]) == (0, True)


@pytest.mark.parametrize(
    ("job", "schedule", "period_s"),
    [
        pytest.param("replenish", "every 10m", 10 * MINUTE, id="interval"),
        pytest.param("cleanup_content", "cron 30 2 * * 0 UTC", 7 * DAY, id="weekly"),
    ],
)
def test_a_job_due_for_over_two_periods_without_a_run_is_never_run(
    spawn: Spawn, conn: db.Conn, db_url: str, job: str, schedule: str, period_s: int
) -> None:
    add_job(conn, "quota", "every 1h", due_in_s=10 * MINUTE)
    add_job(conn, job, schedule, due_in_s=-(2 * period_s + MINUTE))

    code, out, _ = run_status(spawn, db_url)

    assert code == 1
    assert {name: cells[-1] for name, cells in table_rows(out).items()} == {
        "quota": "waiting",
        job: "never_run",
    }
    assert verdict(out) == [
        "UNHEALTHY",
        f"  {job}: it has never run, though due for 2 x its period",
    ]


# --- --service -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "jobs", "code"),
    [
        pytest.param(["--service", "quota"], ["quota"], 0, id="quota"),
        pytest.param(["--service", "replenish"], ["lease_recovery", "replenish"], 0, id="repl"),
        pytest.param(["--service", "cleanup"], CLEANUP_JOBS, 1, id="cleanup"),
        pytest.param(["--service", "all"], sorted(SCHEDULES), 1, id="all"),
        pytest.param([], sorted(SCHEDULES), 1, id="no-flag"),
    ],
)
def test_service_scopes_the_rows_and_the_verdict(
    spawn: Spawn, conn: db.Conn, db_url: str, args: list[str], jobs: list[str], code: int
) -> None:
    register_all_with_recent_runs(conn, db_url)
    conn.execute("DELETE FROM worker_job_runs WHERE job = 'cleanup_tokens'")
    add_run(conn, "cleanup_tokens", age_s=3 * HOUR)  # hourly: stale

    got_code, body = status_json(spawn, db_url, *args)

    assert got_code == code
    assert body["healthy"] is (code == 0)
    assert sorted(job["job"] for job in body["jobs"]) == jobs
    stale = [job["job"] for job in body["jobs"] if job["health"] == "stale"]
    assert stale == (["cleanup_tokens"] if "cleanup_tokens" in jobs else [])


def test_service_filters_on_the_registering_service(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    # The ledger's `service` column decides, not the job's name.
    add_job(conn, "quota", "every 1h", service_name="replenish", due_in_s=-3 * HOUR)
    add_job(conn, "replenish", "every 10m")

    code, body = status_json(spawn, db_url, "--service", "quota")
    assert (code, body["jobs"]) == (0, [])

    code, body = status_json(spawn, db_url, "--service", "replenish")
    assert code == 1
    assert health_of(body) == {"quota": "never_run", "replenish": "waiting"}


def test_unknown_service_exits_2_listing_the_known_ones(spawn: Spawn, db_url: str) -> None:
    code, out, err = run_status(spawn, db_url, "--service", "nope")

    assert code == 2
    assert out == ""
    assert "--service: unknown service 'nope'" in err
    for name in ("quota", "cleanup", "replenish", "all"):
        assert name in err


# --- output ----------------------------------------------------------------------------


def test_the_table_shows_the_ledger_and_the_latest_run(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    ledger = add_job(conn, "quota", "every 1h", due_in_s=20 * MINUTE)
    add_run(conn, "quota", age_s=10 * MINUTE)
    latest = add_run(conn, "quota", "partial", age_s=2 * MINUTE, duration_ms=75_000)
    conn.execute(
        "UPDATE worker_job_runs SET succeeded = 7, failed = 2, total = 9 WHERE id = %s",
        (latest["id"],),
    )

    code, out, _ = run_status(spawn, db_url)

    assert code == 0
    assert table_rows(out)["quota"] == [
        "quota",
        "quota",
        clock(latest["started_at"]),
        "partial",
        "1m15s",
        "7/2",
        clock(ledger["next_due_at"]),
        "no",
        clock(latest["finished_at"]),  # a partial run did run: it is the last success
        "ok",
    ]


def test_json_reports_schedule_next_due_cadence_and_health(
    spawn: Spawn, conn: db.Conn, db_url: str
) -> None:
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at) VALUES"
        " ('cleanup_sessions', 'cleanup', 'cron 0 2 * * * Asia/Shanghai',"
        "  '2030-01-01 18:00:00+00'),"
        " ('replenish', 'replenish', 'every 10m', '2030-01-01 09:30:00+00')"
    )
    sessions = add_run(conn, "cleanup_sessions", age_s=HOUR, duration_ms=4200, succeeded=12)
    add_run(conn, "replenish", "failed", age_s=MINUTE, succeeded=0, failed=5)

    code, body = status_json(spawn, db_url)

    assert code == 1
    assert body["healthy"] is False
    assert datetime.fromisoformat(body["checked_at"]).tzinfo is not None
    sessions_json, replenish_json = body["jobs"]
    cadence = sessions_json.pop("cadence")  # words, checked below
    assert sessions_json == {
        "job": "cleanup_sessions",
        "service": "cleanup",
        "schedule": "cron 0 2 * * * Asia/Shanghai",
        "last_started_at": sessions["started_at"].astimezone(UTC).isoformat(),
        "last_status": "success",
        "duration_ms": 4200,
        "succeeded": 12,
        "failed": 0,
        "next_due_at": "2030-01-01T18:00:00+00:00",
        "paused": False,
        "last_success_at": sessions["finished_at"].astimezone(UTC).isoformat(),
        "health": "ok",
        "healthy": True,
        "service_alive": False,  # no process is alive: the test registered the jobs itself
        "source": "system",
        "declared_in": None,
        "definition": None,
        # The test wrote its runs itself: only what a runner records is counted.
        "counters": {"runs": 0, "successes": 0, "failures": 0},
        "running": None,  # its last run has ended
        "description": "delete aged-out scrape sessions",  # the built-in job's own
    }
    assert "02:00" in cadence and "Asia/Shanghai" in cadence
    assert cadence != "cron 0 2 * * * Asia/Shanghai"
    assert replenish_json["schedule"] == "every 10m"
    assert replenish_json["cadence"] == "every 10 minutes"
    assert replenish_json["next_due_at"] == "2030-01-01T09:30:00+00:00"
    assert (replenish_json["last_status"], replenish_json["last_success_at"]) == ("failed", None)
    assert (replenish_json["health"], replenish_json["healthy"]) == ("failed", False)


# --- the database ----------------------------------------------------------------------


def test_database_down_exits_2_without_the_password(spawn: Spawn) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://worker:sekret-password@127.0.0.1:{port}/app"

    code, out, err = run_status(spawn, url)

    assert code == 2
    assert out == ""
    # Its log goes to stderr (stdout is the table's): the event, then the one human line.
    [event, human] = err.strip().splitlines()
    assert json.loads(event)["event"] == "database_unreachable"
    assert human.startswith("worker: error: ") and "db_host=127.0.0.1" in human
    assert "sekret-password" not in err


def test_a_job_that_always_fails_costs_the_status_read_one_index_descent(conn: db.Conn) -> None:
    """Its latest success is read from the index of successes, which holds none of its runs,
    never by walking its whole history of failures, whatever sample ANALYZE draws."""
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at)"
        " SELECT 'bulk_' || j, 'jobs', 'every 1h', now() FROM generate_series(0, 19) AS j"
    )
    conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at,"
        " finished_at, duration_ms)"
        " SELECT 'bulk_' || i % 20, 'schedule',"
        "   CASE WHEN i % 20 = 19 THEN 'failed'"  # bulk_19 has never succeeded
        "   ELSE (ARRAY['success','success','success','partial','failed'])[1 + i / 20 % 5] END,"
        "   'peer', 1, now() - make_interval(secs => i * 2.6),"
        "   now() - make_interval(secs => i * 2.6 - 1.5), 1500"
        "   FROM generate_series(1, 200000) AS i"
    )
    conn.execute("VACUUM ANALYZE worker_job_runs")
    params = {"service": None, "job": None, "after_service": None, "after_job": None}
    for _ in range(5):  # each ANALYZE draws another sample, and may tip a close plan
        conn.execute("ANALYZE worker_job_runs")
        row = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + db.query("reads.job_status"),
            {**params, "limit": None},
        ).fetchone()
        assert row is not None
        plan = row["QUERY PLAN"][0]

        def walked(node: dict[str, Any]) -> list[dict[str, Any]]:
            return [node, *(n for child in node.get("Plans", []) for n in walked(child))]

        scans = [n for n in walked(plan["Plan"]) if n.get("Relation Name") == "worker_job_runs"]
        read = sum(
            (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
            for n in scans
        )
        assert read <= 4 * 20, json.dumps(plan)  # a row or none per lateral and job
        # The success comes from the index alone: no table page, so no close call to tip.
        ran = [n for n in scans if n.get("Index Name") == "worker_job_runs_job_ran_idx"]
        assert [n["Node Type"] for n in ran] == ["Index Only Scan"], json.dumps(plan)
