"""Alerts and heartbeats: run-level rules and their streaks, webhook formats, failing receivers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.conftest import make_settings
from tests.support.fakes import Reply, dripped, serving
from worker import alerts, db, http_client, registry
from worker.daemon import Daemon
from worker.jobs.base import JobContext
from worker.registry import JobSpec
from worker.schedules import Interval

HOOK_SECRET = "T0KEN-hook-c0ffee"  # chat webhooks carry their credential in the URL path
PING_SECRET = "5f1e-ping-uuid"


def make_job(*passes: Callable[[JobContext], None], name: str = "flaky") -> JobSpec:
    """A job whose n-th run plays `passes[n]` (the last one repeats)."""
    runs: list[int] = []

    def run(ctx: JobContext) -> None:
        runs.append(1)
        passes[min(len(runs), len(passes)) - 1](ctx)

    return JobSpec(name, "all", run, lambda s: Interval(3600))


def all_fail(ctx: JobContext) -> None:
    for i in range(4):
        ctx.result.fail(f"item-{i}", "http_500")


def all_good(ctx: JobContext) -> None:
    for _ in range(4):
        ctx.result.ok()


def one_in_four_fails(ctx: JobContext) -> None:
    all_good(ctx)
    ctx.result.fail("item-x", "http_500")  # 1 of 5: 20%, not above the 0.2 default


def crash(ctx: JobContext) -> None:
    raise RuntimeError("boom")


def alert_rows(conn: db.Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, type, level, job, message, metadata FROM worker_alerts ORDER BY id"
    ).fetchall()


def closed_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/hook/{HOOK_SECRET}"


def test_three_failing_runs_raise_one_alert_per_rule_then_one_recovery(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    job = make_job(all_fail, all_fail, all_fail, all_good, all_good)
    with serving() as hook:
        env = {"ALERT_WEBHOOK_URL": f"{hook.url}/hook/{HOOK_SECRET}"}
        # A fresh daemon per run: the streak lives in worker_alerts, not in process memory.
        statuses = [daemon_for(**env).run_job(job) for _ in range(3)]
        fired = alert_rows(conn)
        statuses += [daemon_for(**env).run_job(job) for _ in range(2)]
        posted = [r.json()["type"] for r in hook.received("POST", f"/hook/{HOOK_SECRET}")]

    assert statuses == ["failed"] * 3 + ["success"] * 2
    assert [(a["type"], a["level"], a["metadata"]["rule"]) for a in fired] == [
        ("JOB_FAILURE_RATE_HIGH", "WARNING", "FAILURE_RATE"),
        ("JOB_FAILED", "ERROR", "RUN_FAILED"),
    ]
    first_run = conn.execute("SELECT min(id) AS id FROM worker_job_runs").fetchone()
    assert first_run is not None
    assert all(a["metadata"]["run_id"] == first_run["id"] for a in fired)
    assert "4 of 4 items failed (100%)" in fired[0]["message"]
    assert f"run {first_run['id']}" in fired[1]["message"]
    recoveries = alert_rows(conn)[2:]
    assert [(a["type"], a["level"], a["metadata"]["rule"]) for a in recoveries] == [
        ("JOB_RECOVERED", "INFO", "FAILURE_RATE"),
        ("JOB_RECOVERED", "INFO", "RUN_FAILED"),
    ]
    assert posted == [
        "JOB_FAILURE_RATE_HIGH",
        "JOB_FAILED",
        "JOB_RECOVERED",
        "JOB_RECOVERED",
    ]


def test_a_failed_declared_job_raises_one_alert_and_its_next_success_one_recovery(
    tmp_path: Path, conn: db.Conn, db_url: str, daemon_for: Callable[..., Daemon]
) -> None:
    # A declared job's run is one item: it failed or it did not. JOB_FAILED says so; a
    # failure rate of 1 of 1 would only say it twice.
    flag = tmp_path / "works"
    jobs = tmp_path / "worker.toml"
    jobs.write_text(
        f'[jobs.export]\nschedule = "every 1h"\ncommand = ["test", "-e", "{flag}"]\n',
        encoding="utf-8",
    )
    spec = registry.resolve(make_settings(db_url, WORKER_JOBS_FILE=str(jobs)))["export"]
    with serving() as hook:
        env = {"WORKER_JOBS_FILE": str(jobs), "ALERT_WEBHOOK_URL": f"{hook.url}/hook"}
        assert daemon_for(**env).run_job(spec) == "failed"
        failed = alert_rows(conn)
        assert daemon_for(**env).run_job(spec) == "failed"  # the streak goes on: nothing
        flag.touch()
        assert daemon_for(**env).run_job(spec) == "success"
        posted = [r.json()["type"] for r in hook.received("POST", "/hook")]

    [run] = conn.execute("SELECT id, total, failed FROM worker_job_runs ORDER BY id LIMIT 1")
    assert (run["total"], run["failed"]) == (1, 1)
    assert [(a["type"], a["metadata"]["rule"], a["metadata"]["run_id"]) for a in failed] == [
        ("JOB_FAILED", "RUN_FAILED", run["id"])
    ]
    assert [(a["type"], a["metadata"]["rule"]) for a in alert_rows(conn)[1:]] == [
        ("JOB_RECOVERED", "RUN_FAILED")
    ]
    assert posted == ["JOB_FAILED", "JOB_RECOVERED"]


def test_interrupted_runs_neither_fire_nor_clear(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    def interrupted(ctx: JobContext) -> None:
        all_good(ctx)
        stopping.stop("SIGTERM")

    job = make_job(crash, interrupted, crash, interrupted, all_good)
    assert daemon_for().run_job(job) == "failed"
    stopping = daemon_for()
    assert stopping.run_job(job) == "interrupted"
    assert [a["type"] for a in alert_rows(conn)] == ["JOB_FAILED"]  # a crash has no rate

    assert daemon_for().run_job(job) == "failed"  # the streak goes on
    stopping = daemon_for()
    assert stopping.run_job(job) == "interrupted"
    assert daemon_for().run_job(job) == "success"
    assert [a["type"] for a in alert_rows(conn)] == ["JOB_FAILED", "JOB_RECOVERED"]


def test_failure_rate_and_slow_run_thresholds(conn: db.Conn, db_url: str) -> None:
    settings = make_settings(db_url, ALERT_FAILURE_RATE="0.25", ALERT_SLOW_RUN_SECONDS="600")

    def judge(run_id: int, status: str, total: int, failed: int, duration_ms: int) -> list[str]:
        outcome = alerts.RunOutcome("quota", run_id, status, total, failed, duration_ms)
        ids = alerts.evaluate_run(conn, settings, outcome)
        rows = conn.execute(
            "SELECT type, message FROM worker_alerts WHERE id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall()
        return [f"{r['type']}: {r['message']}" for r in rows]

    assert judge(1, "partial", 4, 1, 1000) == []  # 25% is not above 25%
    assert judge(2, "partial", 10, 3, 600_000) == [
        "JOB_FAILURE_RATE_HIGH: Job quota: 3 of 10 items failed (30%) in run 2, "
        "above ALERT_FAILURE_RATE 25% (rule FAILURE_RATE)."
    ]
    assert judge(3, "partial", 10, 3, 600_500) == [
        "JOB_SLOW: Job quota: run 3 took 600.5s, above ALERT_SLOW_RUN_SECONDS 600s (rule SLOW_RUN)."
    ]
    assert judge(4, "success", 0, 0, 700_000) == []  # both streaks still firing: no repeat
    assert judge(5, "success", 10, 0, 1000) == [
        "JOB_RECOVERED: Job quota recovered: run 5 (success) clears JOB_FAILURE_RATE_HIGH "
        "(rule FAILURE_RATE).",
        "JOB_RECOVERED: Job quota recovered: run 5 (success) clears JOB_SLOW (rule SLOW_RUN).",
    ]
    # Streaks are per job: another job starts with nothing firing.
    other = alerts.RunOutcome("cleanup_tokens", 6, "partial", 10, 9, 1000)
    assert len(alerts.evaluate_run(conn, settings, other)) == 1


def _text_of(fmt: str, body: dict[str, Any]) -> str:
    """The text a chat tool shows, read from its documented payload shape (and only that)."""
    if fmt == "slack":
        assert isinstance(body["text"], str)
        assert body["blocks"][0]["type"] == "header"
        return str(body["text"])
    if fmt == "discord":
        assert set(body) == {"content"}
        return str(body["content"])
    if fmt in ("dingtalk", "wecom"):
        assert set(body) == {"msgtype", "text"} and body["msgtype"] == "text"
        assert set(body["text"]) == {"content"}
        return str(body["text"]["content"])
    assert fmt == "feishu"
    assert set(body) == {"msg_type", "content"} and body["msg_type"] == "text"
    assert set(body["content"]) == {"text"}
    return str(body["content"]["text"])


@pytest.mark.parametrize("fmt", ["slack", "discord", "dingtalk", "feishu", "wecom"])
def test_chat_formats_have_their_documented_shape(conn: db.Conn, fmt: str) -> None:
    with serving() as hook, http_client.build_http(2) as http:
        alert_id = alerts.raise_alert(
            conn,
            type="JOB_FAILED",
            level="ERROR",
            job="quota",
            message="Job quota: run 7 failed, 4 of 4 items failed (rule RUN_FAILED).",
            webhook_url=f"{hook.url}/hook/{HOOK_SECRET}",
            webhook_format=fmt,
            http=http,
        )
        (request,) = hook.received("POST", f"/hook/{HOOK_SECRET}")

    assert request.headers["content-type"] == "application/json"
    text = _text_of(fmt, request.json())
    assert text.startswith("[ERROR] JOB_FAILED [quota]\n")
    assert "Job quota: run 7 failed" in text
    assert HOOK_SECRET not in request.body.decode()
    row = conn.execute("SELECT message FROM worker_alerts WHERE id = %s", (alert_id,)).fetchone()
    assert row == {"message": "Job quota: run 7 failed, 4 of 4 items failed (rule RUN_FAILED)."}


def test_json_format_carries_the_alert_fields(conn: db.Conn) -> None:
    with serving() as hook, http_client.build_http(2) as http:
        alert_id = alerts.raise_alert(
            conn,
            type="JOB_SLOW",
            level="WARNING",
            job="cleanup_tokens",
            message="slow",
            metadata={"rule": "SLOW_RUN", "run_id": 3},
            webhook_url=f"{hook.url}/hook",
            webhook_format="json",
            http=http,
        )
        (request,) = hook.received("POST", "/hook")

    body = request.json()
    row = conn.execute("SELECT created_at FROM worker_alerts WHERE id = %s", (alert_id,)).fetchone()
    assert row is not None
    assert body == {
        "id": alert_id,
        "type": "JOB_SLOW",
        "level": "WARNING",
        "job": "cleanup_tokens",
        "message": "slow",
        "metadata": {"rule": "SLOW_RUN", "run_id": 3},
        "created_at": row["created_at"].isoformat(),
    }


@pytest.mark.parametrize(("fmt", "limit"), [("discord", 2000), ("wecom", 2048)])
def test_long_messages_fit_the_services_limits(conn: db.Conn, fmt: str, limit: int) -> None:
    message = "库存补充失败 campaign " * 400  # multi-byte text, far over either limit
    with serving() as hook, http_client.build_http(2) as http:
        alerts.raise_alert(
            conn,
            type="STOCK_REPLENISH_FAILED",
            level="ERROR",
            job="replenish",
            message=message,
            webhook_url=f"{hook.url}/hook",
            webhook_format=fmt,
            http=http,
        )
        (request,) = hook.received("POST", "/hook")

    text = _text_of(fmt, request.json())
    size = len(text) if fmt == "discord" else len(text.encode())
    assert limit - 10 < size <= limit


def test_a_dead_webhook_receiver_never_affects_the_job(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    with serving() as ping, structlog.testing.capture_logs() as logs:
        daemon = daemon_for(ALERT_WEBHOOK_URL=closed_url(), HEARTBEAT_URL=f"{ping.url}/p")
        status = daemon.run_job(make_job(all_fail))
        pings = [r.path for r in ping.received("GET")]

    assert status == "failed"
    run = conn.execute("SELECT status, failed, finished_at FROM worker_job_runs").fetchone()
    assert run is not None and (run["status"], run["failed"]) == ("failed", 4)
    assert [a["type"] for a in alert_rows(conn)] == ["JOB_FAILURE_RATE_HIGH", "JOB_FAILED"]
    failures = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert [e["error"] for e in failures] == ["ConnectError", "ConnectError"]
    assert pings == ["/p/fail"]  # the lifecycle went on to the heartbeat
    assert HOOK_SECRET not in repr(logs)


def test_a_slow_webhook_receiver_times_out_and_the_job_goes_on(
    conn: db.Conn, daemon_for: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_client, "NOTIFY_TIMEOUT_S", 0.2)
    with serving(lambda r: Reply(hang=True)) as hook, structlog.testing.capture_logs() as logs:
        daemon = daemon_for(ALERT_WEBHOOK_URL=f"{hook.url}/hook/{HOOK_SECRET}")
        started = time.monotonic()
        status = daemon.run_job(make_job(crash))
        elapsed_s = time.monotonic() - started
        attempts = len(hook.received("POST"))

    assert status == "failed"
    assert elapsed_s < 3  # two attempts of 0.2 s, not a hung job
    assert attempts == 2  # one retry
    (failure,) = [e for e in logs if e["event"] == "alert_webhook_failed"]
    assert failure["error"] == "ReadTimeout"
    assert [a["type"] for a in alert_rows(conn)] == ["JOB_FAILED"]
    run = conn.execute("SELECT status, finished_at IS NOT NULL AS done FROM worker_job_runs")
    assert run.fetchone() == {"status": "failed", "done": True}


def test_heartbeat_pings_after_success_and_partial_fail_after_failed(
    daemon_for: Callable[..., Daemon],
) -> None:
    def partial(ctx: JobContext) -> None:
        ctx.result.ok()
        ctx.result.fail("item-1", "http_500")

    job = make_job(all_good, partial, crash)
    with serving() as receiver:
        daemon = daemon_for(HEARTBEAT_URL=receiver.url)  # the bare URL: path "/"
        statuses = [daemon.run_job(job) for _ in range(3)]
        seen = [(r.method, r.path) for r in receiver.received()]

    assert statuses == ["success", "partial", "failed"]
    assert seen == [("GET", "/"), ("GET", "/"), ("GET", "/fail")]


def test_heartbeat_keeps_the_check_path_and_skips_interrupted_runs(
    daemon_for: Callable[..., Daemon],
) -> None:
    def interrupted(ctx: JobContext) -> None:
        all_good(ctx)
        daemon.stop("SIGTERM")

    with serving() as receiver:
        url = f"{receiver.url}/ping/{PING_SECRET}"
        assert daemon_for(HEARTBEAT_URL=url).run_job(make_job(all_fail)) == "failed"
        daemon = daemon_for(HEARTBEAT_URL=url)
        assert daemon.run_job(make_job(interrupted)) == "interrupted"
        seen = [r.path for r in receiver.received("GET")]

    assert seen == [f"/ping/{PING_SECRET}/fail"]


def test_a_dead_heartbeat_receiver_is_logged_without_its_url(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    with structlog.testing.capture_logs() as logs:
        daemon = daemon_for(HEARTBEAT_URL=closed_url())
        status = daemon.run_job(make_job(all_good))

    assert status == "success"
    (failure,) = [e for e in logs if e["event"] == "heartbeat_failed"]
    assert (failure["error"], failure["status"]) == ("ConnectError", "success")
    assert HOOK_SECRET not in repr(logs)
    row = conn.execute("SELECT status FROM worker_job_runs").fetchone()
    assert row == {"status": "success"}


def test_alert_rule_errors_never_fail_the_run(
    conn: db.Conn, daemon_for: Callable[..., Daemon]
) -> None:
    # The alert's row cannot be written (the run's own record reads the rules' state from
    # worker_alerts, so the table itself stays).
    conn.execute(
        "CREATE FUNCTION refuse_alerts() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'no alerts today'; END$$"
    )
    conn.execute(
        "CREATE TRIGGER refuse_alerts BEFORE INSERT ON worker_alerts"
        " FOR EACH ROW EXECUTE FUNCTION refuse_alerts()"
    )
    try:
        with serving() as ping, structlog.testing.capture_logs() as logs:
            daemon = daemon_for(HEARTBEAT_URL=ping.url)
            status = daemon.run_job(make_job(all_fail))
            pings = [r.path for r in ping.received("GET")]
    finally:
        conn.execute("DROP TRIGGER refuse_alerts ON worker_alerts")
        conn.execute("DROP FUNCTION refuse_alerts()")

    assert status == "failed"
    (failure,) = [e for e in logs if e["event"] == "alert_rules_failed"]
    assert failure["error"] == "RaiseException"
    assert pings == ["/fail"]
    row = conn.execute("SELECT status, failed FROM worker_job_runs").fetchone()
    assert row == {"status": "failed", "failed": 4}


def test_slack_markup_in_messages_stays_text(conn: db.Conn) -> None:
    with serving() as hook, http_client.build_http(2) as http:
        alerts.raise_alert(
            conn,
            type="STOCK_REPLENISH_FAILED",
            level="WARNING",
            job="replenish",
            message="- <!channel> & Co (7): http_500",
            webhook_url=f"{hook.url}/hook",
            webhook_format="slack",
            http=http,
        )
        (request,) = hook.received("POST", "/hook")

    body = request.json()
    assert body["blocks"][1]["text"]["text"] == "- &lt;!channel&gt; &amp; Co (7): http_500"
    assert "<!channel>" not in request.body.decode()


def test_dripping_receivers_cost_their_budget_and_no_more(
    conn: db.Conn, daemon_for: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_client, "NOTIFY_TIMEOUT_S", 0.5)
    drip = Reply(200, stream=dripped(b"{" + b" " * 200 + b"}"), length=202, interval_s=0.2)
    with serving(lambda r: drip) as hook, structlog.testing.capture_logs() as logs:
        daemon = daemon_for(ALERT_WEBHOOK_URL=f"{hook.url}/hook", HEARTBEAT_URL=f"{hook.url}/p")
        job = make_job(all_fail)
        timings = []
        for _ in range(2):
            started = time.monotonic()
            assert daemon.run_job(job) == "failed"
            timings.append(time.monotonic() - started)
        hooks, pings = len(hook.received("POST")), len(hook.received("GET"))

    # Run 1: two alerts and a heartbeat; run 2 (the streak goes on): the heartbeat alone.
    # Each delivery: two attempts of 0.5 s at most, however slowly the receiver drips.
    assert (hooks, pings) == (4, 4)
    assert timings[0] < 3 * 2 * 0.5 + 1.5 and timings[1] < 2 * 0.5 + 1.0, timings
    errors = [(e["event"], e["error"]) for e in logs if e["event"].endswith("_failed")]
    assert (
        errors
        == [("alert_webhook_failed", "ReadTimeout")] * 2 + [("heartbeat_failed", "ReadTimeout")] * 2
    )
    runs = conn.execute("SELECT status FROM worker_job_runs ORDER BY id").fetchall()
    assert runs == [{"status": "failed"}] * 2
