"""Replicas and connection poolers: every occurrence runs once, wherever and however reached.

The pooler tests put a real PgBouncer in transaction pooling mode (two server connections)
between the worker and PostgreSQL: no session state, prepared statement or LISTEN may be
relied on there (README, "Scheduling": connection poolers; ARCHITECTURE.md, invariant 6).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from tests.pooler import PgBouncer, pgbouncer
from tests.support.fakes import Reply, serving, usage_body
from tests.support.jobruns import runs_of
from tests.support.processes import WorkerProcess
from tests.test_daemon import add_keys, quota_env, wait_until
from worker import db

Spawn = Callable[..., WorkerProcess]

FRESH_DB = "worker_pooled_fresh"
EVERY_S = 2  # the jobs file's quota schedule in the replica test
# Replicas start this far apart. Not exactly 1 s: the third would then start right at the
# first due time, inside the race `test_a_replica_starting_with_on_start_false_...` exposes.
STAGGER_S = 1.25
WINDOW_S = 12.0  # how long the replicas run, from the first one's start
REQUEST_PICKUP_S = 5.0  # README "Scheduling": a requested run is picked up within 5 s
PICKUP_SLACK_S = 1.0  # process exit, log pipe and claim on a busy machine


@pytest.fixture(scope="module")
def bouncer(server_url: str) -> Iterator[PgBouncer]:
    """One PgBouncer (transaction pooling, 2 server connections) for this module's tests."""
    with pgbouncer(server_url) as running:
        yield running


@pytest.fixture
def pooled_url(db_url: str, bouncer: PgBouncer) -> str:
    """The (emptied) test database, reached through PgBouncer."""
    return bouncer.url(conninfo_to_dict(db_url)["dbname"])


def served_transactions(bouncer: PgBouncer, dbname: str) -> int:
    """PgBouncer's own count of transactions it carried for `dbname` (SHOW STATS)."""
    with psycopg.connect(
        bouncer.url("pgbouncer"), autocommit=True, prepare_threshold=None, row_factory=dict_row
    ) as admin:
        stats = admin.execute("SHOW STATS").fetchall()
    return sum(int(row["total_xact_count"]) for row in stats if row["database"] == dbname)


def log_text(worker: WorkerProcess) -> str:
    return "".join(worker.raw) + worker.stderr()


# -- through PgBouncer in transaction pooling mode --------------------------------------


def test_migrate_through_the_pooler_creates_every_table_once(
    server_url: str, bouncer: PgBouncer, spawn: Spawn
) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {FRESH_DB} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {FRESH_DB}")
    try:
        env = {"DATABASE_URL": bouncer.url(FRESH_DB)}
        # Two at once, as replicas starting together do: the lock is transaction-scoped.
        migrations = [spawn("migrate", "--app-tables", env=env) for _ in range(2)]
        codes = [m.wait(60) for m in migrations]
        direct = make_conninfo(server_url, dbname=FRESH_DB)
        with psycopg.connect(direct, autocommit=True) as conn:
            recorded = [r[0] for r in conn.execute("SELECT version FROM worker_schema_migrations")]
            tables = {
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            }
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {FRESH_DB} WITH (FORCE)")

    assert codes == [0, 0], [log_text(m) for m in migrations]
    applied = [name for m in migrations for name in m.wait_for("migrate_completed")["applied"]]
    assert sorted(applied) == sorted(recorded)  # each migration applied exactly once
    assert recorded, "no migration was recorded"
    assert {"worker_jobs", "worker_job_runs", "worker_alerts", "tavily_api_keys"} <= tables
    assert served_transactions(bouncer, FRESH_DB) > 0  # it really went through PgBouncer


