"""The watchdog: what no process sees on its own (ARCHITECTURE.md, "Watchdog").

Its rules as plain functions first; then one check at a time on a real PostgreSQL (rows
back-dated to make them late, several checks racing); then subprocess daemons as users run
them: a service stopped while others stay up, a run held far past its usual duration.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from tests.conftest import make_settings
from tests.support.databases import own_database
from tests.support.fakes import Reply, serving, usage_body
from tests.support.jobruns import WAIT_S, jobs_env, runs_of, stop, wait_until, write_jobs
from tests.support.processes import WorkerProcess
from worker import claims, db, http_client
from worker.dispatch import REQUEST_POLL_S
from worker.logs import get_logger
from worker.schedules import Interval
from worker.store import ledger, processes
from worker.vocab import Claim, Mode
from worker.watchdog import (
    Watchdog,
    changes,
    overdue_grace_s,
    percentile,
    slow_threshold_ms,
)

Spawn = Callable[..., WorkerProcess]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SLACK_S = 2.5  # a busy shared machine: bounds stay bounds, with this much room
STATS_LAG_S = 11.0  # a backend reports counts held back by its once-a-second limit within 10 s


# --- the rules, without a database -----------------------------------------------------------


def test_the_grace_is_a_tenth_of_the_period_at_least_a_minute_unless_set() -> None:
    assert overdue_grace_s(3600) == 360  # hourly: six minutes
    assert overdue_grace_s(24 * 3600) == 8640  # daily: 2.4 hours
    assert overdue_grace_s(300) == 60  # every 5 minutes: the minute
    assert overdue_grace_s(None) == 60  # a row no process of this version registered yet
    assert overdue_grace_s(24 * 3600, override_s=2) == 2  # OVERDUE_GRACE_SECONDS wins


def test_the_slow_threshold_is_three_times_the_p95_of_the_last_twenty_successes() -> None:
    assert percentile([1, 2, 3, 4, 5], 0.5) == 3
    assert percentile([10, 20], 0.95) == pytest.approx(19.5)  # interpolated, as percentile_cont
    assert slow_threshold_ms([2000] * 9) is None  # fewer than 10 runs: no judgement
    assert slow_threshold_ms([2000] * 10) == 6000
    # Only the newest 20 count: the 21st, slow as it was, is history.
    assert slow_threshold_ms([2000] * 20 + [90_000]) == 6000
    assert slow_threshold_ms([100, 120, 110, 90, 100, 105, 95, 100, 130, 98]) == 1000  # the floor
    durations = list(range(1000, 3000, 100))  # 20 runs, 1.0 s to 2.9 s
    assert slow_threshold_ms(durations) == pytest.approx(3 * 2805)


def slow_row(elapsed_ms: int, durations: list[int]) -> dict[str, Any]:
    return {
        "action": "open",
        "type": "RUN_SLOW",
        "subject": "7",
        "job": "export",
        "run_id": 7,
        "since": NOW,
        "facts": {"elapsed_ms": elapsed_ms, "durations_ms": durations},
    }


def test_a_run_in_progress_becomes_slow_only_past_its_threshold() -> None:
    usual = [2000] * 12
    assert changes([slow_row(6000, usual)]) == []  # at the threshold: not yet
    [change] = changes([slow_row(6500, usual)])
    assert (change.action, change.type, change.subject, change.run_id) == (
        "open",
        "RUN_SLOW",
        "7",
        7,
    )
    assert change.alert is not None
    assert change.alert.message == (
        "Job export: run 7 has been running for 6.5 s, over 3 x the 95th percentile (2.0 s) "
        "of its last 12 successful runs (rule RUN_SLOW)."
    )
    assert change.alert.metadata["threshold_s"] == 6.0
    assert changes([slow_row(600_000, [2000] * 9)]) == []  # too little history to judge


def test_overdue_messages_say_when_it_was_due_and_which_grace_applied() -> None:
    row = {
        "action": "open",
        "type": "JOB_OVERDUE",
        "subject": "quota",
        "job": "quota",
        "run_id": None,
        "since": NOW,
        "facts": {
            "service": "quota",
            "schedule": "every 1h",
            "period_s": 3600,
            "next_due_at": NOW.isoformat(),
            "late_s": 400.2,
        },
    }
    [change] = changes([row])
    assert change.alert is not None
    assert change.alert.message == (
        "Job quota is overdue: it was due at 2026-12-01T12:00:00+00:00 and no live process "
        "has claimed it for 400 s (grace 360 s). Is its service quota down, or saturated? "
        "(rule OVERDUE)"
    )
    [overridden] = changes([row], override_s=30)
    assert overridden.alert is not None and overridden.alert.metadata["grace_s"] == 30


# --- one check at a time, on a real PostgreSQL ------------------------------------------------


@contextmanager
def watchdogs(db_url: str, count: int = 1, **env: str) -> Iterator[list[Watchdog]]:
    """Watchdogs as `count` processes would hold them, with short bounds by default."""
    settings = make_settings(db_url, **{"SERVICE_DOWN_SECONDS": "3", **env})
    with http_client.build_http(2) as http:
        made = [Watchdog(settings, http, get_logger()) for _ in range(count)]
        try:
            yield made
        finally:
            for watchdog in made:
                watchdog.close()


def alert_rows(conn: db.Conn, *types: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, type, level, job, message, metadata, created_at FROM worker_alerts"
        " WHERE %(types)s::text[] = '{}' OR type = ANY(%(types)s) ORDER BY id",
        {"types": list(types)},
    ).fetchall()


def register(conn: db.Conn, job: str, service: str = "quota", every_s: int = 3600) -> None:
    claims.register(conn, job, service, Interval(every_s))


def due_ago(conn: db.Conn, job: str, seconds: float) -> datetime:
    row = conn.execute(
        "UPDATE worker_jobs SET next_due_at = now() - make_interval(secs => %s) WHERE job = %s"
        " RETURNING next_due_at",
        (seconds, job),
    ).fetchone()
    assert row is not None
    return row["next_due_at"]  # type: ignore[no-any-return]


def live_process(conn: db.Conn, service: str, pid: int = 4000, silent_s: float = 0) -> int:
    """A process of `service` on host `peer`, last seen `silent_s` ago (0: live)."""
    row = conn.execute(
        "INSERT INTO worker_processes (host, pid, service, version, concurrency, last_seen_at)"
        " VALUES ('peer', %s, %s, 'test', 4, now() - make_interval(secs => %s)) RETURNING id",
        (pid, service, silent_s),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def test_paused_and_running_jobs_are_never_overdue_and_the_grace_follows_the_period(
    conn: db.Conn, db_url: str
) -> None:
    live_process(conn, "quota")  # its service is up: only the jobs are judged here
    for job in ("hourly_late", "hourly_in_grace", "minutely_late", "unknown_period"):
        register(conn, job, every_s=60 if job.startswith("minutely") else 3600)
    for job in ("paused", "running"):
        register(conn, job)
    due_ago(conn, "hourly_late", 400)  # grace 360 s: overdue
    due_ago(conn, "hourly_in_grace", 300)  # still within its six minutes
    due_ago(conn, "minutely_late", 70)  # grace: the minute
    conn.execute("UPDATE worker_jobs SET period_s = NULL WHERE job = 'unknown_period'")
    due_ago(conn, "unknown_period", 70)
    ledger.set_paused(conn, "paused", True)
    due_ago(conn, "paused", 86_400)  # a day late, and never counts
    due_ago(conn, "running", 86_400)
    conn.execute(
        "UPDATE worker_jobs SET lease_owner = 'peer:1', lease_until = now() + interval '1 minute'"
        " WHERE job = 'running'"
    )

    with watchdogs(db_url) as [watchdog]:
        raised = watchdog.check(conn)
        assert watchdog.check(conn) == []  # the streaks are open: nothing twice
    assert sorted(a["job"] for a in raised) == ["hourly_late", "minutely_late", "unknown_period"]
    assert {(a["type"], a["level"]) for a in raised} == {("JOB_OVERDUE", "WARNING")}
    grace = {a["job"]: a["metadata"]["grace_s"] for a in raised}
    assert grace == {"hourly_late": 360, "minutely_late": 60, "unknown_period": 60}
    assert alert_rows(conn) == sorted(raised, key=lambda a: a["id"])  # rows first, these only

    with watchdogs(db_url, OVERDUE_GRACE_SECONDS="250") as [watchdog]:
        [also] = watchdog.check(conn)  # one grace for every job when set
    assert also["job"] == "hourly_in_grace"


def test_an_overdue_job_raises_one_alert_however_many_processes_check_at_once(
    conn: db.Conn, db_url: str
) -> None:
    register(conn, "quota")
    processes.deregister(conn, processes.register(conn, "quota", "test", 4))  # it had one
    conn.execute("UPDATE worker_services SET last_live_at = now() - interval '1 minute'")
    missed = due_ago(conn, "quota", 3600)

    def check_all_at_once(dogs: list[Watchdog]) -> list[dict[str, Any]]:
        """Every process scans before any of them writes (the worst interleaving), then all
        write at once: the streak's key alone decides who raises."""
        own = [psycopg.connect(db_url, autocommit=True, row_factory=dict_row) for _ in dogs]
        seen = [dog.observe(c) for dog, c in zip(dogs, own, strict=True)]
        start, raised, errors = threading.Barrier(len(dogs)), [], []  # type: ignore[var-annotated]

        def write(dog: Watchdog, c: db.Conn, wanted: list[Any]) -> None:
            start.wait()
            try:
                raised.extend(dog.apply(c, wanted))
            except psycopg.Error as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [
            threading.Thread(target=write, args=args) for args in zip(dogs, own, seen, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        for c in own:
            c.close()
        assert not errors, errors
        assert all(len(wanted) == 2 for wanted in seen), seen  # each saw both streaks change
        return raised

    with watchdogs(db_url, count=8) as dogs:
        opened = check_all_at_once(dogs)
        assert sorted(a["type"] for a in opened) == ["JOB_OVERDUE", "SERVICE_DOWN"]
        claim = claims.claim(conn, "quota", Mode.SCHEDULED, 30.0)
        assert isinstance(claim, Claim)
        live_process(conn, "quota")
        closed = check_all_at_once(dogs)

    assert sorted(a["type"] for a in closed) == ["JOB_RECOVERED", "SERVICE_RECOVERED"]
    assert len(alert_rows(conn)) == 4
    [recovered] = [a for a in closed if a["type"] == "JOB_RECOVERED"]
    overdue = next(a for a in opened if a["type"] == "JOB_OVERDUE")
    metadata = dict(recovered["metadata"])
    assert datetime.fromisoformat(metadata.pop("next_due_at")) == claim.next_due_at
    assert metadata == {
        "rule": "OVERDUE",
        "cleared": "JOB_OVERDUE",
        "cleared_alert_id": overdue["id"],
        "run_id": claim.run.id,
        "overdue_s": pytest.approx(3600, abs=30),
    }
    assert f"due at {missed.isoformat(timespec='seconds')}" in recovered["message"]
    assert conn.execute("SELECT count(*) AS n FROM worker_streaks").fetchone() == {"n": 0}


def test_a_scan_gone_stale_before_its_write_opens_nothing(conn: db.Conn, db_url: str) -> None:
    live_process(conn, "quota")
    register(conn, "quota")
    due_ago(conn, "quota", 3600)
    insert_runs(conn, "export", [500] * 10)
    slow = running(conn, "export", 60)
    with watchdogs(db_url) as [watchdog]:
        seen = watchdog.observe(conn)
        assert sorted(c.type for c in seen) == ["JOB_OVERDUE", "RUN_SLOW"]
        # Meanwhile a live process claims the job, and the slow run ends.
        claim = claims.claim(conn, "quota", Mode.SCHEDULED, 30.0)
        assert isinstance(claim, Claim)
        conn.execute("UPDATE worker_job_runs SET status = 'success' WHERE id = %s", (slow,))
        assert watchdog.apply(conn, seen) == []
    assert alert_rows(conn) == []


def test_a_service_is_down_only_if_it_had_processes_and_an_all_process_serves_it(
    conn: db.Conn, db_url: str
) -> None:
    for job in ("quota", "cleanup_tokens", "cleanup_sessions", "replenish"):
        register(conn, job, service=job.split("_")[0])
    register(conn, "lease_recovery", service="replenish")
    ledger.set_paused(conn, "replenish", True)
    ledger.set_paused(conn, "lease_recovery", True)
    # `replenish` had a process, but every one of its jobs is paused: nothing of it is
    # expected to run. `cleanup`'s was killed a minute ago: its row stays, silent.
    processes.deregister(conn, processes.register(conn, "replenish", "test", 4))
    quota = processes.register(conn, "quota", "test", 4)  # live
    live_process(conn, "cleanup", pid=4001, silent_s=60)

    with watchdogs(db_url) as [watchdog]:
        [down] = watchdog.check(conn)
        assert down["type"] == "SERVICE_DOWN" and down["job"] is None
        assert down["metadata"]["jobs"] == ["cleanup_sessions", "cleanup_tokens"]
        assert down["metadata"]["down_s"] == pytest.approx(60, abs=5)
        assert "its jobs are not running: cleanup_sessions, cleanup_tokens." in down["message"]

        processes.deregister(conn, quota)  # a clean stop: down 3 s from now, not before
        assert watchdog.check(conn) == []
        conn.execute("UPDATE worker_services SET last_live_at = now() - interval '4 seconds'")
        [quota_down] = watchdog.check(conn)
        assert quota_down["metadata"]["service"] == "quota"

        live_process(conn, "all")  # an `all` process runs every service's jobs
        back = watchdog.check(conn)
    assert sorted((a["type"], a["metadata"]["service"]) for a in back) == [
        ("SERVICE_RECOVERED", "cleanup"),
        ("SERVICE_RECOVERED", "quota"),
    ]
    assert all(a["metadata"]["processes"] == ["all peer:4000"] for a in back), back


def test_a_service_that_never_had_a_process_is_never_down(conn: db.Conn, db_url: str) -> None:
    register(conn, "quota")  # registered by `worker quota --once` from cron, say
    conn.execute("UPDATE worker_jobs SET next_due_at = now() + interval '1 hour'")
    with watchdogs(db_url) as [watchdog]:
        assert watchdog.check(conn) == []


def insert_runs(conn: db.Conn, job: str, durations_ms: list[int]) -> None:
    conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at, finished_at,"
        "                             duration_ms)"
        " SELECT %s, 'schedule', 'success', 'peer', 1, now() - make_interval(hours => 24 - i::int),"
        "        now() - make_interval(hours => 24 - i::int), d"
        "   FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(d, i)",
        (job, durations_ms),
    )


def running(conn: db.Conn, job: str, for_s: float) -> int:
    row = conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at)"
        " VALUES (%s, 'schedule', 'running', 'peer', 1, now() - make_interval(secs => %s))"
        " RETURNING id",
        (job, for_s),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def test_a_slow_run_raises_once_while_it_runs_and_its_end_closes_quietly(
    conn: db.Conn, db_url: str
) -> None:
    insert_runs(conn, "export", [1000, 1100, 1200, 900, 1000, 1050, 980, 1010, 1190, 1000])
    insert_runs(conn, "young", [100] * 9)  # nine successes: too few to judge
    slow, fine = running(conn, "export", 10), running(conn, "export", 2)
    untested = running(conn, "young", 600)
    with watchdogs(db_url, count=2) as [first, second]:
        [alert] = first.check(conn)
        assert second.check(conn) == []  # once per run, whoever checks
        conn.execute(
            "UPDATE worker_job_runs SET status = 'success', duration_ms = 10500 WHERE id = %s",
            (slow,),
        )
        assert first.check(conn) == []  # the end of a slow run raises nothing...
    assert conn.execute("SELECT count(*) AS n FROM worker_streaks").fetchone() == {"n": 0}
    assert (alert["type"], alert["level"], alert["job"]) == ("RUN_SLOW", "WARNING", "export")
    assert alert["metadata"]["run_id"] == slow
    assert alert["metadata"]["p95_s"] == pytest.approx(1.19, abs=0.01)
    assert 10 <= alert["metadata"]["elapsed_s"] < 10 + SLACK_S
    assert [r["status"] for r in runs_of(conn) if r["id"] in (fine, untested)] == ["running"] * 2


