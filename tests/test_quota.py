"""The quota job against a real PostgreSQL and a scripted usage API over loopback."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import structlog

from tests.conftest import Sleeps, make_context, make_settings, run_job_pass
from tests.support.fakes import (
    FakeServer,
    Reply,
    Request,
    Script,
    dripped,
    repeated,
    serving,
    usage_body,
)
from tests.support.processes import WorkerProcess
from worker import db
from worker.jobs import quota
from worker.jobs.base import JobResult


def add_key(conn: db.Conn, api_key: str, *, plan_limit: int = 1000, remaining: int = 0) -> int:
    row = conn.execute(
        "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota, updated_at)"
        " VALUES (%s, %s, %s, now() - interval '1 day') RETURNING id",
        (api_key, plan_limit, remaining),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def key_row(conn: db.Conn, api_key: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT remaining_quota, plan_limit, updated_at > now() - interval '1 minute' AS fresh"
        " FROM tavily_api_keys WHERE api_key = %s",
        (api_key,),
    ).fetchone()
    assert row is not None
    return row


def by_bearer(default: Reply) -> Script:
    return Script(lambda request: request.bearer, default)


def run_pass(
    conn: db.Conn, server: FakeServer, sleep: Sleeps | None = None, **env: str
) -> JobResult:
    settings = make_settings(conn.info.dsn, TAVILY_USAGE_URL=f"{server.url}/usage", **env)
    ctx = make_context(conn, settings, job="quota", sleep=sleep)
    return run_job_pass(quota.run_once, ctx)


def test_pass_writes_quota_and_touches_unchanged_keys(conn: db.Conn) -> None:
    add_key(conn, "tvly-changed-aaaaaaaaaaaa", plan_limit=1000, remaining=10)
    add_key(conn, "tvly-same-bbbbbbbbbbbbbbb", plan_limit=15000, remaining=14500)
    add_key(conn, "tvly-excluded-cccccccccc", plan_limit=100, remaining=500)  # remaining > limit
    script = by_bearer(Reply(200, usage_body(15000, 500)))
    with serving(script) as server:
        result = run_pass(conn, server)
        bearers = sorted(r.bearer or "" for r in server.received("GET", "/usage"))

    assert (result.total, result.succeeded, result.failed) == (2, 2, 0)
    assert bearers == ["tvly-changed-aaaaaaaaaaaa", "tvly-same-bbbbbbbbbbbbbbb"]
    assert key_row(conn, "tvly-changed-aaaaaaaaaaaa") == {
        "remaining_quota": 14500,
        "plan_limit": 15000,
        "fresh": True,
    }
    assert key_row(conn, "tvly-same-bbbbbbbbbbbbbbb") == {
        "remaining_quota": 14500,
        "plan_limit": 15000,
        "fresh": True,
    }
    assert key_row(conn, "tvly-excluded-cccccccccc") == {
        "remaining_quota": 500,
        "plan_limit": 100,
        "fresh": False,
    }


def test_remaining_never_negative(conn: db.Conn) -> None:
    add_key(conn, "tvly-over-dddddddddddddd", plan_limit=1000, remaining=5)
    with serving(lambda r: Reply(200, usage_body(1000, 1200))) as server:
        run_pass(conn, server)
    assert key_row(conn, "tvly-over-dddddddddddddd")["remaining_quota"] == 0


FAULTS = {
    "tvly-ok-00000000000000": [Reply(200, usage_body(1000, 100))],
    "tvly-500-then-200-0000": [Reply(500, "oops"), Reply(200, usage_body(1000, 200))],
    "tvly-429-retry-after-0": [
        Reply(429, "slow down", headers={"Retry-After": "7"}),
        Reply(200, usage_body(1000, 300)),
    ],
    "tvly-timeout-000000000": [Reply(hang=True)],
    "tvly-401-0000000000000": [Reply(401, {"detail": "unauthorized"})],
    "tvly-html-000000000000": [Reply(200, "<html><body>maintenance</body></html>")],
    "tvly-no-account-000000": [Reply(200, {"key": {"usage": 1, "limit": None}})],
    "tvly-string-numbers-00": [Reply(200, {"account": {"plan_limit": "1000", "plan_usage": "10"}})],
    "tvly-negative-usage-00": [Reply(200, usage_body(1000, -5))],
    "tvly-dropped-000000000": [Reply(drop=True)],
}


def test_fault_matrix_fails_only_the_faulty_keys(conn: db.Conn) -> None:
    for api_key in FAULTS:
        add_key(conn, api_key, plan_limit=1000, remaining=1)
    script = Script(lambda request: request.bearer, Reply(500))
    for api_key, replies in FAULTS.items():
        script.on(api_key, *replies)
    sleeps = Sleeps()
    with serving(script) as server:
        result = run_pass(
            conn, server, sleep=sleeps, HTTP_TIMEOUT_SECONDS="0.3", RETRY_BASE_DELAY_SECONDS="2"
        )
        calls = {key: len([r for r in server.requests if r.bearer == key]) for key in FAULTS}

    reasons = {f["item"]: f["reason"] for f in result.failures}
    assert reasons == {
        "tvly-timeo...": "timeout",
        "tvly-401-0...": "http_401",
        "tvly-html-...": "bad_response",
        "tvly-no-ac...": "bad_response",
        "tvly-strin...": "bad_response",
        "tvly-negat...": "bad_response",
        "tvly-dropp...": "connection_error",
    }
    assert (result.total, result.succeeded, result.failed) == (10, 3, 7)
    # Retried keys: one retry each; timeouts and dropped connections use all three attempts;
    # permanent failures and bad answers are called exactly once.
    assert calls == {
        "tvly-ok-00000000000000": 1,
        "tvly-500-then-200-0000": 2,
        "tvly-429-retry-after-0": 2,
        "tvly-timeout-000000000": 3,
        "tvly-401-0000000000000": 1,
        "tvly-html-000000000000": 1,
        "tvly-no-account-000000": 1,
        "tvly-string-numbers-00": 1,
        "tvly-negative-usage-00": 1,
        "tvly-dropped-000000000": 3,
    }
    # Backoff 2 s then 4 s for exhausted keys, 2 s for the 500, Retry-After's 7 s for the 429.
    assert sorted(sleeps.calls) == sorted([2.0, 7.0, 2.0, 4.0, 2.0, 4.0])
    assert key_row(conn, "tvly-500-then-200-0000")["remaining_quota"] == 800
    assert key_row(conn, "tvly-429-retry-after-0")["remaining_quota"] == 700
    for api_key in FAULTS:
        if api_key.startswith(("tvly-ok", "tvly-500", "tvly-429")):
            assert key_row(conn, api_key)["fresh"] is True
        else:  # a failed key is left exactly as it was
            assert key_row(conn, api_key) == {
                "remaining_quota": 1,
                "plan_limit": 1000,
                "fresh": False,
            }


def test_retry_after_is_capped_and_accepts_http_dates(conn: db.Conn) -> None:
    add_key(conn, "tvly-capped-00000000000")
    add_key(conn, "tvly-dated-000000000000")
    script = by_bearer(Reply(200, usage_body(1000, 0)))
    script.on(
        "tvly-capped-00000000000",
        Reply(429, headers={"Retry-After": "3600"}),
        Reply(200, usage_body(1000, 0)),
    )
    script.on(
        "tvly-dated-000000000000",
        Reply(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
        Reply(200, usage_body(1000, 0)),
    )
    sleeps = Sleeps()
    with serving(script) as server:
        result = run_pass(conn, server, sleep=sleeps, RETRY_BASE_DELAY_SECONDS="2")
    assert result.failed == 0
    assert sorted(sleeps.calls) == [0.0, 60.0]  # a past date means "now"; an hour is capped at 60 s


def test_connection_refused_fails_every_key_without_writing(conn: db.Conn) -> None:
    add_key(conn, "tvly-refused-000000000")
    closed = FakeServer()
    url = closed.url
    closed.stop()  # nothing listens on that port any more
    settings = make_settings(conn.info.dsn, TAVILY_USAGE_URL=f"{url}/usage")
    result = run_job_pass(quota.run_once, make_context(conn, settings))
    assert [f["reason"] for f in result.failures] == ["connection_error"]
    assert result.failures[0]["attempts"] == 3
    assert key_row(conn, "tvly-refused-000000000")["fresh"] is False


def test_concurrency_is_bounded_and_no_key_is_called_twice(conn: db.Conn) -> None:
    keys = [f"tvly-conc-{i:03d}-xxxxxxxxxx" for i in range(12)]
    for api_key in keys:
        add_key(conn, api_key)
    with serving(lambda r: Reply(200, usage_body(1000, 1), delay_s=0.15)) as server:
        result = run_pass(conn, server, QUOTA_CONCURRENCY="4")
        bearers = [r.bearer for r in server.requests]
    assert result.succeeded == 12
    assert server.max_active == 4
    assert sorted(bearers) == sorted(keys)  # each key exactly once


def test_many_keys_are_paged_through(conn: db.Conn) -> None:
    count = quota.PAGE_SIZE * 2 + 3
    conn.execute(
        "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota)"
        " SELECT 'tvly-page-' || lpad(i::text, 6, '0'), 100, 0 FROM generate_series(1, %s) i",
        (count,),
    )
    with serving(lambda r: Reply(200, usage_body(100, 40))) as server:
        result = run_pass(conn, server, QUOTA_CONCURRENCY="8")
        distinct = {r.bearer for r in server.requests}
    assert result.succeeded == count and len(distinct) == count == len(server.requests)
    row = conn.execute(
        "SELECT count(*) AS n FROM tavily_api_keys WHERE remaining_quota = 60"
    ).fetchone()
    assert row is not None and row["n"] == count


def test_a_failing_write_fails_only_that_key(conn: db.Conn) -> None:
    add_key(conn, "tvly-good-1-0000000000")
    add_key(conn, "tvly-rejected-00000000")
    add_key(conn, "tvly-good-2-0000000000")
    conn.execute(
        """
        CREATE FUNCTION reject_key() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.api_key = 'tvly-rejected-00000000' THEN
                RAISE EXCEPTION 'quota writes are frozen for this key';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER reject_key BEFORE UPDATE ON tavily_api_keys
            FOR EACH ROW EXECUTE FUNCTION reject_key();
        """
    )
    try:
        with serving(lambda r: Reply(200, usage_body(1000, 250))) as server:
            result = run_pass(conn, server)
    finally:
        conn.execute("DROP TRIGGER reject_key ON tavily_api_keys; DROP FUNCTION reject_key()")
    assert (result.succeeded, result.failed) == (2, 1)
    assert result.failures[0]["item"] == "tvly-rejec..."
    assert result.failures[0]["reason"] == "db_error"
    assert "frozen" in result.failures[0]["error"]
    assert key_row(conn, "tvly-good-1-0000000000")["remaining_quota"] == 750
    assert key_row(conn, "tvly-good-2-0000000000")["remaining_quota"] == 750
    assert key_row(conn, "tvly-rejected-00000000")["fresh"] is False


def test_dry_run_calls_the_api_but_writes_nothing(conn: db.Conn) -> None:
    add_key(conn, "tvly-dry-run-000000000", remaining=3)
    settings_env = {"TAVILY_USAGE_URL": ""}
    with serving(lambda r: Reply(200, usage_body(1000, 10))) as server:
        settings_env["TAVILY_USAGE_URL"] = f"{server.url}/usage"
        settings = make_settings(conn.info.dsn, **settings_env)
        result = run_job_pass(quota.run_once, make_context(conn, settings, dry_run=True))
        assert len(server.requests) == 1
    assert result.succeeded == 1
    assert key_row(conn, "tvly-dry-run-000000000") == {
        "remaining_quota": 3,
        "plan_limit": 1000,
        "fresh": False,
    }


def test_logs_carry_the_seed_events_and_never_a_whole_key(conn: db.Conn) -> None:
    from structlog.testing import capture_logs

    add_key(conn, "tvly-secret-key-value-1", remaining=0)
    add_key(conn, "tvly-secret-key-value-2", remaining=0)
    script = by_bearer(Reply(200, usage_body(1000, 0)))
    script.on("tvly-secret-key-value-2", Reply(401))
    with capture_logs() as events, serving(script) as server:
        run_pass(conn, server)
    names = [e["event"] for e in events]
    assert names[0] == "tavily_keys_fetched" and names[-1] == "tavily_quota_update_completed"
    updated = next(e for e in events if e["event"] == "tavily_quota_updated")
    assert updated["key_prefix"] == "tvly-secre..."
    assert {
        k: updated[k]
        for k in ("old_quota", "new_quota", "plan_limit", "plan_usage", "quota_change")
    } == {
        "old_quota": 0,
        "new_quota": 1000,
        "plan_limit": 1000,
        "plan_usage": 0,
        "quota_change": 1000,
    }
    http_error = next(e for e in events if e["event"] == "tavily_api_http_error")
    assert http_error["status_code"] == 401
    completed = events[-1]
    assert (completed["total_keys"], completed["success_count"], completed["failed_count"]) == (
        2,
        1,
        1,
    )
    assert "tvly-secret-key-value" not in repr(events)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"account": {"plan_limit": 10.5, "plan_usage": 1}}, "whole"),
        ({"account": {"plan_limit": True, "plan_usage": 1}}, "not a number"),
        ({"account": {"plan_limit": 10}}, "plan_usage"),
        ([1, 2, 3], "not a JSON object"),
    ],
)
def test_bad_answers_are_rejected(conn: db.Conn, body: Any, detail: str) -> None:
    add_key(conn, "tvly-bad-answer-000000")
    with serving(lambda r: Reply(200, body)) as server:
        result = run_pass(conn, server)
    assert result.failures[0]["reason"] == "bad_response"
    assert detail in result.failures[0]["detail"]


def test_a_bad_answer_after_a_retry_reports_both_attempts(conn: db.Conn) -> None:
    add_key(conn, "tvly-retry-then-bad-00")
    script = by_bearer(Reply(200, usage_body(1000, 0)))
    script.on("tvly-retry-then-bad-00", Reply(502), Reply(200, "<html>"))
    with serving(script) as server:
        result = run_pass(conn, server)
        assert len(server.requests) == 2
    [failure] = result.failures
    assert (failure["reason"], failure["attempts"]) == ("bad_response", 2)


def test_a_key_row_the_app_keeps_locked_fails_only_that_key(db_url: str, conn: db.Conn) -> None:
    add_key(conn, "tvly-locked-000000000")
    add_key(conn, "tvly-free-00000000000")
    with psycopg.connect(db_url) as app:
        app.execute(
            "SELECT 1 FROM tavily_api_keys WHERE api_key = 'tvly-locked-000000000' FOR UPDATE"
        )
        with serving(lambda r: Reply(200, usage_body(1000, 1))) as server:
            result = run_pass(conn, server)
        app.rollback()
    assert (result.succeeded, result.failed) == (1, 1)
    assert result.failures[0]["item"] == "tvly-locke..."
    assert "lock timeout" in result.failures[0]["error"]
    assert key_row(conn, "tvly-free-00000000000")["fresh"] is True


# --- a broken or hostile usage endpoint costs one key, never the process ------------------

BIG_BODY = 64 * 1024 * 1024
MB = 1024


def vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class Gate:
    """A key whose request waits until the test lets it through, after noting its arrival."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.go_on = threading.Event()

    def reply(self) -> Reply:
        self.arrived.set()
        self.go_on.wait(30)
        return Reply(200, usage_body(1000, 1))


