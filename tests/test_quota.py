"""The quota job against a real PostgreSQL and a scripted usage API over loopback."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from scripts.fakes import FakeServer, Reply, Script, serving, usage_body
from tests.conftest import Sleeps, make_context, make_settings, run_job_pass
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
            conn, server, sleep=sleeps, HTTP_TIMEOUT="0.3", RETRY_BASE_DELAY_SECONDS="2"
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
