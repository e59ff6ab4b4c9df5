"""The quota job against a real PostgreSQL and a scripted usage API over loopback."""

from __future__ import annotations

from typing import Any

import pytest

from scripts.fakes import FakeServer, Reply, Request, Script, serving, usage_body
from tests.conftest import Sleeps, make_context, make_settings
from worker import db
from worker.jobs import quota


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
) -> quota.JobResult:
    settings = make_settings(conn.info.dsn, TAVILY_USAGE_URL=f"{server.url}/usage", **env)
    ctx = make_context(conn, settings, job="quota", sleep=sleep)
    return quota.run_once(ctx)


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
