"""To completion: no occurrence is lost to a deploy, a crash, a database blip or a clock step.

Each numbered case of ARCHITECTURE.md, "Owed occurrences" and "Faults", as users meet it:
subprocess daemons on a real PostgreSQL (through a real TCP forwarder where the database
goes away, through libfaketime where the wall clock steps).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import pooler
from tests.support.databases import own_database
from tests.support.jobruns import WAIT_S, job_row, jobs_env, runs_of, stop, wait_until, write_jobs
from tests.support.processes import WorkerProcess
from tests.webtools import Forwarder
from worker import db

Spawn = Callable[..., WorkerProcess]
CLOSED_URL = "http://127.0.0.1:9/usage"
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def started_once(spawn: Spawn, env: dict[str, str]) -> None:
    """Start a service and stop it once its loop runs: its jobs are in the ledger."""
    worker = spawn("jobs", env=env)
    worker.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    assert stop(worker) == 0


def make_missed(conn: db.Conn, job: str, by: str = "1 day") -> Any:
    row = conn.execute(
        "UPDATE worker_jobs SET next_due_at = next_due_at - %s::interval WHERE job = %s"
        " RETURNING next_due_at",
        (by, job),
    ).fetchone()
    assert row is not None
    return row["next_due_at"]


def kill_pid_in(path: Path) -> None:
    """End a child the test's job left behind (its PID written to `path`)."""
    if path.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(path.read_text().split()[0]), signal.SIGKILL)


# --- 1. a deploy during the nightly ETL -------------------------------------------------


