"""On time: runs execute on a bounded pool, so one slow job never delays another's start.

Subprocess daemons on a real PostgreSQL, as users run them (README, "Concurrency").
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.jobruns import WAIT_S, jobs_env, runs_of, stop, wait_until, write_jobs
from tests.support.processes import WorkerProcess
from worker import db
from worker.store import ledger

Spawn = Callable[..., WorkerProcess]
TOKEN = "dispatch-token-Qx81vZt4"


def test_a_short_job_runs_on_time_beside_a_long_one(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    # The workload, scaled to a test: `tick` every 2 s beside `slow`, which runs
    # 30 s from the start. One at a time, tick would wait out the whole slow run.
    jobs = write_jobs(
        tmp_path,
        """
[jobs.tick]
schedule = "every 2s"
on_start = "false"
command = ["true"]

[jobs.slow]
schedule = "every 1h"
command = ["sleep", "30"]
""",
    )
    worker = spawn("jobs", env=jobs_env(db_url, jobs))
    worker.wait_for("job_started", job="slow", timeout_s=WAIT_S)
    # Five ended ticks: a tick still running at the stop below ends `interrupted`.
    wait_until(lambda: sum(r["status"] == "success" for r in runs_of(conn, "tick")) >= 5)
    slow = runs_of(conn, "slow")
    assert [r["status"] for r in slow] == ["running"]  # every tick so far ran beside it
    assert stop(worker) == 0

    ticks = [r for r in runs_of(conn, "tick") if r["status"] != "interrupted"]
    assert all(r["status"] == "success" and r["trigger"] == "schedule" for r in ticks), ticks
    assert len(ticks) >= 5
    late = [float(r["late_s"]) for r in ticks]
    assert max(late) < 0.3, late  # wake-ups at the due instant, not on the next whole second
    scheduled = [r["scheduled_for"] for r in ticks]
    assert len(set(scheduled)) == len(scheduled)
    assert all((b - a).total_seconds() == 2 for a, b in itertools.pairwise(scheduled))
    assert worker.wait_for("scheduler_loop_started")["concurrency"] == 4


def test_with_every_slot_busy_the_next_job_waits_for_one_then_runs(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.long_a]
schedule = "every 1h"
command = ["sleep", "3"]

[jobs.long_b]
schedule = "every 1h"
command = ["sleep", "3"]

[jobs.short]
schedule = "every 1h"
command = ["true"]
""",
    )
    worker = spawn("jobs", env=jobs_env(db_url, jobs, WORKER_CONCURRENCY="2"))
    wait_until(lambda: len([r for r in runs_of(conn) if r["status"] == "success"]) == 3)
    saturated = worker.wait_for("dispatch_saturated")
    assert stop(worker) == 0

    rows = {r["job"]: r for r in runs_of(conn)}
    assert len(runs_of(conn)) == 3  # each job once: nothing ran twice
    longs = [rows["long_a"], rows["long_b"]]
    first_free = min(r["finished_at"] for r in longs)
    assert all(r["started_at"] < rows["short"]["started_at"] for r in longs)
    assert rows["short"]["started_at"] >= first_free  # it waited for a slot
    assert (rows["short"]["started_at"] - first_free).total_seconds() < 0.5  # then ran at once
    assert saturated["concurrency"] == 2 and saturated["waiting"] == ["short"]
    assert sorted(saturated["running"]) == ["long_a", "long_b"]
    assert len(worker.events("dispatch_saturated")) == 1  # once per streak


def test_sigterm_interrupts_every_run_in_progress_within_the_grace(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        "".join(
            f'[jobs.sleeper_{i}]\nschedule = "every 1h"\ncommand = ["sleep", "60"]\n\n'
            for i in range(3)
        ),
    )
    worker = spawn("jobs", env=jobs_env(db_url, jobs, SHUTDOWN_GRACE_SECONDS="5"))
    wait_until(lambda: len(worker.events("job_started")) == 3)
    time.sleep(0.5)  # the three commands are past their start

    # `status` says what runs now and how many runs a process takes at once.
    table = spawn("status", env={"DATABASE_URL": db_url, "WORKER_CONCURRENCY": "3"})
    assert table.wait(WAIT_S) == 0
    text = "".join(table.raw)
    assert "running now: sleeper_0, sleeper_1, sleeper_2" in text, text
    assert "runs up to 3 jobs at once (WORKER_CONCURRENCY)" in text, text
    as_json = spawn("status", "--json", env={"DATABASE_URL": db_url})
    assert as_json.wait(WAIT_S) == 0
    body = json.loads("".join(as_json.raw))
    assert body["running"] == ["sleeper_0", "sleeper_1", "sleeper_2"]
    assert body["concurrency"] == 4

    sent = worker.signal(signal.SIGTERM)
    code = worker.wait(WAIT_S)
    exit_s = time.monotonic() - sent

    assert code == 0
    assert exit_s < 5.0, f"stop took {exit_s:.2f}s"
    rows = runs_of(conn)
    assert len(rows) == 3
    assert [r["status"] for r in rows] == ["interrupted"] * 3, rows
    leases = conn.execute("SELECT count(*) AS n FROM worker_jobs WHERE lease_owner IS NOT NULL")
    assert leases.fetchone() == {"n": 0}
    assert worker.wait_for("worker_stopped")["signal"] == "SIGTERM"


