"""Jobs no process runs any more are retired (hidden, history kept), never while their
service has no live process; `worker forget` removes one for good; `pause`, `resume` and
`run --request` act on the ledger's row (ARCHITECTURE.md, "Retired jobs")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import make_settings
from tests.support.jobruns import WAIT_S, job_row, jobs_env, runs_of, stop, write_jobs
from tests.support.processes import WorkerProcess
from worker import claims, db, http_client, status
from worker.logs import get_logger
from worker.schedules import Interval
from worker.store import ledger, processes
from worker.watchdog import Watchdog

Spawn = Callable[..., WorkerProcess]


def register(conn: db.Conn, job: str, service: str = "quota", source: str = "system") -> None:
    claims.register(conn, job, service, Interval(60), source=source)


def live(conn: db.Conn, service: str, jobs: list[str] | None, pid: int, silent_s: int = 0) -> int:
    row = conn.execute(
        "INSERT INTO worker_processes (host, pid, service, version, concurrency, jobs,"
        " last_seen_at) VALUES ('peer', %s, %s, 'test', 4, %s,"
        " now() - make_interval(secs => %s)) RETURNING id",
        (pid, service, jobs, silent_s),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def retire(conn: db.Conn) -> list[str]:
    return sorted(r["job"] for r in ledger.retire_undeclared(conn, processes.DEAD_AFTER_S))


def listed(conn: db.Conn) -> list[str]:
    return [job.job for job in status.gather(conn).jobs]


def test_a_job_is_retired_once_every_live_process_of_its_service_runs_without_it(
    conn: db.Conn,
) -> None:
    for job in ("kept", "removed"):
        register(conn, job)
    conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid)"
        " VALUES ('removed', 'manual', 'failed', 'peer', 1)"
    )
    assert retire(conn) == []  # no process at all: overdue, not gone
    old = live(conn, "quota", ["kept", "removed"], pid=1)
    live(conn, "quota", ["kept"], pid=2)  # the new release, started beside the old one
    assert retire(conn) == []  # the old process still runs it
    processes.deregister(conn, old)
    live(conn, "quota", None, pid=3, silent_s=60)  # a dead older-version process: no say
    assert retire(conn) == ["removed"]
    assert retire(conn) == []  # once

    assert listed(conn) == ["kept"]  # status' verdict, the dashboard, /api/jobs, /metrics
    [page] = status.gather(conn, job="removed").jobs  # its own page and history stay
    assert page.last_status == "failed"
    assert len(runs_of(conn, "removed")) == 1

    register(conn, "removed")  # declared again: back
    assert job_row(conn, "removed")["retired_at"] is None
    assert listed(conn) == ["kept", "removed"]


def test_only_declared_and_built_in_jobs_of_a_served_service_retire(conn: db.Conn) -> None:
    register(conn, "orphan", service="replenish")  # its service has no live process
    register(conn, "by_all", service="cleanup")
    register(conn, "older", service="jobs", source="file")
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at, source, definition)"
        " VALUES ('made_at_run_time', 'jobs', 'every 1m', now(), 'runtime', '{}')"
    )
    live(conn, "all", ["something_else"], pid=1)  # an `all` process serves every service...
    live(conn, "jobs", None, pid=2)  # ...and an older version's runs all of `jobs`
    assert retire(conn) == ["by_all", "orphan"]
    assert job_row(conn, "older")["retired_at"] is None
    assert job_row(conn, "made_at_run_time")["retired_at"] is None  # deleted through the API


def test_the_watchdog_never_calls_a_retired_job_overdue(conn: db.Conn, db_url: str) -> None:
    for job in ("kept", "removed"):
        register(conn, job)
    conn.execute(  # overdue before it was retired: that streak ends with it
        "INSERT INTO worker_streaks (type, subject, since, alert_id)"
        " VALUES ('JOB_OVERDUE', 'removed', now() - interval '1 hour', 1)"
    )
    live(conn, "quota", ["kept"], pid=1)
    assert retire(conn) == ["removed"]
    assert conn.execute("SELECT subject FROM worker_streaks").fetchall() == []
    conn.execute("UPDATE worker_jobs SET next_due_at = now() - interval '1 hour'")
    settings = make_settings(db_url)
    with http_client.build_http(2) as http:
        watchdog = Watchdog(settings, http, get_logger())
        try:
            raised = watchdog.check(conn)
        finally:
            watchdog.close()
    assert [(a["type"], a["job"]) for a in raised] == [("JOB_OVERDUE", "kept")]


JOBS_AB = """
[jobs.stays]
schedule = "every 1h"
command = ["true"]