def test_a_deploy_during_the_nightly_etl_runs_it_again_as_a_retry(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    done = tmp_path / "second-try"
    jobs = write_jobs(
        tmp_path,
        f"""
[jobs.nightly_etl]
schedule = "0 2 * * *"
timezone = "Asia/Shanghai"
on_start = "missed"
command = ["sh", "-c", "if [ -e {done} ]; then echo etl done; else sleep 30; fi"]
""",
    )
    env = jobs_env(db_url, jobs)
    started_once(spawn, env)
    missed = make_missed(conn, "nightly_etl")

    deployed = spawn("jobs", env=env)
    deployed.wait_for("job_started", job="nightly_etl", timeout_s=WAIT_S)
    time.sleep(1.0)  # the deploy's SIGTERM lands 1 s into the run
    assert stop(deployed) == 0
    [first] = runs_of(conn)
    assert (first["status"], first["trigger"], first["attempt"]) == ("interrupted", "schedule", 1)
    assert first["scheduled_for"] == missed
    assert job_row(conn, "nightly_etl")["owed_run_id"] == first["id"]

    done.touch()  # the new release's ETL finishes
    successor = spawn("jobs", env=env)
    wait_until(lambda: len(runs_of(conn)) == 2 and runs_of(conn)[1]["status"] != "running")
    assert stop(successor) == 0

    retry = runs_of(conn)[1]
    assert (retry["status"], retry["trigger"], retry["attempt"]) == ("success", "retry", 2)
    assert retry["scheduled_for"] == missed  # the same day's occurrence, not tomorrow's
    assert retry["output"] == "etl done\n"
    row = job_row(conn, "nightly_etl")
    assert row["owed_run_id"] is None
    assert timedelta(0) < row["next_due_at"] - row["now"] <= timedelta(days=1)


# --- 2. SIGKILL mid-run -------------------------------------------------------------------


def test_a_sigkilled_run_is_found_dead_by_any_live_process_and_run_again(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    child = tmp_path / "child.pid"
    jobs = write_jobs(
        tmp_path,
        f"""
[jobs.crunch]
schedule = "every 1h"
command = ["sh", "-c", "echo $$ > {child}; exec sleep 30"]
""",
    )
    env = jobs_env(db_url, jobs, LEASE_SECONDS="3")
    # A process of another service: every live process reaps dead runs, whatever it runs.
    watcher = spawn(
        "quota", env={"DATABASE_URL": db_url, "TAVILY_USAGE_URL": CLOSED_URL, "LEASE_SECONDS": "3"}
    )
    watcher.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    victim = spawn("jobs", env=env, expect_noise=True)
    try:
        wait_until(child.exists)
        [running] = runs_of(conn, "crunch")
        victim.kill()  # SIGKILL: it cannot say it left
        killed = time.monotonic()
        wait_until(lambda: runs_of(conn, "crunch")[0]["status"] != "running")
        found_s = time.monotonic() - killed
    finally:
        kill_pid_in(child)

    dead = runs_of(conn, "crunch")[0]
    assert dead["status"] == "abandoned"
    assert "lease expired" in dead["error"]
    assert found_s < 3 + 5 + 2, f"found dead after {found_s:.1f}s"  # LEASE_SECONDS + a poll
    assert watcher.wait_for("run_abandoned", abandoned_run_id=running["id"])["owed"] is True
    status = spawn("status", "--json", env={"DATABASE_URL": db_url})
    status.wait(WAIT_S)
    assert '"running": []' in "".join(status.raw)  # never shown as running once dead

    child.unlink()
    successor = spawn("jobs", env=env)
    try:
        wait_until(child.exists)
        retry = runs_of(conn, "crunch")[1]
        assert (retry["trigger"], retry["attempt"], retry["status"]) == ("retry", 2, "running")
        assert len(runs_of(conn, "crunch")) == 2  # the start-up request was consumed with it
        assert stop(successor) == 0
    finally:
        kill_pid_in(child)
    assert stop(watcher) == 0


def test_a_last_attempt_found_dead_gives_the_occurrence_up_with_an_alert(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    child = tmp_path / "child.pid"
    jobs = write_jobs(
        tmp_path,
        f"""
[jobs.once_only]
schedule = "every 1h"
max_attempts = 1
command = ["sh", "-c", "echo $$ > {child}; exec sleep 30"]
""",
    )
    env = jobs_env(db_url, jobs, LEASE_SECONDS="3")
    victim = spawn("jobs", env=env, expect_noise=True)
    try:
        wait_until(child.exists)
        victim.kill()
        watcher = spawn("jobs", env=jobs_env(db_url, jobs, LEASE_SECONDS="3", RUN_ON_START="false"))
        wait_until(lambda: runs_of(conn)[0]["status"] == "abandoned")
        alert = wait_until(
            lambda: conn.execute(
                "SELECT level, metadata FROM worker_alerts WHERE type = 'JOB_ATTEMPTS_EXHAUSTED'"
            ).fetchone()
        )
        assert stop(watcher) == 0
    finally:
        kill_pid_in(child)
    [dead] = runs_of(conn)
    assert alert["level"] == "ERROR"
    assert alert["metadata"] == {
        "run_id": dead["id"],
        "attempt": 1,
        "scheduled_for": None,  # a start-up run serves no occurrence
        "status": "abandoned",
    }
    assert job_row(conn, "once_only")["owed_run_id"] is None  # given up, not owed


# --- 3. restart to force a run --------------------------------------------------------------


def test_each_restart_runs_however_soon_after_the_last(
    db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    env = {"DATABASE_URL": db_url, "TAVILY_USAGE_URL": CLOSED_URL, "RUN_ON_START": "true"}
    for restart in range(3):
        worker = spawn("quota", env=env)
        wait_until(lambda n=restart: len([r for r in runs_of(conn) if r["finished_at"]]) == n + 1)
        assert stop(worker) == 0
    assert [r["trigger"] for r in runs_of(conn)] == ["startup"] * 3
    assert conn.execute("SELECT count(*) AS n FROM worker_processes").fetchone() == {"n": 0}


def test_replicas_started_together_make_one_start_up_run(
    db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    env = {"DATABASE_URL": db_url, "TAVILY_USAGE_URL": CLOSED_URL, "RUN_ON_START": "true"}
    replicas = [spawn("quota", env=env) for _ in range(3)]
    for replica in replicas:
        replica.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    wait_until(lambda: runs_of(conn) and runs_of(conn)[0]["finished_at"] is not None)
    time.sleep(1.0)  # a second start-up run would have started by now
    live = conn.execute("SELECT count(*) AS n FROM worker_processes").fetchone()
    assert [stop(replica) for replica in replicas] == [0, 0, 0]
    assert [r["trigger"] for r in runs_of(conn)] == ["startup"]
    assert live == {"n": 3}


# --- 4. the database goes away during a run --------------------------------------------------


def test_a_database_outage_during_a_run_loses_neither_the_run_nor_its_outcome(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        '[jobs.export]\nschedule = "every 1h"\ncommand = ["sh", "-c", "sleep 4; echo ok"]\n',
    )
    forwarder = Forwarder(db_url)
    forwarder.open()
    try:
        # The lease (9 s) is renewed every 3 s: the renewal at 3 s and the outcome at 4 s
        # both fall inside the outage.
        worker = spawn("jobs", env=jobs_env(forwarder.url, jobs, LEASE_SECONDS="9"))
        worker.wait_for("job_started", job="export", timeout_s=WAIT_S)
        time.sleep(1.5)
        forwarder.close()  # the server is gone: every connection cut, none accepted
        time.sleep(4.0)  # the command ends (4 s) while the database is away
        forwarder.open()
        wait_until(lambda: runs_of(conn) and runs_of(conn)[0]["status"] != "running")
        assert stop(worker) == 0
    finally:
        forwarder.close()

    [run] = runs_of(conn)
    assert (run["status"], run["output"]) == ("success", "ok\n")
    assert worker.events("run_record_retrying") != []  # the outcome waited for the server
    assert worker.events("lease_renewal_failed") != []  # and the lease keeper reconnected
    assert worker.events("lease_lost") == [] and worker.events("run_record_failed") == []
    assert job_row(conn, "export")["lease_owner"] is None


def test_a_pooler_restarted_during_a_run_loses_neither_the_run_nor_its_outcome(
    tmp_path: Path, db_url: str, server_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        '[jobs.export]\nschedule = "every 1h"\ncommand = ["sh", "-c", "sleep 4; echo ok"]\n',
    )
    with pooler.pgbouncer(server_url) as bouncer:
        pooled = bouncer.url(conn.info.dbname)
        worker = spawn("jobs", env=jobs_env(pooled, jobs, LEASE_SECONDS="9"))
        worker.wait_for("job_started", job="export", timeout_s=WAIT_S)
        time.sleep(2.5)
        pooler.restart(bouncer, down_s=3.0)  # away from 2.5 s to 5.5 s: the outcome at 4 s
        wait_until(lambda: runs_of(conn) and runs_of(conn)[0]["status"] != "running")
        assert stop(worker) == 0

    [run] = runs_of(conn)
    assert (run["status"], run["output"]) == ("success", "ok\n")
    assert worker.events("run_record_retrying") != []
    assert worker.events("lease_lost") == [] and worker.events("run_record_failed") == []


# --- 5. a frozen replica ---------------------------------------------------------------------


def test_a_frozen_replica_never_commits_after_another_took_its_job_over(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    conn.execute("CREATE TABLE marks (id serial PRIMARY KEY, backend int NOT NULL)")
    jobs = write_jobs(
        tmp_path,
        '[jobs.mark]\nschedule = "every 1h"\n'
        'sql = "INSERT INTO marks (backend) VALUES (pg_backend_pid()); SELECT pg_sleep(1)"\n',
    )
    env = jobs_env(db_url, jobs, LEASE_SECONDS="6")
    frozen = spawn("jobs", env=env, expect_noise=True)
    try:
        frozen.wait_for("job_started", job="mark", timeout_s=WAIT_S)
        time.sleep(0.3)  # the statement is running on the server
        frozen.proc.send_signal(signal.SIGSTOP)  # a VM stall: it never sends its COMMIT
        other = spawn("jobs", env=env)
        retry = wait_until(
            lambda: [r for r in runs_of(conn) if r["trigger"] == "retry" and r["finished_at"]]
        )[0]
        marks_before = conn.execute("SELECT count(*) AS n FROM marks").fetchone()
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    time.sleep(2.0)  # the old process wakes up and tries to go on
    assert stop(other) == 0
    assert stop(frozen) == 0

    first = runs_of(conn)[0]
    assert first["status"] == "abandoned"
    assert (retry["status"], retry["attempt"]) == ("success", 2)
    # The frozen transaction was ended by the server; only the takeover's insert exists.
    assert marks_before == {"n": 1}
    assert conn.execute("SELECT count(*) AS n FROM marks").fetchone() == {"n": 1}
    conn.execute("DROP TABLE marks")


# --- 6. the wall clock steps -------------------------------------------------------------


@pytest.mark.skipif(
    not FAKETIME_LIB.exists() and os.environ.get("CI") != "true",
    reason="libfaketime (Debian's faketime) is not installed",
)
def test_a_wall_clock_step_neither_stalls_nor_bursts_the_schedule(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    assert FAKETIME_LIB.exists(), "CI must install Debian's faketime"
    jobs = write_jobs(
        tmp_path, '[jobs.tick]\nschedule = "every 2s"\non_start = "false"\ncommand = ["true"]\n'
    )
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    env = jobs_env(
        db_url,
        jobs,
        LD_PRELOAD=str(FAKETIME_LIB),
        FAKETIME_TIMESTAMP_FILE=str(clock),
        FAKETIME_NO_CACHE="1",
        DONT_FAKE_MONOTONIC="1",  # an NTP step moves the wall clock only
    )
    worker = spawn("jobs", env=env)
    worker.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    wait_until(lambda: len(runs_of(conn)) >= 2)

    clock.write_text("-3600\n")  # back one hour
    back = len(runs_of(conn))
    time.sleep(10.0)
    after_back = len(runs_of(conn)) - back
    clock.write_text("+3600\n")  # forward two hours from there
    forward = len(runs_of(conn))
    time.sleep(10.0)
    after_forward = len(runs_of(conn)) - forward
    assert stop(worker) == 0

    assert 4 <= after_back <= 6, after_back  # every 2 s: 5 in 10 s, not 0
    assert 4 <= after_forward <= 6, after_forward  # and no burst of the hours skipped
    steps = [e["step_s"] for e in worker.events("clock_stepped")]
    assert len(steps) == 2 and steps[0] < -3000 and steps[1] > 7000, steps
    due = [r["scheduled_for"] for r in runs_of(conn)]
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(due)} == {2.0}


# --- owed occurrences: attempts, lateness, overlap -------------------------------------------


def test_the_third_interrupted_attempt_gives_the_occurrence_up_with_an_alert(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        '[jobs.fragile]\nschedule = "0 2 * * *"\non_start = "missed"\ncommand = ["sleep", "30"]\n',
    )
    env = jobs_env(db_url, jobs)
    started_once(spawn, env)
    missed = make_missed(conn, "fragile")
    for attempt in (1, 2, 3):
        worker = spawn("jobs", env=env)
        worker.wait_for("job_started", job="fragile", attempt=attempt, timeout_s=WAIT_S)
        time.sleep(0.5)
        assert stop(worker) == 0

    rows = runs_of(conn)
    assert [(r["trigger"], r["attempt"], r["status"]) for r in rows] == [
        ("schedule", 1, "interrupted"),
        ("retry", 2, "interrupted"),
        ("retry", 3, "interrupted"),
    ]
    assert {r["scheduled_for"] for r in rows} == {missed}
    alert = conn.execute(
        "SELECT level, metadata FROM worker_alerts WHERE type = 'JOB_ATTEMPTS_EXHAUSTED'"
    ).fetchone()
    assert alert is not None and alert["level"] == "ERROR"
    assert (alert["metadata"]["attempt"], alert["metadata"]["run_id"]) == (3, rows[2]["id"])
    assert job_row(conn, "fragile")["owed_run_id"] is None

    started_once(spawn, env)  # nothing is owed any more, nothing is due
    assert len(runs_of(conn)) == 3


def test_an_occurrence_later_than_max_lateness_is_skipped(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        '[jobs.fresh_only]\nschedule = "every 1h"\non_start = "missed"\nmax_lateness = "1m"\n'
        'command = ["true"]\n',
    )
    env = jobs_env(db_url, jobs)
    started_once(spawn, env)
    missed = make_missed(conn, "fresh_only", "70 minutes")  # due 10 minutes ago

    worker = spawn("jobs", env=env)
    skipped = worker.wait_for("occurrence_skipped", timeout_s=WAIT_S)
    assert stop(worker) == 0
    assert (skipped["reason"], skipped["max_lateness_s"]) == ("late", 60)
    assert skipped["scheduled_for"] == missed.isoformat()
    assert runs_of(conn) == []
    row = job_row(conn, "fresh_only")
    assert row["next_due_at"] > row["now"]


def test_overlap_queue_runs_right_after_and_skip_waits_for_the_next_occurrence(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        '[jobs.queued]\nschedule = "every 2s"\non_start = "false"\ncommand = ["sleep", "3"]\n\n'
        '[jobs.skipping]\nschedule = "every 2s"\non_start = "false"\ncommand = ["sleep", "3"]\n'
        'overlap = "skip"\n',
    )
    worker = spawn("jobs", env=jobs_env(db_url, jobs))
    wait_until(lambda: len([r for r in runs_of(conn, "skipping") if r["finished_at"]]) >= 3)
    assert stop(worker) == 0

    queued = [r for r in runs_of(conn, "queued") if r["status"] == "success"]
    assert len(queued) >= 3
    for before, after in itertools.pairwise(queued):  # one run right after
        assert (after["started_at"] - before["finished_at"]).total_seconds() < 0.5
    skipping = [r for r in runs_of(conn, "skipping") if r["status"] == "success"]
    due = [r["scheduled_for"] for r in skipping]
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(due)} == {4.0}
    assert max(float(r["late_s"]) for r in skipping) < 0.5  # each on time, none queued


# --- upgrading a v2 database ----------------------------------------------------------------


def test_a_v2_database_upgrades_its_runs_to_attempt_one(server_url: str, spawn: Spawn) -> None:
    from psycopg.rows import dict_row

    from tests.support.processes import ROOT

    name = "worker_upgrade_v2"
    migrations = sorted((ROOT / "worker" / "sql" / "migrations").glob("*.sql"))
    v2 = [path for path in migrations if path.stem <= "0003_web_indexes"]
    with (
        own_database(server_url, name) as url,
        psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn,
    ):
        conn.execute(
            "CREATE TABLE worker_schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for path in v2:
            conn.execute(path.read_bytes())
            conn.execute("INSERT INTO worker_schema_migrations (version) VALUES (%s)", (path.stem,))
        conn.execute((ROOT / "worker" / "sql" / "app_tables.sql").read_bytes())
        conn.execute(
            "INSERT INTO worker_jobs (job, service, schedule, next_due_at)"
            " VALUES ('quota', 'quota', 'every 1h', now() + interval '1 hour')"
        )
        due = conn.execute(
            "INSERT INTO worker_job_runs (job, trigger, status, host, pid, scheduled_for)"
            " VALUES ('quota', 'schedule', 'interrupted', 'v2-host', 7, now())"
            " RETURNING scheduled_for"
        ).fetchone()
        assert due is not None

        applied = db.migrate(conn)
        assert applied == [p.stem for p in migrations if p not in v2]
        row = conn.execute("SELECT attempt, trigger FROM worker_job_runs").fetchone()
        assert row == {"attempt": 1, "trigger": "schedule"}
        assert job_row(conn, "quota")["max_attempts"] == 3
        indexes = {
            r["indexname"]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'worker_job_runs'"
            )
        }
        assert "worker_job_runs_attempt_idx" in indexes
        assert "worker_job_runs_occurrence_idx" not in indexes
        insert_retry = (
            "INSERT INTO worker_job_runs"
            " (job, trigger, status, host, pid, scheduled_for, attempt)"
            " VALUES ('quota', %s, 'running', 'v3-host', 8, %s, %s)"
        )
        conn.execute(insert_retry, ("retry", due["scheduled_for"], 2))  # a second attempt
        with pytest.raises(psycopg.errors.UniqueViolation):  # but never a second start
            conn.execute(insert_retry, ("retry", due["scheduled_for"], 2))

        worker = spawn("quota", "--once", env={"DATABASE_URL": url, "TAVILY_USAGE_URL": CLOSED_URL})
        assert worker.wait(WAIT_S) == 0