def test_replicas_with_concurrency_run_each_occurrence_once(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        "".join(
            f'[jobs.every_{i}]\nschedule = "every 1s"\non_start = "false"\ncommand = ["true"]\n\n'
            for i in range(6)
        ),
    )
    env = jobs_env(db_url, jobs, WORKER_CONCURRENCY="2")
    replicas = [spawn("jobs", env=env) for _ in range(3)]
    for replica in replicas:
        replica.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    time.sleep(8)  # a fixed window of occurrences for three replicas to contend over
    assert [stop(replica) for replica in replicas] == [0, 0, 0]

    rows = [r for r in runs_of(conn) if r["status"] == "success"]
    assert all(r["trigger"] == "schedule" for r in rows)
    by_job: dict[str, list[Any]] = {}
    for row in rows:
        by_job.setdefault(row["job"], []).append(row["scheduled_for"])
    assert sorted(by_job) == [f"every_{i}" for i in range(6)]
    for job, due in by_job.items():
        assert len(due) == len(set(due)), f"{job}: an occurrence ran twice"
        steps = {(b - a).total_seconds() for a, b in itertools.pairwise(due)}
        assert steps == {1.0}, f"{job}: an occurrence was skipped or repeated: {due}"
    assert len({r["pid"] for r in rows}) > 1  # the replicas shared the work


def test_a_run_now_through_this_processs_own_api_starts_at_once(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        '[jobs.hourly]\nschedule = "every 1h"\non_start = "false"\ncommand = ["true"]\n',
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = jobs_env(db_url, jobs, WORKER_HTTP_PORT=str(port), WORKER_HTTP_TOKEN=TOKEN)
    worker = spawn("jobs", env=env)
    worker.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    time.sleep(0.5)  # past the loop's first read: the next one would be its 5 s poll
    asked = time.monotonic()
    answer = httpx.post(
        f"http://127.0.0.1:{port}/api/jobs/hourly/run",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 202
    wait_until(lambda: len(runs_of(conn, "hourly")) == 1, timeout_s=4.0)
    started_s = time.monotonic() - asked

    # The process lists itself, alive, with what it runs; the dashboard shows the same.
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    processes = httpx.get(f"http://127.0.0.1:{port}/api/processes", headers=bearer).json()
    [me] = processes["processes"]
    assert (me["service"], me["pid"], me["alive"], me["concurrency"]) == (
        "jobs",
        worker.proc.pid,
        True,
        4,
    )
    page = httpx.get(f"http://127.0.0.1:{port}/", headers=bearer).text
    assert f'data-process="{me["id"]}"' in page and "alive" in page
    assert stop(worker) == 0
    assert conn.execute("SELECT count(*) AS n FROM worker_processes").fetchone() == {"n": 0}
    assert started_s < 2.0, f"started {started_s:.2f}s after the request"
    assert runs_of(conn, "hourly")[0]["trigger"] == "manual"


def test_the_loops_read_costs_the_same_with_ten_thousand_jobs(conn: db.Conn) -> None:
    # 10,000 jobs of the service, none due: the read is two index probes, not a scan.
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at)"
        " SELECT 'bulk_' || i, 'jobs', 'every 1h', now() + make_interval(secs => 60 + i)"
        "   FROM generate_series(1, 10000) AS i"
    )
    conn.execute("ANALYZE worker_jobs")
    plan = conn.execute(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + db.query("ledger.due_jobs"),
        {"services": ["jobs"], "limit": 20, "beat": False, "process_id": 0, "running": "[]"},
    ).fetchone()
    assert plan is not None
    top = plan["QUERY PLAN"][0]["Plan"]
    scans = [
        node["Relation Name"]
        for node in plan_nodes(top)
        if node["Node Type"] == "Seq Scan" and node["Actual Loops"] > 0
    ]
    assert "worker_jobs" not in scans, json.dumps(plan)
    assert top["Shared Hit Blocks"] + top.get("Shared Read Blocks", 0) < 30, top

    due = ledger.due_jobs(conn, ["jobs"], 20)
    assert due.rows == []
    assert due.next_wake is not None
    assert 59 < (due.next_wake - due.now).total_seconds() < 62


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A plan node and every node below it."""
    return [node, *(below for child in node.get("Plans", []) for below in plan_nodes(child))]