def test_the_sql_percentile_and_the_rules_agree(conn: db.Conn) -> None:
    values = [1000, 1100, 1200, 900, 1000, 1050, 980, 1010, 1190, 1000, 4000, 12]
    row = conn.execute(
        "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY v) AS p FROM unnest(%s::int[]) v",
        (values,),
    ).fetchone()
    assert row is not None and percentile(values, 0.95) == pytest.approx(row["p"])


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(below for child in node.get("Plans", []) for below in plan_nodes(child))]


def test_an_idle_check_reads_no_job_and_no_run_with_ten_thousand_of_each(
    conn: db.Conn, db_url: str
) -> None:
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at, period_s)"
        " SELECT 'bulk_' || i, 'jobs', 'every 1h', now() + make_interval(secs => 60 + i), 3600"
        "   FROM generate_series(1, 10000) AS i"
    )
    conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, duration_ms)"
        " SELECT 'bulk_' || i, 'schedule', 'success', 'peer', 1, 1000"
        "   FROM generate_series(1, 10000) AS i"
    )
    live_process(conn, "jobs")
    conn.execute("ANALYZE")
    with watchdogs(db_url) as [watchdog]:
        bounds = watchdog._bounds  # what the check binds
    params = {**asdict(bounds), "least_grace_s": bounds.least_grace_s}
    plan = conn.execute(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + db.query("watchdog.scan"), params
    ).fetchone()
    assert plan is not None
    top = plan["QUERY PLAN"][0]["Plan"]
    scanned = [
        node["Relation Name"]
        for node in plan_nodes(top)
        if node["Node Type"] == "Seq Scan" and node["Actual Loops"] > 0
    ]
    assert not {"worker_jobs", "worker_job_runs"} & set(scanned), json.dumps(plan)
    assert plan["QUERY PLAN"][0]["Execution Time"] < 50, json.dumps(plan)