[jobs.goes]
schedule = "every 1h"
command = ["true"]
"""
JOBS_A = JOBS_AB.split("[jobs.goes]")[0]


def started(spawn: Spawn, env: dict[str, str]) -> WorkerProcess:
    worker = spawn("jobs", env=env)
    worker.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    return worker


def one_shot(spawn: Spawn, env: dict[str, str], *args: str) -> tuple[int, WorkerProcess]:
    worker = spawn(*args, env=env)
    return worker.wait(WAIT_S), worker


def test_a_job_removed_from_the_file_retires_with_the_deploy_and_can_be_forgotten(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    both = write_jobs(tmp_path, JOBS_AB)
    (tmp_path / "new").mkdir()
    one = write_jobs(tmp_path / "new", JOBS_A)
    env_both, env_one = jobs_env(conn.info.dsn, both), jobs_env(conn.info.dsn, one)

    first = started(spawn, env_both)
    assert stop(first) == 0
    assert job_row(conn, "goes")["retired_at"] is None  # no live process: it is overdue

    old = started(spawn, env_both)
    new = started(spawn, env_one)  # a rolling deploy: the old process is still up
    assert job_row(conn, "goes")["retired_at"] is None
    code, refused = one_shot(spawn, env_one, "forget", "goes")
    assert code == 1
    [line] = refused.stderr().splitlines()
    assert line.startswith("worker: error: goes is still run by live process jobs ")
    assert f":{old.pid}" in line and str(both) in line

    assert stop(old) == 0  # the last process that ran it stops
    assert job_row(conn, "goes")["retired_at"] is not None
    code, report = one_shot(spawn, env_one, "status", "--json")
    assert [job["job"] for job in json.loads("".join(report.raw))["jobs"]] == ["stays"]
    assert code == 0, report.stderr()  # the removed job is no verdict of anyone's

    history = len(runs_of(conn, "goes"))  # its start-up runs
    assert history >= 1
    code, forgot = one_shot(spawn, env_one, "forget", "goes")
    assert code == 0
    assert forgot.stderr().splitlines() == [
        f"forgot goes: its ledger row is gone; its {history} runs and 0 alerts are kept as"
        " history (--delete-history deletes them)"
    ]
    assert conn.execute("SELECT 1 FROM worker_jobs WHERE job = 'goes'").fetchone() is None
    assert len(runs_of(conn, "goes")) == history
    [event] = forgot.events("job_forgotten")
    assert event["runs_kept"] == history and event["runs_deleted"] == 0
    assert stop(new) == 0


def test_forget_with_its_history_and_its_refusals(conn: db.Conn, spawn: Spawn) -> None:
    env = {"DATABASE_URL": conn.info.dsn}
    register(conn, "gone_job", service="cleanup")
    conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid)"
        " VALUES ('gone_job', 'manual', 'success', 'peer', 1);"
        "INSERT INTO worker_alerts (type, level, job, message)"
        " VALUES ('JOB_FAILED', 'ERROR', 'gone_job', 'x')"
    )
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at, source, definition)"
        " VALUES ('made_at_run_time', 'jobs', 'every 1m', now(), 'runtime', '{}')"
    )
    code, forgot = one_shot(spawn, env, "forget", "gone_job", "--delete-history")
    assert code == 0
    assert forgot.stderr().splitlines() == [
        "forgot gone_job and its history: 1 runs and 1 alerts deleted"
    ]
    assert runs_of(conn, "gone_job") == []
    assert conn.execute("SELECT 1 FROM worker_alerts WHERE job = 'gone_job'").fetchone() is None

    for job, says in [
        ("gone_job", "no job 'gone_job' in the ledger: nothing to forget"),
        ("made_at_run_time", "made_at_run_time is a runtime job: delete it with `worker job"),
    ]:
        code, refused = one_shot(spawn, env, "forget", job)
        assert code == 1
        [line] = refused.stderr().splitlines()
        assert line.startswith(f"worker: error: {says}"), line


def ledger_pause(conn: db.Conn, job: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT paused, paused_at, resumed_at FROM worker_jobs WHERE job = %s", (job,)
    ).fetchone()
    assert row is not None
    return dict(row)


def test_pause_and_resume_act_on_any_ledger_job_and_say_what_they_did(
    conn: db.Conn, spawn: Spawn
) -> None:
    env = {"DATABASE_URL": conn.info.dsn}
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at, source, definition)"
        " VALUES ('made_at_run_time', 'jobs', 'every 1m', now() + interval '1 minute',"
        " 'runtime', '{}')"
    )
    said = []
    for verb in ("pause", "pause", "resume", "resume"):
        code, process = one_shot(spawn, env, verb, "made_at_run_time")
        assert code == 0, process.stderr()
        said.append(process.stderr().strip())
        if verb == "pause":
            assert ledger_pause(conn, "made_at_run_time")["paused"] is True
    assert said[0] == (
        "paused made_at_run_time: no replica starts it until `worker resume made_at_run_time`"
    )
    assert said[1].startswith("made_at_run_time is already paused (since ")
    assert said[1].endswith(" UTC): nothing changed")
    assert said[2] == "resumed made_at_run_time: it runs again from its next due time"
    assert said[3] == "made_at_run_time is not paused: nothing changed"
    actions = conn.execute(
        "SELECT action FROM worker_job_changes WHERE job = 'made_at_run_time' ORDER BY id"
    ).fetchall()
    assert [a["action"] for a in actions] == ["pause", "resume"]  # no-ops record nothing

    code, unknown = one_shot(spawn, env, "pause", "no_such_job")
    assert code == 2
    [line] = unknown.stderr().splitlines()
    assert line.startswith("worker: error: JOB: unknown job 'no_such_job'; known jobs: quota")
    assert line.endswith("; nor is it in the ledger")


def test_a_resume_starts_the_staleness_clock_again(conn: db.Conn, spawn: Spawn) -> None:
    env = {"DATABASE_URL": conn.info.dsn}
    register(conn, "quota")
    conn.execute(
        "UPDATE worker_jobs SET next_due_at = now() + interval '30 seconds' WHERE job = 'quota';"
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at, finished_at)"
        " VALUES ('quota', 'schedule', 'success', 'peer', 1, now() - interval '6 minutes',"
        " now() - interval '6 minutes')"
    )
    code, paused = one_shot(spawn, env, "pause", "quota")  # paused five minutes ago, say
    assert code == 0
    paused.stderr()
    conn.execute("UPDATE worker_jobs SET paused_at = now() - interval '5 minutes'")
    code, resumed = one_shot(spawn, env, "resume", "quota")
    assert code == 0
    resumed.stderr()
    assert ledger_pause(conn, "quota")["resumed_at"] is not None
    code, report = one_shot(spawn, env, "status", "--json")
    body = json.loads("".join(report.raw))
    assert [job["health"] for job in body["jobs"]] == ["ok"]  # every 1m, last success 6 m ago
    assert code == 0, report.stderr()


def requested(conn: db.Conn, job: str) -> bool:
    """A run of `job` is requested (False too when the ledger has no row for it)."""
    row = conn.execute("SELECT run_requested_at FROM worker_jobs WHERE job = %s", (job,)).fetchone()
    return row is not None and row["run_requested_at"] is not None


def test_a_requested_run_no_live_process_serves_is_refused_naming_the_service(
    conn: db.Conn, spawn: Spawn
) -> None:
    env = {"DATABASE_URL": conn.info.dsn}
    live(conn, "replenish", ["replenish"], pid=1)  # another service is up; quota's is not
    code, refused = one_shot(spawn, env, "run", "quota", "--request")
    assert code == 1
    [line] = refused.stderr().splitlines()
    assert line == (
        "worker: error: quota: no live process of the quota service serves this job: start "
        "`worker quota` (or `worker all`), then ask again"
    )
    assert not requested(conn, "quota")  # nothing waits for ever

    live(conn, "quota", ["quota_other"], pid=2)  # up, but started without quota
    code, refused = one_shot(spawn, env, "run", "quota", "--request")
    assert code == 1
    assert refused.stderr().splitlines() == [
        "worker: error: quota: no live process of the quota service runs quota: the 1 live "
        "started without it in their jobs file; restart one with it declared, then ask again"
    ]
    assert not requested(conn, "quota")

    live(conn, "all", None, pid=3)  # an older version's row: it runs every job of its service
    code, asked = one_shot(spawn, env, "run", "quota", "--request")
    assert code == 0, asked.stderr()
    assert job_row(conn, "quota")["run_requested_at"] is not None