def test_three_once_replicas_through_the_pooler_make_one_run_calling_each_key_once(
    conn: db.Conn, pooled_url: str, bouncer: PgBouncer, spawn: Spawn
) -> None:
    keys = add_keys(conn, 3)
    dbname = conninfo_to_dict(pooled_url)["dbname"]
    before = served_transactions(bouncer, dbname)
    # Every call waits for `release`, so the winner's run overlaps the other replicas' claims.
    with serving(lambda r: Reply(200, usage_body(1000, 100), hang=True)) as server:
        env = quota_env(pooled_url, server, HTTP_TIMEOUT_SECONDS="20")
        replicas = [spawn("quota", "--once", env=env) for _ in range(3)]
        wait_until(lambda: len(server.requests) >= len(keys), timeout_s=30)
        wait_until(lambda: sum(r.proc.poll() is not None for r in replicas) >= 2, timeout_s=30)
        calls_while_held = sorted(r.bearer or "" for r in server.requests)
        server.release.set()
        codes = [r.wait(30) for r in replicas]

    assert codes == [0, 0, 0], [log_text(r) for r in replicas]
    [winner] = [r for r in replicas if r.events("job_started")]
    losers = [r for r in replicas if r is not winner]
    assert all(r.events("job_claimed_elsewhere") for r in losers), [r.events() for r in losers]
    assert calls_while_held == sorted(keys)
    assert sorted(r.bearer or "" for r in server.requests) == sorted(keys)  # once each
    rows = runs_of(conn)
    assert [(r["status"], r["trigger"], r["succeeded"], r["failed"]) for r in rows] == [
        ("success", "manual", 3, 0)
    ]
    assert rows[0]["pid"] == winner.proc.pid
    assert served_transactions(bouncer, dbname) > before


def test_ten_sequential_once_passes_through_the_pooler_all_succeed(
    conn: db.Conn, pooled_url: str, spawn: Spawn
) -> None:
    # Processes after the first reuse the pooler's two server connections: a statement
    # prepared server-side by one would collide with the next (`_pg3_0` already exists).
    # psycopg prepares a query on its 5th execution: 8 keys make 8 writes per connection.
    keys = add_keys(conn, 8)
    passes = 10
    with serving(lambda r: Reply(200, usage_body(1000, 100))) as server:
        env = quota_env(pooled_url, server)
        workers = []
        for _ in range(passes):
            worker = spawn("quota", "--once", env=env)
            workers.append(worker)
            assert worker.wait(60) == 0, log_text(worker)
        answered = len(server.requests)

    rows = runs_of(conn)
    assert [(r["status"], r["succeeded"], r["failed"]) for r in rows] == [
        ("success", len(keys), 0)
    ] * passes
    assert answered == passes * len(keys)
    assert Counter(r.bearer for r in server.requests) == {key: passes for key in keys}
    output = "".join(log_text(w) for w in workers)
    assert "prepared statement" not in output
    assert not [e for w in workers for e in w.events() if e.get("level") == "error"]


# -- several daemons on one schedule ----------------------------------------------------


def _pause_until(moment: float) -> None:
    # The scenario's own timeline (replicas start a second apart and run for a fixed
    # window), not a wait for something to happen.
    time.sleep(max(0.0, moment - time.monotonic()))