# --- daemons as users run them -----------------------------------------------------------


def alert_of(conn: db.Conn, type: str) -> dict[str, Any] | None:
    rows = alert_rows(conn, type)
    return rows[0] if rows else None


def beat_since(conn: db.Conn, moment: datetime, count: int) -> bool:
    """Every one of `count` live processes beat (and so checked) after `moment`."""
    row = conn.execute(
        "SELECT count(*) AS n FROM worker_processes WHERE last_seen_at > %s", (moment,)
    ).fetchone()
    return row is not None and row["n"] >= count


def test_a_stopped_service_is_overdue_then_down_then_back_with_one_alert_each(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.quota]
schedule = "every 2s"

[jobs.report]
schedule = "every 1h"
command = ["true"]
""",
    )
    conn.execute(
        "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota)"
        " VALUES ('tvly-watchdog-key-0001', 1000, 1000)"
    )

    def answer(request: Any) -> Reply:
        return Reply(200, usage_body(1000, 10) if request.path == "/usage" else {})

    with ExitStack() as stack:
        fake = stack.enter_context(serving(answer))
        env = jobs_env(
            db_url,
            jobs,
            TAVILY_USAGE_URL=f"{fake.url}/usage",
            ALERT_WEBHOOK_URL=f"{fake.url}/hook",
            OVERDUE_GRACE_SECONDS="2",
            SERVICE_DOWN_SECONDS="3",
        )
        quota = spawn("quota", env=env)
        wait_until(lambda: any(r["status"] == "success" for r in runs_of(conn, "quota")))
        watchers = [spawn("jobs", env=env) for _ in range(3)]
        for watcher in watchers:
            watcher.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
        assert stop(quota) == 0

        overdue = wait_until(lambda: alert_of(conn, "JOB_OVERDUE"))
        down = wait_until(lambda: alert_of(conn, "SERVICE_DOWN"))
        wait_until(lambda: beat_since(conn, max(overdue["created_at"], down["created_at"]), 3))

        restarted = spawn("quota", env=env)
        recovered = wait_until(lambda: alert_of(conn, "JOB_RECOVERED"))
        back = wait_until(lambda: alert_of(conn, "SERVICE_RECOVERED"))
        wait_until(lambda: beat_since(conn, max(recovered["created_at"], back["created_at"]), 4))
        assert [stop(worker) for worker in (restarted, *watchers)] == [0] * 4
        hooks = [r.json() for r in fake.received("POST", "/hook")]

    # Overdue within its grace and one poll of the watchers; down after SERVICE_DOWN_SECONDS.
    due = datetime.fromisoformat(overdue["metadata"]["next_due_at"])
    overdue_after_s = (overdue["created_at"] - due).total_seconds()
    assert 2 < overdue_after_s < 2 + REQUEST_POLL_S + SLACK_S, overdue_after_s
    last_live = datetime.fromisoformat(down["metadata"]["last_live_at"])
    down_after_s = (down["created_at"] - last_live).total_seconds()
    assert 3 < down_after_s < 3 + REQUEST_POLL_S + SLACK_S, down_after_s
    assert (overdue["job"], overdue["metadata"]["service"]) == ("quota", "quota")
    assert (down["level"], down["metadata"]["jobs"]) == ("ERROR", ["quota"])
    # Back once the restarted service took the occurrence: one of its runs is named.
    [named] = [r for r in runs_of(conn, "quota") if r["id"] == recovered["metadata"]["run_id"]]
    assert named["pid"] == restarted.proc.pid and named["started_at"] > due
    assert recovered["metadata"]["cleared_alert_id"] == overdue["id"]
    host = db.process_identity()[0]
    assert back["metadata"]["processes"] == [f"quota {host}:{restarted.proc.pid}"]

    # Four live processes watched the whole time: one alert each, one webhook each.
    types = ["JOB_OVERDUE", "JOB_RECOVERED", "SERVICE_DOWN", "SERVICE_RECOVERED"]
    assert sorted(a["type"] for a in alert_rows(conn)) == types
    assert sorted(h["type"] for h in hooks) == types
    [down_hook] = [h for h in hooks if h["type"] == "SERVICE_DOWN"]
    assert down_hook["metadata"]["jobs"] == ["quota"] and down_hook["id"] == down["id"]


def test_a_run_held_four_times_its_usual_duration_is_slow_while_it_runs(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    release = tmp_path / "release"
    script = tmp_path / "export.sh"  # at least 2 s, then until released (30 s at most)
    script.write_text(
        f"sleep 2\nfor i in $(seq 300); do [ -e {release} ] && break; sleep 0.1; done\n"
        "echo exported\n"
    )
    jobs = write_jobs(
        tmp_path, f'[jobs.export]\nschedule = "every 1h"\ncommand = ["sh", "{script}"]\n'
    )
    insert_runs(conn, "export", [500] * 12)  # its usual: half a second; slow past 1.5 s
    worker = spawn("jobs", env=jobs_env(db_url, jobs))
    try:
        slow = wait_until(lambda: alert_of(conn, "RUN_SLOW"))
        [run] = [r for r in runs_of(conn, "export") if r["status"] == "running"]
        wait_until(lambda: beat_since(conn, slow["created_at"], 1))  # checked again since
    finally:
        release.touch()
    wait_until(lambda: runs_of(conn, "export")[-1]["status"] == "success")
    assert stop(worker) == 0

    finished = runs_of(conn, "export")[-1]
    assert finished["id"] == run["id"] == slow["metadata"]["run_id"]
    assert finished["output"] == "exported\n"
    raised_after_s = (slow["created_at"] - run["started_at"]).total_seconds()
    assert 1.5 < raised_after_s < 1.5 + REQUEST_POLL_S + SLACK_S, raised_after_s
    assert slow["created_at"] < finished["finished_at"]  # while it ran
    assert slow["metadata"]["threshold_s"] == 1.5
    assert [a["type"] for a in alert_rows(conn)] == ["RUN_SLOW"]  # once, though checked again
    assert (finished["finished_at"] - run["started_at"]).total_seconds() > 4 * 0.5


def test_the_scan_shares_the_heartbeats_commit_one_commit_a_poll_for_an_idle_process(
    tmp_path: Path, server_url: str, spawn: Spawn
) -> None:
    # A database of its own, so that the server's count of its commits is this process's.
    name = "worker_watch_cost"
    with own_database(server_url, name) as url:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            db.migrate(conn)
        jobs = write_jobs(
            tmp_path,
            '[jobs.report]\nschedule = "every 1h"\non_start = "false"\ncommand = ["true"]\n',
        )
        worker = spawn("jobs", env=jobs_env(url, jobs))
        worker.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
        time.sleep(STATS_LAG_S)  # the start-up's own commits counted before the window
        window_s = 9 * REQUEST_POLL_S
        before = commits_of(server_url, name)
        time.sleep(window_s)
        committed = commits_of(server_url, name) - before
        assert stop(worker) == 0

    # Nine polls, each one read that beats and scans in one transaction: about nine commits
    # (a poll at either edge of the window, counts reported late and autovacuum's visits
    # are the slack). A scan committed on its own makes about eighteen.
    assert 6 <= committed <= 14, committed
    assert not worker.events("watchdog_failed")


def commits_of(server_url: str, name: str) -> int:
    """The server's count of the commits made in database `name`, once the last poll's are
    reported: a backend reports its counts when it goes idle, a second apart at most."""
    time.sleep(1.5)
    with psycopg.connect(server_url, autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None
    return int(row["xact_commit"])


def test_a_scan_that_fails_costs_neither_the_heartbeat_nor_a_run(
    tmp_path: Path, db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    # A role that may use every table but the streaks': every scan fails; reads must not.
    role = "worker_without_streaks"
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        conn.execute(f"DROP OWNED BY {role}")  # left by an interrupted run of this test
        conn.execute(f"DROP ROLE {role}")
    conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'streakless-Qa71'")
    conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")  # a start checks its migrations
    conn.execute(f"REVOKE ALL ON worker_streaks FROM {role}")
    url = make_conninfo(db_url, user=role, password="streakless-Qa71")
    try:
        jobs = write_jobs(tmp_path, '[jobs.tick]\nschedule = "every 2s"\ncommand = ["true"]\n')
        worker = spawn("jobs", env=jobs_env(url, jobs), expect_noise=True)
        worker.wait_for("watchdog_failed", timeout_s=WAIT_S)
        failed_at = conn.execute("SELECT now() AS now").fetchone()["now"]  # type: ignore[index]
        wait_until(lambda: beat_since(conn, failed_at, 1))  # the heart beats on...
        wait_until(  # ...and the job runs on
            lambda: any(
                r["status"] == "success" and r["started_at"] > failed_at
                for r in runs_of(conn, "tick")
            )
        )
        assert stop(worker) == 0
    finally:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
    [first, *_] = worker.events("watchdog_failed")
    assert "worker_streaks" in first["error"], first