def test_huge_bodies_fail_their_keys_and_memory_stays_flat(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    start, end = Gate(), Gate()
    big = {
        "tvly-big-length-00000": Reply(200, stream=repeated(BIG_BODY), length=BIG_BODY),
        "tvly-big-close-000000": Reply(200, stream=repeated(BIG_BODY), framing="close"),
        "tvly-big-chunked-0000": Reply(200, stream=repeated(BIG_BODY), framing="chunked"),
    }
    # One key at a time, in id order: the start gate, the three huge bodies, then the end gate.
    for api_key in ("tvly-gate-start-00000", *big, "tvly-gate-end-0000000"):
        add_key(conn, api_key)

    def respond(request: Request) -> Reply:
        if request.bearer == "tvly-gate-start-00000":
            return start.reply()
        if request.bearer == "tvly-gate-end-0000000":
            return end.reply()
        return big[request.bearer or ""]

    with serving(respond) as server:
        env = {"DATABASE_URL": db_url, "TAVILY_USAGE_URL": server.url, "QUOTA_CONCURRENCY": "1"}
        worker = spawn("quota", "--once", env=env)
        assert start.arrived.wait(30)
        idle_kb = vm_hwm_kb(worker.proc.pid)
        start.go_on.set()
        assert end.arrived.wait(30)
        peak_kb = vm_hwm_kb(worker.proc.pid)
        end.go_on.set()
        assert worker.wait() == 0

    assert peak_kb - idle_kb < 20 * MB, (idle_kb, peak_kb)
    run = conn.execute("SELECT status, details FROM worker_job_runs").fetchone()
    assert run is not None and run["status"] == "partial"
    reasons = {f["item"]: (f["reason"], f["attempts"]) for f in run["details"]["failures"]}
    assert reasons == {quota.key_prefix(k): ("response_too_large", 1) for k in big}
    logged = {e["key_prefix"]: e["reason"] for e in worker.events("tavily_api_error")}
    assert logged == {quota.key_prefix(k): "response_too_large" for k in big}
    for api_key in big:
        assert key_row(conn, api_key)["fresh"] is False
    for api_key in ("tvly-gate-start-00000", "tvly-gate-end-0000000"):
        assert key_row(conn, api_key)["remaining_quota"] == 999


def drip_usage(first_byte: threading.Event | None = None) -> Reply:
    """A whole usage answer, one byte every 0.5 s: it would take minutes."""
    body = json.dumps(usage_body(1000, 1)).encode()

    def stream() -> Iterator[bytes]:
        for i, byte in enumerate(dripped(body)()):
            yield byte
            if i == 0 and first_byte is not None:
                first_byte.set()

    return Reply(200, stream=stream, length=len(body), interval_s=0.5)


def test_a_dripping_key_times_out_per_attempt_and_the_pass_goes_on(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    for api_key in ("tvly-ok-1-000000000000", "tvly-drip-000000000000", "tvly-ok-2-000000000000"):
        add_key(conn, api_key)
    script = by_bearer(Reply(200, usage_body(1000, 1))).on("tvly-drip-000000000000", drip_usage())
    with serving(script) as server:
        env = {
            "DATABASE_URL": db_url,
            "TAVILY_USAGE_URL": server.url,
            "HTTP_TIMEOUT_SECONDS": "3",
            "MAX_RETRIES": "2",
        }
        worker = spawn("quota", "--once", env=env)
        assert worker.wait(30) == 0
        drips = [r.received_at for r in server.requests if r.bearer == "tvly-drip-000000000000"]

    assert len(drips) == 2 and 2.9 < drips[1] - drips[0] < 4.5  # 3 s, then a zero backoff
    completed = worker.wait_for("tavily_quota_update_completed")
    assert 5.9 < completed["elapsed_seconds"] < 9  # 2 x 3 s plus the (zero) backoff
    assert (completed["success_count"], completed["failed_count"]) == (2, 1)
    timeout = worker.wait_for("tavily_api_timeout")
    assert (timeout["key_prefix"], timeout["reason"], timeout["attempts"]) == (
        "tvly-drip-...",
        "timeout",
        2,
    )
    run = conn.execute("SELECT details FROM worker_job_runs").fetchone()
    assert run is not None
    [failure] = run["details"]["failures"]
    assert (failure["item"], failure["reason"], failure["attempts"]) == (
        "tvly-drip-...",
        "timeout",
        2,
    )
    assert key_row(conn, "tvly-drip-000000000000")["fresh"] is False
    assert key_row(conn, "tvly-ok-2-000000000000")["fresh"] is True


def test_sigterm_during_a_drip_exits_within_a_second(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    add_key(conn, "tvly-drip-000000000000")
    first_byte = threading.Event()
    with serving(lambda r: drip_usage(first_byte)) as server:
        env = {"DATABASE_URL": db_url, "TAVILY_USAGE_URL": server.url, "HTTP_TIMEOUT_SECONDS": "3"}
        worker = spawn("quota", "--once", env=env)
        assert first_byte.wait(30)
        sent = worker.signal(signal.SIGTERM)
        code = worker.proc.wait(5)
        exited_s = time.monotonic() - sent
        worker.wait()

    assert code == 0 and exited_s < 1.0, exited_s
    run = conn.execute("SELECT status FROM worker_job_runs").fetchone()
    assert run == {"status": "interrupted"}
    assert key_row(conn, "tvly-drip-000000000000")["fresh"] is False


def test_keys_sharing_a_prefix_are_told_apart_by_key_id(conn: db.Conn) -> None:
    good = add_key(conn, "tvly-fake-aaaaaaaaaaaaaaaa")
    bad = add_key(conn, "tvly-fake-bbbbbbbbbbbbbbbb")
    script = by_bearer(Reply(200, usage_body(15000, 500))).on(
        "tvly-fake-bbbbbbbbbbbbbbbb", Reply(401, {"detail": "invalid key"})
    )
    with serving(script) as server, structlog.testing.capture_logs() as logs:
        result = run_pass(conn, server)

    per_key = [e for e in logs if "key_prefix" in e]
    assert {(e["event"], e["key_id"], e["key_prefix"]) for e in per_key} == {
        ("tavily_quota_updated", good, "tvly-fake-..."),
        ("tavily_api_http_error", bad, "tvly-fake-..."),
    }
    assert [(f["key_id"], f["item"], f["reason"]) for f in result.failures] == [
        (bad, "tvly-fake-...", "http_401")
    ]
    assert "tvly-fake-bbbbbbbbbbbbbbbb" not in json.dumps([*per_key, *result.failures])