def test_three_daemons_started_apart_run_each_occurrence_once_keeping_its_phase(
    conn: db.Conn, db_url: str, spawn: Spawn, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(f'[jobs.quota]\nschedule = "every {EVERY_S}s"\non_start = false\n')
    [key] = add_keys(conn, 1)
    with serving(lambda r: Reply(200, usage_body(1000, 100))) as server:
        env = quota_env(db_url, server, WORKER_JOBS_FILE=str(jobs_file))
        started = time.monotonic()
        daemons: list[WorkerProcess] = []
        for i in range(3):
            _pause_until(started + i * STAGGER_S)
            daemons.append(spawn("quota", env=env))
        scheduled = [d.wait_for("job_scheduled", job="quota") for d in daemons]
        _pause_until(started + WINDOW_S)
        stopped_at = db_now(conn)
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
        codes = [d.wait() for d in daemons]
        calls = [r.bearer for r in server.requests]

    assert codes == [0, 0, 0], [log_text(d) for d in daemons]
    assert {s["schedule"] for s in scheduled} == {f"every {EVERY_S}s"}
    phase = min(datetime.fromisoformat(s["next_due_at"]) for s in scheduled)
    rows = runs_of(conn)
    assert {r["trigger"] for r in rows} == {"schedule"}, rows
    due = [r["scheduled_for"] for r in rows]
    assert len(due) == len(set(due)), f"an occurrence ran twice: {sorted(due)}"
    due.sort()
    step = timedelta(seconds=EVERY_S)
    assert [(d - phase) % step for d in due] == [timedelta(0)] * len(due), (phase, due)
    assert [b - a for a, b in pairwise(due)] == [step] * (len(due) - 1), due
    occurrences = (stopped_at - phase) // step + 1
    assert abs(len(due) - occurrences) <= 1, (len(due), occurrences, phase, stopped_at)
    # Every run but one cut short by the stop itself succeeded and called the key once.
    statuses = Counter(r["status"] for r in rows)
    assert statuses["success"] >= len(rows) - 1 and statuses["interrupted"] <= 1, statuses
    assert statuses["success"] <= len(calls) <= len(rows) and set(calls) <= {key}
    by_replica = Counter(r["pid"] for r in rows)
    assert set(by_replica) <= {d.proc.pid for d in daemons}, by_replica


def test_a_replica_starting_with_on_start_false_keeps_an_occurrence_a_live_replica_will_run(
    conn: db.Conn, db_url: str, spawn: Spawn, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(f'[jobs.quota]\nschedule = "every {EVERY_S}s"\non_start = false\n')
    add_keys(conn, 1)
    # The first run's call hangs until released: the run outlasts the next due time.
    with serving(lambda r: Reply(200, usage_body(1000, 100), hang=True)) as server:
        env = quota_env(db_url, server, WORKER_JOBS_FILE=str(jobs_file), HTTP_TIMEOUT_SECONDS="20")
        first = spawn("quota", env=env)
        wait_until(lambda: len(server.requests) >= 1, timeout_s=15)
        wait_until(lambda: next_due_passed(conn), timeout_s=15)  # due while the run goes on
        late = spawn("quota", env=env)
        late.wait_for("scheduler_loop_started")
        server.release.set()
        wait_until(lambda: finished_runs(conn) >= 3, timeout_s=20)
        for daemon in (first, late):
            daemon.signal(signal.SIGTERM)
        codes = [d.wait() for d in (first, late)]

    assert codes == [0, 0]
    due = sorted(r["scheduled_for"] for r in runs_of(conn))
    step = timedelta(seconds=EVERY_S)
    # Nothing was missed while nothing ran: the occurrence due during the first run runs
    # once it ends (coalescing nothing), instead of being skipped by the late replica.
    assert due[1] - due[0] == step, due
    assert not late.events("occurrences_skipped"), late.events("occurrences_skipped")


def db_now(conn: db.Conn) -> datetime:
    row = conn.execute("SELECT now() AS now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


def next_due_passed(conn: db.Conn) -> bool:
    row = conn.execute(
        "SELECT next_due_at <= now() AS passed, lease_until > now() AS leased"
        " FROM worker_jobs WHERE job = 'quota'"
    ).fetchone()
    return bool(row and row["passed"] and row["leased"])


def finished_runs(conn: db.Conn) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM worker_job_runs WHERE status <> 'running'"
    ).fetchone()
    return int(row["n"]) if row else 0


def test_a_requested_run_is_picked_up_by_the_running_daemon_within_five_seconds(
    conn: db.Conn, db_url: str, spawn: Spawn
) -> None:
    [key] = add_keys(conn, 1)
    with serving(lambda r: Reply(200, usage_body(1000, 100))) as server:
        env = quota_env(db_url, server, RUN_ON_START="false")
        daemon = spawn("quota", env=env)
        daemon.wait_for("scheduler_loop_started")
        request = spawn("run", "quota", "--request", env=env)
        assert request.proc.wait(30) == 0
        requested = time.monotonic()
        started = daemon.wait_for("job_started", timeout_s=15, trigger="manual")
        pickup_s = time.monotonic() - requested
        daemon.wait_for("job_finished")
        daemon.signal(signal.SIGTERM)
        code = daemon.wait()
        calls = [r.bearer for r in server.requests]

    assert code == 0
    request.wait_for("run_requested", job="quota")
    assert pickup_s <= REQUEST_PICKUP_S + PICKUP_SLACK_S, f"picked up after {pickup_s:.2f}s"
    assert started["scheduled_for"] is None
    rows = runs_of(conn)
    assert [(r["trigger"], r["status"], r["pid"]) for r in rows] == [
        ("manual", "success", daemon.proc.pid)
    ]
    assert calls == [key]
    ledger = conn.execute(
        "SELECT run_requested_at, lease_owner, next_due_at > now() + interval '50 minutes'"
        " AS hourly FROM worker_jobs WHERE job = 'quota'"
    ).fetchone()
    assert ledger == {"run_requested_at": None, "lease_owner": None, "hourly": True}
