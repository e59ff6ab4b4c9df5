"""The daemon as users run it: `python -m worker quota` as a subprocess, signals, replicas."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from tests.conftest import make_settings
from tests.support.fakes import FakeServer, Reply, Request, serving, usage_body
from tests.support.processes import WorkerProcess
from worker import db
from worker.daemon import Daemon
from worker.registry import SERVICES

# The start-up run is dispatched by the loop, so it begins once the loop has started.
SEED_EVENTS = [
    "tavily_quota_updater_starting",
    "running_initial_update",
    "scheduler_loop_started",
    "tavily_keys_fetched",
    "tavily_quota_updated",
    "tavily_quota_update_completed",
]

Spawn = Callable[..., WorkerProcess]


def add_keys(conn: db.Conn, count: int, prefix: str = "tvly-daemon") -> list[str]:
    keys = [f"{prefix}-{i:03d}-secretsecret" for i in range(count)]
    for key in keys:
        conn.execute(
            "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota, updated_at)"
            " VALUES (%s, 1000, 0, now() - interval '1 day')",
            (key,),
        )
    return keys


def runs(conn: db.Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, status, trigger, total, succeeded, failed, pid FROM worker_job_runs ORDER BY id"
    ).fetchall()


def key_states(conn: db.Conn) -> dict[str, tuple[int, bool]]:
    rows = conn.execute(
        "SELECT api_key, remaining_quota, updated_at > now() - interval '1 hour' AS fresh"
        " FROM tavily_api_keys"
    ).fetchall()
    return {r["api_key"]: (r["remaining_quota"], r["fresh"]) for r in rows}


def quota_env(db_url: str, server: FakeServer, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": db_url, "TAVILY_USAGE_URL": f"{server.url}/usage", **extra}


def hang_after(answered: int) -> Callable[[Request], Reply]:
    """Answer the first `answered` requests, hang on the rest."""
    count = 0
    lock = threading.Lock()

    def respond(request: Request) -> Reply:
        nonlocal count
        with lock:
            count += 1
            mine = count
        return Reply(200, usage_body(1000, 100)) if mine <= answered else Reply(hang=True)

    return respond


def lease_expired(conn: db.Conn) -> bool:
    row = conn.execute("SELECT lease_until < now() AS expired FROM worker_jobs").fetchone()
    return bool(row and row["expired"])


def wait_until(predicate: Callable[..., bool], timeout_s: float = 10.0, **args: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate(**args):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_starts_runs_at_start_logs_seed_events_and_stops_when_idle(
    conn: db.Conn, spawn: Spawn
) -> None:
    keys = add_keys(conn, 3)
    with serving(lambda r: Reply(200, usage_body(1000, 100))) as server:
        worker = spawn("quota", env=quota_env(conn.info.dsn, server))
        worker.wait_for("job_finished")
        sent = worker.signal(signal.SIGTERM)
        code = worker.wait()
        exit_s = time.monotonic() - sent

    assert code == 0
    assert exit_s < 1.0, f"idle stop took {exit_s:.2f}s"
    names = [e["event"] for e in worker.events()]
    positions = [names.index(event) for event in SEED_EVENTS]
    assert positions == sorted(positions), names
    assert names.index("received_shutdown_signal") < names.index("tavily_quota_updater_stopped")
    assert worker.events("received_shutdown_signal")[0]["signal"] == "SIGTERM"
    assert all(e["job"] == "quota" for e in worker.events("tavily_quota_updated"))
    assert {e["run_id"] for e in worker.events("tavily_quota_updated")} == {runs(conn)[0]["id"]}
    assert [(r["status"], r["trigger"], r["succeeded"]) for r in runs(conn)] == [
        ("success", "startup", 3)
    ]
    assert all(state == (900, True) for state in key_states(conn).values())
    output = "".join(worker.raw) + worker.stderr()
    assert not any(key in output for key in keys), "a whole API key reached the log"


def test_sigterm_while_the_api_hangs_interrupts_within_a_second(
    conn: db.Conn, spawn: Spawn
) -> None:
    add_keys(conn, 6)
    with serving(hang_after(2)) as server:
        worker = spawn("quota", env=quota_env(conn.info.dsn, server, QUOTA_CONCURRENCY="2"))
        wait_until(lambda: len(server.requests) >= 4)  # two answered, two hanging
        worker.wait_for("tavily_quota_updated")
        sent = worker.signal(signal.SIGTERM)
        code = worker.wait()
        exit_s = time.monotonic() - sent

    assert code == 0
    assert exit_s < 1.0, f"busy stop took {exit_s:.2f}s"
    [run] = runs(conn)
    assert run["status"] == "interrupted"
    states = key_states(conn)
    written = [key for key, (quota, fresh) in states.items() if fresh]
    assert len(written) == run["succeeded"] == 2
    # No key half-written: each is either fully updated or exactly as it was.
    assert all(state in {(900, True), (0, False)} for state in states.values())


def test_sigkill_mid_run_holds_the_job_until_the_lease_expires_then_it_is_abandoned(
    conn: db.Conn, spawn: Spawn
) -> None:
    add_keys(conn, 2)
    with serving(lambda r: Reply(hang=True)) as server:
        first = spawn("quota", env=quota_env(conn.info.dsn, server, LEASE_SECONDS="4"))
        wait_until(lambda: len(server.requests) >= 1)
        first.signal(signal.SIGKILL)
        first.wait()
        assert [r["status"] for r in runs(conn)] == ["running"]
        refused = spawn("run", "quota", env=quota_env(conn.info.dsn, server))
        assert refused.wait(30) == 3  # the dead runner's lease still lives
        assert refused.stderr() == "quota: claimed_elsewhere\n"
        refused.wait_for("job_claimed_elsewhere", job="quota")
        assert [r["status"] for r in runs(conn)] == ["running"]
        wait_until(lease_expired, timeout_s=10, conn=conn)
        second = spawn(
            "quota", "--once", env=quota_env(conn.info.dsn, server, HTTP_TIMEOUT_SECONDS="0.2")
        )
        second.wait(30)

    abandoned = second.wait_for("run_abandoned")
    assert abandoned["pid"] == first.proc.pid
    statuses = [r["status"] for r in runs(conn)]
    assert statuses[0] == "abandoned"
    assert len(statuses) == 2
    assert all(state == (0, False) for state in key_states(conn).values())


def test_two_daemons_never_run_the_job_at_the_same_time(conn: db.Conn, spawn: Spawn) -> None:
    keys = add_keys(conn, 3)
    with serving(lambda r: Reply(hang=True)) as server:
        env = quota_env(conn.info.dsn, server, QUOTA_CONCURRENCY="1")
        first = spawn("quota", env=env)
        wait_until(lambda: len(server.requests) >= 1)  # first holds the job's lock
        second = spawn("quota", env=env)
        second.wait_for("scheduler_loop_started")
        # No start request while another runner's run holds the lease: one run, not two.
        assert second.wait_for("running_initial_update")["requested"] == []
        requests_while_locked = [r.bearer for r in server.requests]
        server.release.set()  # let the first daemon finish its pass
        first.wait_for("tavily_quota_update_completed")
        for worker in (first, second):
            worker.signal(signal.SIGTERM)
            assert worker.wait() == 0

    assert requests_while_locked == keys[:1]
    assert not second.events("job_started")
    assert [r["pid"] for r in runs(conn)] == [first.proc.pid]
    assert sorted(r.bearer or "" for r in server.requests) == sorted(keys)


def test_unreachable_database_is_retried_then_exits_1_without_leaking_the_password(
    spawn: Spawn,
) -> None:
    closed = FakeServer()
    port = closed.url.rsplit(":", 1)[1]
    closed.stop()
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{port}/appdb"
    worker = spawn("quota", env={"DATABASE_URL": url, "DB_CONNECT_TIMEOUT_SECONDS": "1.2"})
    assert worker.wait(30) == 1
    attempts = worker.events("database_unavailable")
    assert len(attempts) >= 2
    assert attempts[0]["db_host"] == "127.0.0.1" and attempts[0]["db_name"] == "appdb"
    assert worker.events("database_unreachable")
    assert "hunter2-secret" not in "".join(worker.raw) + worker.stderr()


def test_a_crashing_job_is_recorded_and_the_loop_goes_on(db_url: str, conn: db.Conn) -> None:
    settings = make_settings(db_url, TAVILY_USAGE_URL="http://127.0.0.1:9/usage")
    conn.execute("ALTER TABLE tavily_api_keys RENAME TO tavily_api_keys_away")
    daemon = Daemon(settings, SERVICES["quota"])
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()))
    try:
        thread.start()
        wait_until(lambda: any(r["status"] != "running" for r in runs(conn)))
        wait_until(lambda: bool(daemon.scheduler.jobs))
        assert thread.is_alive()  # the loop survived the crash
        ledger = conn.execute(
            "SELECT next_due_at > now() AS ahead, lease_owner FROM worker_jobs WHERE job = 'quota'"
        ).fetchone()
        assert ledger == {"ahead": True, "lease_owner": None}  # and the job stays scheduled
    finally:
        daemon.stop()
        thread.join(10)
        conn.execute("ALTER TABLE tavily_api_keys_away RENAME TO tavily_api_keys")
    assert codes == [0]
    [run] = conn.execute("SELECT status, error FROM worker_job_runs").fetchall()
    assert run["status"] == "failed"
    assert "tavily_api_keys" in run["error"]


def test_losing_the_database_mid_run_fails_the_run_and_the_next_run_reconnects(
    db_url: str, conn: db.Conn
) -> None:
    add_keys(conn, 2)
    first_pass = threading.Event()

    def respond(request: Request) -> Reply:
        if not first_pass.is_set():
            # Cut the worker's session while its HTTP call is in flight.
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'worker:quota'"
                )
            first_pass.set()
        return Reply(200, usage_body(1000, 100))

    with serving(respond) as server:
        settings = make_settings(
            db_url, TAVILY_USAGE_URL=f"{server.url}/usage", QUOTA_CONCURRENCY="1"
        )
        daemon = Daemon(settings, SERVICES["quota"])
        spec = daemon.jobs[0]
        assert daemon.run_job(spec) == "failed"
        assert daemon.run_job(spec) == "success"
        daemon.http.close()

    assert [r["status"] for r in runs(conn)] == ["failed", "success"]
    assert all(state == (900, True) for state in key_states(conn).values())


def test_a_role_that_may_not_create_tables_exits_1_with_the_reason(
    server_url: str, spawn: Spawn
) -> None:
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS worker_readonly WITH (FORCE)")
        admin.execute("DROP ROLE IF EXISTS worker_readonly")
        admin.execute("CREATE ROLE worker_readonly LOGIN")
        admin.execute("CREATE DATABASE worker_readonly")  # owned by the admin, not the role
    try:
        url = make_conninfo(server_url, dbname="worker_readonly", user="worker_readonly")
        worker = spawn("quota", "--once", env={"DATABASE_URL": url})
        assert worker.wait(30) == 1
        [failed] = worker.events("migrate_failed")
        assert "permission denied" in failed["error"]
        assert not worker.events("job_started")
        [line] = worker.stderr().splitlines()  # the event's one human line
        assert line.startswith("worker: error: migrating the database") and "permission" in line
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute("DROP DATABASE worker_readonly WITH (FORCE)")
            admin.execute("DROP ROLE worker_readonly")


def test_a_second_signal_exits_at_once_while_a_write_is_blocked(
    db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    [key] = add_keys(conn, 1)
    with (
        psycopg.connect(db_url) as app,
        serving(lambda r: Reply(200, usage_body(1000, 1))) as server,
    ):
        app.execute("SELECT 1 FROM tavily_api_keys WHERE api_key = %s FOR UPDATE", (key,))
        worker = spawn("quota", env=quota_env(db_url, server, SHUTDOWN_GRACE_SECONDS="30"))
        # The worker's UPDATE now waits on the app's row lock (for up to 2 s).
        wait_until(
            lambda: bool(
                conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'worker:run'"
                    " AND wait_event_type = 'Lock'"
                ).fetchone()
            )
        )
        worker.signal(signal.SIGTERM)
        worker.wait_for("received_shutdown_signal")
        second = worker.signal(signal.SIGTERM)
        code = worker.wait()
        exit_s = time.monotonic() - second
        app.rollback()

    assert code == 1  # forced, not graceful
    assert exit_s < 0.5, f"the second signal took {exit_s:.2f}s"
    assert not worker.events("tavily_quota_updater_stopped")
    assert [r["status"] for r in runs(conn)] == ["running"]  # the next start abandons it
    assert key_states(conn) == {key: (0, False)}
