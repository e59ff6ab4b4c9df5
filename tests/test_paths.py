"""Paths users hit that nothing else exercises: a stop that overruns its grace, a run whose
record cannot be written, receivers answering errors, failing batches, held row locks."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import psycopg
from structlog.testing import capture_logs

from tests.conftest import make_context, make_settings, run_job_pass
from tests.support.fakes import Reply, serving, usage_body
from tests.support.processes import WorkerProcess
from tests.test_daemon import add_keys, quota_env, wait_until
from tests.test_replenish import Producer, add_campaign, add_stock, run_pass
from worker import db
from worker.daemon import Daemon
from worker.jobs import leases
from worker.jobs.base import JobContext
from worker.registry import SERVICES, JobSpec
from worker.schedules import Interval

Spawn = Callable[..., WorkerProcess]


def job(name: str, run: Callable[[JobContext], None]) -> JobSpec:
    return JobSpec(name, "all", run, lambda s: Interval(3600))


def test_a_stop_that_overruns_the_grace_period_exits_1(
    db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    [key] = add_keys(conn, 1)
    with (
        psycopg.connect(db_url) as app,
        serving(lambda r: Reply(200, usage_body(1000, 1))) as server,
    ):
        app.execute("SELECT 1 FROM tavily_api_keys WHERE api_key = %s FOR UPDATE", (key,))
        worker = spawn("quota", env=quota_env(db_url, server, SHUTDOWN_GRACE_SECONDS="0.2"))
        wait_until(  # the worker's UPDATE waits on the app's row lock (for up to 2 s)
            lambda: bool(
                conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'worker:run'"
                    " AND wait_event_type = 'Lock'"
                ).fetchone()
            )
        )
        worker.signal(signal.SIGTERM)
        code = worker.wait()
        app.rollback()

    assert code == 1
    [exceeded] = worker.events("shutdown_grace_exceeded")
    assert exceeded["grace_seconds"] == 0.2
    assert not worker.events("tavily_quota_updater_stopped")


def test_a_run_whose_record_cannot_be_written_is_logged_and_never_raises(
    db_url: str, conn: db.Conn
) -> None:
    def hide_history(ctx: JobContext) -> None:
        ctx.conn.execute("ALTER TABLE worker_job_runs RENAME TO worker_job_runs_hidden")
        ctx.result.ok()

    daemon = Daemon(make_settings(db_url), SERVICES["all"])
    try:
        with capture_logs() as logs:
            outcome = daemon.run_job(job("unrecorded", hide_history))
    finally:
        conn.execute("ALTER TABLE worker_job_runs_hidden RENAME TO worker_job_runs")
        daemon.http.close()

    assert outcome == "success"  # what the run did; only its record is missing
    [failed] = [e for e in logs if e["event"] == "run_record_failed"]
    assert "worker_job_runs" in failed["error"]
    [row] = conn.execute("SELECT status FROM worker_job_runs").fetchall()
    assert row["status"] == "running"  # left for the next claim to mark abandoned


def test_webhook_and_heartbeat_answering_errors_are_logged_and_fail_nothing(
    db_url: str, conn: db.Conn
) -> None:
    def all_fail(ctx: JobContext) -> None:
        ctx.result.fail("item", "http_500")

    with serving(lambda r: Reply(503 if "hook" in r.path else 404, {})) as receiver:
        settings = make_settings(
            db_url,
            ALERT_WEBHOOK_URL=f"{receiver.url}/hook",
            HEARTBEAT_URL=f"{receiver.url}/ping",
        )
        daemon = Daemon(settings, SERVICES["all"])
        with capture_logs() as logs:
            outcome = daemon.run_job(job("failing", all_fail))
        daemon.http.close()
        paths = [r.path for r in receiver.received()]

    assert outcome == "failed"
    assert {row["type"] for row in conn.execute("SELECT type FROM worker_alerts")} == {
        "JOB_FAILURE_RATE_HIGH",
        "JOB_FAILED",
    }
    hooks = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert len(hooks) == 2 and all("503" in e["error"] for e in hooks)
    [beat] = [e for e in logs if e["event"] == "heartbeat_failed"]
    assert "404" in beat["error"] and beat["status"] == "failed"
    assert "/ping/fail" in paths
    [run] = conn.execute("SELECT status FROM worker_job_runs").fetchall()
    assert run["status"] == "failed"


def test_a_failing_lease_recovery_batch_is_counted_and_changes_nothing(conn: db.Conn) -> None:
    campaign = add_campaign(conn, "c", low=0, target=0)
    add_stock(conn, campaign, 3, lease="expired")
    conn.execute(
        "CREATE FUNCTION refuse_release() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'releases refused'; END $$"
    )
    conn.execute(
        "CREATE TRIGGER refuse_release BEFORE UPDATE ON campaign_stock"
        " FOR EACH ROW EXECUTE FUNCTION refuse_release()"
    )
    try:
        ctx = make_context(conn, make_settings(conn.info.dsn), job="lease_recovery")
        with capture_logs() as logs:
            result = run_job_pass(leases.run_once, ctx)
    finally:
        conn.execute("DROP TRIGGER refuse_release ON campaign_stock")
        conn.execute("DROP FUNCTION refuse_release()")

    assert (result.total, result.succeeded, result.failed) == (1, 0, 1)
    assert result.failures[0]["reason"] == "db_error"
    assert "releases refused" in result.failures[0]["error"]
    assert result.details == {"recovered": 0, "batches": 0}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "lease_recovery_batch_failed"
    ]
    leased = conn.execute("SELECT count(*) AS n FROM campaign_stock WHERE leased_until IS NOT NULL")
    assert leased.fetchone() == {"n": 3}


def test_a_campaign_the_app_keeps_locked_fails_after_the_lock_timeout(
    db_url: str, conn: db.Conn
) -> None:
    locked = add_campaign(conn, "locked", low=2, target=3)
    free = add_campaign(conn, "free", low=2, target=3)
    with psycopg.connect(db_url) as app, serving(Producer()) as server:
        app.execute("SELECT 1 FROM campaigns WHERE id = %s FOR UPDATE", (locked,))
        started = time.monotonic()
        result = run_pass(conn, server)
        waited_s = time.monotonic() - started
        app.rollback()

    assert 5 <= waited_s < 15  # CAMPAIGN_LOCK_TIMEOUT_MS, then on to the next campaign
    assert (result.total, result.succeeded, result.failed) == (2, 1, 1)
    [failure] = result.failures
    assert (failure["campaign_id"], failure["reason"]) == (locked, "db_error")
    assert "lock timeout" in failure["error"]
    stocked = conn.execute(
        "SELECT campaign_id, count(*) AS n FROM campaign_stock GROUP BY campaign_id"
    ).fetchall()
    assert stocked == [{"campaign_id": free, "n": 3}]
