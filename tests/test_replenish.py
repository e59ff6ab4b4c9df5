"""The replenish service against a real PostgreSQL and a scripted producer API over loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from tests.conftest import Sleeps, make_context, make_settings, run_job_pass
from tests.support.fakes import FakeServer, Reply, Request, repeated, serving
from tests.support.processes import WorkerProcess
from worker import alerts, db, http_client
from worker.daemon import Daemon
from worker.jobs import leases, replenish
from worker.jobs.base import JobResult
from worker.registry import JOBS, SERVICES

TOKEN = "producer-s3cret-token"


class Producer:
    """The producer API: scripted replies per campaign, else `quantity` fresh items."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold  # answer only once the server's `release` event is set
        self.first_request = threading.Event()
        self.scripted: dict[int, list[Reply]] = {}
        self._lock = threading.Lock()

    def on(self, campaign_id: int, *replies: Reply) -> Producer:
        self.scripted[campaign_id] = list(replies)
        return self

    def __call__(self, request: Request) -> Reply:
        self.first_request.set()
        order = request.json()
        with self._lock:
            queue = self.scripted.get(order["campaign_id"])
            if queue:
                return queue.pop(0) if len(queue) > 1 else queue[0]
        return Reply(200, {"items": items_for(request)}, hang=self.hold)


def items_for(request: Request) -> list[str]:
    order = request.json()
    key = request.headers["idempotency-key"]
    return [f"item-{key}-{i}" for i in range(order["quantity"])]


def add_campaign(
    conn: db.Conn, name: str, *, low: int, target: int, active: bool = True, user_id: int = 7
) -> int:
    row = conn.execute(
        "INSERT INTO campaigns (user_id, name, is_active, low_watermark, target_stock)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (user_id, name, active, low, target),
    ).fetchone()
    assert row is not None
    return int(row["id"])


LEASES = {
    "none": "NULL",
    "expired": "now() - interval '1 minute'",
    "unexpired": "now() + interval '10 minutes'",
}


def add_stock(
    conn: db.Conn, campaign_id: int, count: int, *, lease: str = "none", consumed: bool = False
) -> None:
    query = sql.SQL(
        "INSERT INTO campaign_stock (campaign_id, payload, leased_until, lease_owner, consumed_at)"
        " SELECT %s, 'seed-' || n, {leased_until}, CASE WHEN {leased} THEN 'app-1' END,"
        " CASE WHEN %s THEN now() END FROM generate_series(1, %s) AS n"
    ).format(leased_until=sql.SQL(LEASES[lease]), leased=sql.Literal(lease != "none"))
    conn.execute(query, (campaign_id, consumed, count))


def available(conn: db.Conn, campaign_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM campaign_stock WHERE campaign_id = %s AND consumed_at IS NULL"
        " AND (leased_until IS NULL OR leased_until <= now())",
        (campaign_id,),
    ).fetchone()
    assert row is not None
    return int(row["n"])


def new_payloads(conn: db.Conn, campaign_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT payload FROM campaign_stock WHERE campaign_id = %s AND payload NOT LIKE 'seed-%%'"
        " ORDER BY id",
        (campaign_id,),
    ).fetchall()
    return [r["payload"] for r in rows]


def alert_rows(conn: db.Conn) -> list[dict[str, Any]]:
    """The replenish alerts (run-level rules may add alerts of their own types)."""
    return conn.execute(
        "SELECT id, type, level, job, message, metadata FROM worker_alerts"
        " WHERE type = 'STOCK_REPLENISH_FAILED' ORDER BY id"
    ).fetchall()


def requests_by_campaign(server: FakeServer) -> dict[int, list[Request]]:
    seen: dict[int, list[Request]] = {}
    for request in server.received("POST", "/replenish"):
        seen.setdefault(request.json()["campaign_id"], []).append(request)
    return seen


def run_pass(
    conn: db.Conn,
    server: FakeServer,
    *,
    sleep: Sleeps | None = None,
    dry_run: bool = False,
    **env: str,
) -> JobResult:
    settings = make_settings(conn.info.dsn, REPLENISH_API_URL=f"{server.url}/replenish", **env)
    with http_client.build_http(settings.http_timeout_s) as http:
        ctx = make_context(
            conn,
            settings,
            job="replenish",
            sleep=sleep,
            dry_run=dry_run,
            http=http,
            alert=partial(alerts.raise_alert, conn, job="replenish"),
        )
        return run_job_pass(replenish.run_once, ctx)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


# --- the pass ----------------------------------------------------------------------------


def test_low_campaigns_are_topped_up_to_target(conn: db.Conn) -> None:
    partly = add_campaign(conn, "partly", low=5, target=10)
    add_stock(conn, partly, 2)
    add_stock(conn, partly, 2, lease="unexpired")  # leased: not available
    add_stock(conn, partly, 3, consumed=True)
    expired_ok = add_campaign(conn, "expired-leases-suffice", low=3, target=6)
    add_stock(conn, expired_ok, 1)
    add_stock(conn, expired_ok, 3, lease="expired")  # an expired lease counts as available
    expired_low = add_campaign(conn, "expired-leases-low", low=5, target=8)
    add_stock(conn, expired_low, 1)
    add_stock(conn, expired_low, 1, lease="expired")
    at_mark = add_campaign(conn, "at-watermark", low=4, target=9)
    add_stock(conn, at_mark, 4)
    inactive = add_campaign(conn, "inactive", low=5, target=10, active=False)
    empty = add_campaign(conn, "empty", low=2, target=4, user_id=42)

    with serving(Producer()) as server:
        result = run_pass(conn, server, REPLENISH_API_TOKEN=TOKEN, CAMPAIGN_CONCURRENCY="1")
        requests = server.received("POST", "/replenish")

    # Most depleted first (available / target): empty 0/4, partly 2/10, expired_low 2/8.
    assert [r.json() for r in requests] == [
        {"campaign_id": empty, "user_id": 42, "quantity": 4},
        {"campaign_id": partly, "user_id": 7, "quantity": 8},
        {"campaign_id": expired_low, "user_id": 7, "quantity": 6},
    ]
    assert [r.headers["idempotency-key"] for r in requests] == [
        f"{empty}:0",
        f"{partly}:7",  # the largest campaign_stock id of the campaign, consumed rows included
        f"{expired_low}:13",
    ]
    assert {r.bearer for r in requests} == {TOKEN}
    assert (result.total, result.succeeded, result.failed) == (3, 3, 0)
    for campaign, target in ((empty, 4), (partly, 10), (expired_low, 8)):
        assert available(conn, campaign) == target
    assert new_payloads(conn, empty) == [f"item-{empty}:0-{i}" for i in range(4)]
    assert new_payloads(conn, partly) == [f"item-{partly}:7-{i}" for i in range(8)]
    for untouched in (expired_ok, at_mark, inactive):
        assert new_payloads(conn, untouched) == []
    assert alert_rows(conn) == []


def test_no_authorization_header_without_a_token(conn: db.Conn) -> None:
    campaign = add_campaign(conn, "c", low=1, target=2)
    with serving(Producer()) as server:
        run_pass(conn, server)
        (request,) = server.received("POST", "/replenish")
    assert "authorization" not in request.headers
    assert request.headers["idempotency-key"] == f"{campaign}:0"
    assert new_payloads(conn, campaign) == [f"item-{campaign}:0-0", f"item-{campaign}:0-1"]


def test_failing_campaigns_spare_the_others_and_raise_one_alert(conn: db.Conn) -> None:
    ok_first = add_campaign(conn, "ok-first", low=1, target=2)
    broken = add_campaign(conn, "broken", low=1, target=2, user_id=11)
    hanging = add_campaign(conn, "hanging", low=1, target=2)
    refused = add_campaign(conn, "refused", low=1, target=2)
    greedy = add_campaign(conn, "greedy", low=1, target=2)
    ok_last = add_campaign(conn, "ok-last", low=1, target=2)
    producer = (
        Producer()
        .on(broken, Reply(500))
        .on(hanging, Reply(200, {"items": ["late"]}, hang=True))
        .on(refused, Reply(400, {"error": "unknown campaign"}))
        .on(greedy, Reply(200, {"items": ["a", "b", "c"]}))  # 3 items for a quantity of 2
    )
    sleeps = Sleeps()
    with serving(producer) as server:
        result = run_pass(
            conn, server, sleep=sleeps, HTTP_TIMEOUT_SECONDS="0.3", REPLENISH_RETRY_DELAY_MS="250"
        )
        seen = requests_by_campaign(server)

    assert {c: len(r) for c, r in seen.items()} == {
        ok_first: 1,
        broken: 3,
        hanging: 3,
        refused: 1,
        greedy: 1,
        ok_last: 1,
    }
    assert sleeps.calls == [0.25] * 4  # two waits each for the 500s and the timeouts
    assert (result.total, result.succeeded, result.failed) == (6, 2, 4)
    assert new_payloads(conn, ok_first) == [f"item-{ok_first}:0-0", f"item-{ok_first}:0-1"]
    assert new_payloads(conn, ok_last) == [f"item-{ok_last}:0-0", f"item-{ok_last}:0-1"]
    for failed in (broken, hanging, refused, greedy):
        assert new_payloads(conn, failed) == []

    (alert,) = alert_rows(conn)
    assert (alert["type"], alert["level"], alert["job"]) == (
        "STOCK_REPLENISH_FAILED",
        "WARNING",
        "replenish",
    )
    assert alert["message"].splitlines() == [
        "4 of 6 low-stock campaigns could not be replenished",
        f"- broken ({broken}): http_500",
        f"- hanging ({hanging}): timeout: ReadTimeout",
        f"- refused ({refused}): http_400",
        f"- greedy ({greedy}): bad_response: 3 items for a quantity of 2",
    ]
    assert alert["metadata"]["failures"] == [
        {
            "campaign_id": broken,
            "campaign_name": "broken",
            "user_id": 11,
            "error": "http_500",
            "retry_count": 2,
        },
        {
            "campaign_id": hanging,
            "campaign_name": "hanging",
            "user_id": 7,
            "error": "timeout: ReadTimeout",
            "retry_count": 2,
        },
        {
            "campaign_id": refused,
            "campaign_name": "refused",
            "user_id": 7,
            "error": "http_400",
            "retry_count": 0,
        },
        {
            "campaign_id": greedy,
            "campaign_name": "greedy",
            "user_id": 7,
            "error": "bad_response: 3 items for a quantity of 2",
            "retry_count": 0,
        },
    ]
    assert {f["reason"] for f in result.failures} == {
        "http_500",
        "timeout",
        "http_400",
        "bad_response",
    }


@pytest.mark.parametrize(
    "body",
    [{"items": "abc"}, {"items": [1, 2]}, {"stock": ["a"]}, ["a"], "not json"],
    ids=["not-a-list", "not-strings", "no-items", "not-an-object", "not-json"],
)
def test_malformed_answers_write_nothing(conn: db.Conn, body: Any) -> None:
    campaign = add_campaign(conn, "c", low=1, target=3)
    with serving(Producer().on(campaign, Reply(200, body))) as server:
        result = run_pass(conn, server)
        assert len(server.received("POST")) == 1
    assert [f["reason"] for f in result.failures] == ["bad_response"]
    assert new_payloads(conn, campaign) == []
    assert alert_rows(conn)[0]["metadata"]["failures"][0]["campaign_id"] == campaign


def test_a_transient_error_then_success_raises_no_alert(conn: db.Conn) -> None:
    campaign = add_campaign(conn, "c", low=1, target=2)
    producer = Producer().on(campaign, Reply(503), Reply(200, {"items": ["x", "y"]}))
    with serving(producer) as server:
        result = run_pass(conn, server)
        requests = server.received("POST", "/replenish")
    assert [r.headers["idempotency-key"] for r in requests] == [f"{campaign}:0"] * 2
    assert (result.succeeded, result.failed) == (1, 0)
    assert new_payloads(conn, campaign) == ["x", "y"]
    assert alert_rows(conn) == []


@pytest.mark.parametrize(
    ("failing", "level", "last_line"),
    [(10, "WARNING", None), (12, "ERROR", "... and 2 more")],
)
def test_alert_level_and_message_follow_the_failure_count(
    conn: db.Conn, failing: int, level: str, last_line: str | None
) -> None:
    ids = [add_campaign(conn, f"c{i:02d}", low=1, target=1) for i in range(failing)]
    with serving(lambda request: Reply(400)) as server:
        run_pass(conn, server)
    (alert,) = alert_rows(conn)
    lines = alert["message"].splitlines()
    assert alert["level"] == level
    assert lines[0] == f"{failing} of {failing} low-stock campaigns could not be replenished"
    assert lines[1:11] == [f"- c{i:02d} ({ids[i]}): http_400" for i in range(10)]
    assert lines[11:] == ([last_line] if last_line else [])
    assert [f["campaign_id"] for f in alert["metadata"]["failures"]] == ids


def test_a_failed_write_repeats_the_idempotency_key_next_run(conn: db.Conn) -> None:
    crashed = add_campaign(conn, "crashed", low=3, target=5)
    add_stock(conn, crashed, 1)
    fine = add_campaign(conn, "fine", low=1, target=1)
    conn.execute(
        "CREATE FUNCTION test_fail_stock() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'simulated crash before commit'; END $$"
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER test_fail_stock BEFORE INSERT ON campaign_stock FOR EACH ROW"
            " WHEN (NEW.campaign_id = {}) EXECUTE FUNCTION test_fail_stock()"
        ).format(sql.Literal(crashed))
    )
    try:
        with serving(Producer()) as server:
            first = run_pass(conn, server)
            first_keys = {
                c: r[0].headers["idempotency-key"] for c, r in requests_by_campaign(server).items()
            }
    finally:
        conn.execute("DROP TRIGGER test_fail_stock ON campaign_stock")
        conn.execute("DROP FUNCTION test_fail_stock()")
    assert [(f["reason"], f["campaign_id"]) for f in first.failures] == [("db_error", crashed)]
    assert new_payloads(conn, crashed) == []
    assert new_payloads(conn, fine) == [f"item-{fine}:0-0"]  # the other campaign committed
    assert alert_rows(conn)[0]["metadata"]["failures"][0]["error"].startswith(
        "db_error: simulated crash before commit"
    )

    with serving(Producer()) as server:
        second = run_pass(conn, server)
        (retry,) = server.received("POST", "/replenish")  # `fine` is at target now
    assert retry.headers["idempotency-key"] == first_keys[crashed] == f"{crashed}:1"
    assert (second.succeeded, second.failed) == (1, 0)
    assert available(conn, crashed) == 5


def test_stock_added_meanwhile_is_not_stocked_twice(conn: db.Conn, db_url: str) -> None:
    campaign = add_campaign(conn, "raced", low=3, target=4)

    def other_writer_first(request: Request) -> Reply:
        # Another replica (or the app) commits stock for the campaign while we wait.
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute(
                "INSERT INTO campaign_stock (campaign_id, payload) VALUES (%s, 'theirs')",
                (campaign,),
            )
        return Reply(200, {"items": items_for(request)})

    with serving(other_writer_first) as server:
        result = run_pass(conn, server)
    assert new_payloads(conn, campaign) == ["theirs"]
    assert (result.total, result.failed, result.details["skipped"]) == (0, 0, 1)
    assert alert_rows(conn) == []

    with serving(Producer()) as server:
        run_pass(conn, server)
        (request,) = server.received("POST", "/replenish")
    assert request.headers["idempotency-key"] == f"{campaign}:1"  # a new version, a new key
    assert request.json()["quantity"] == 3
    assert available(conn, campaign) == 4


def test_a_campaign_deactivated_meanwhile_gets_nothing(conn: db.Conn, db_url: str) -> None:
    campaign = add_campaign(conn, "paused-by-user", low=3, target=4)

    def deactivate_first(request: Request) -> Reply:
        with psycopg.connect(db_url, autocommit=True) as other:
            other.execute("UPDATE campaigns SET is_active = false WHERE id = %s", (campaign,))
        return Reply(200, {"items": items_for(request)})

    with serving(deactivate_first) as server:
        result = run_pass(conn, server)
    assert new_payloads(conn, campaign) == []
    assert (result.total, result.details["skipped"]) == (0, 1)


def test_dry_run_calls_nothing_and_writes_nothing(conn: db.Conn) -> None:
    campaign = add_campaign(conn, "c", low=2, target=5)
    add_campaign(conn, "d", low=2, target=4)
    with serving(Producer()) as server, capture_logs() as logs:
        result = run_pass(conn, server, dry_run=True)
        assert server.received() == []
    assert result.total == 2
    assert new_payloads(conn, campaign) == []
    [completed] = [e for e in logs if e["event"] == "replenish_completed"]
    assert (completed["would_replenish"], completed["items_received"]) == (2, 0)
    assert "replenished" not in completed


# --- lease recovery ----------------------------------------------------------------------


def lease_states(conn: db.Conn) -> list[tuple[str, bool, bool]]:
    rows = conn.execute(
        "SELECT payload, leased_until IS NOT NULL AS leased, lease_owner IS NOT NULL AS owned"
        " FROM campaign_stock ORDER BY id"
    ).fetchall()
    return [(r["payload"], r["leased"], r["owned"]) for r in rows]


@pytest.mark.parametrize("dry_run", [False, True], ids=["release", "dry-run"])
def test_lease_recovery_releases_only_expired_unconsumed_leases(
    conn: db.Conn, dry_run: bool
) -> None:
    campaign = add_campaign(conn, "c", low=0, target=0)
    add_stock(conn, campaign, 5, lease="expired")
    add_stock(conn, campaign, 1, lease="expired", consumed=True)
    add_stock(conn, campaign, 2, lease="unexpired")
    settings = make_settings(conn.info.dsn, CLEANUP_BATCH_SIZE="2")
    ctx = make_context(conn, settings, job="lease_recovery", dry_run=dry_run)
    result = run_job_pass(leases.run_once, ctx)

    released = not dry_run
    assert lease_states(conn) == [
        *[(f"seed-{n}", not released, not released) for n in range(1, 6)],
        ("seed-1", True, True),  # consumed: left as the app recorded it
        ("seed-1", True, True),
        ("seed-2", True, True),
    ]
    if not dry_run:
        assert (result.total, result.succeeded, result.failed) == (5, 5, 0)
        # Batches of 2, then 4 (fast batches grow), which finds only 3 left.
        assert result.details == {"recovered": 5, "batches": 2}
    else:
        # The 5 expired, unconsumed leases it would release; nothing counted as done.
        assert result.details == {"would_release": 5}
        assert (result.total, result.succeeded, result.failed) == (0, 0, 0)


# --- the service as users run it ---------------------------------------------------------


def seed_three(conn: db.Conn) -> list[int]:
    ids = [add_campaign(conn, f"c{i}", low=2, target=3) for i in range(3)]
    add_stock(conn, ids[0], 1)
    return ids


def test_once_stocks_campaigns_and_exits_zero(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    ids = seed_three(conn)
    expired = add_campaign(conn, "leases", low=0, target=0)
    add_stock(conn, expired, 2, lease="expired")
    with serving(Producer()) as server:
        env = {
            "DATABASE_URL": db_url,
            "REPLENISH_API_URL": f"{server.url}/replenish",
            "REPLENISH_API_TOKEN": TOKEN,
        }
        worker = spawn("replenish", "--once", env=env)
        assert worker.wait() == 0
        assert sorted(requests_by_campaign(server)) == ids
    assert [available(conn, c) for c in ids] == [3, 3, 3]
    assert worker.events("replenish_completed")[0]["replenished"] == 3
    assert worker.events("lease_recovery_completed")[0]["recovered"] == 2
    runs = conn.execute("SELECT job, status FROM worker_job_runs ORDER BY id").fetchall()
    assert [(r["job"], r["status"]) for r in runs] == [
        ("replenish", "success"),
        ("lease_recovery", "success"),
    ]
    assert TOKEN not in "".join(worker.raw) + worker.stderr()


def test_dry_run_once_lists_the_requests_it_would_make(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    ids = seed_three(conn)
    with serving(Producer()) as server:
        env = {"DATABASE_URL": db_url, "REPLENISH_API_URL": f"{server.url}/replenish"}
        worker = spawn("replenish", "--once", "--dry-run", env=env)
        assert worker.wait() == 0
        assert server.received() == []
    would = [
        (e["campaign_id"], e["quantity"], e["idempotency_key"])
        for e in worker.events("replenish_would_request")
    ]
    assert would == [
        (ids[1], 3, f"{ids[1]}:0"),
        (ids[2], 3, f"{ids[2]}:0"),
        (ids[0], 2, f"{ids[0]}:1"),
    ]
    assert [available(conn, c) for c in ids] == [1, 0, 0]
    assert conn.execute("SELECT count(*) AS n FROM worker_job_runs").fetchone() == {"n": 0}


@pytest.mark.parametrize("args", [("replenish", "--once"), ("run", "replenish")])
def test_missing_producer_url_exits_2(
    db_url: str, spawn: Callable[..., WorkerProcess], args: tuple[str, ...]
) -> None:
    # `all` runs without it, leaving the job out (tests/test_cli.py).
    worker = spawn(*args, env={"DATABASE_URL": db_url})
    assert worker.wait() == 2
    assert "REPLENISH_API_URL" in worker.stderr()


def test_two_daemons_request_each_campaign_once(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    ids = seed_three(conn)
    producer = Producer(hold=True)
    with serving(producer) as server:
        env = {"DATABASE_URL": db_url, "REPLENISH_API_URL": f"{server.url}/replenish"}
        workers = [spawn("replenish", "--once", env=env) for _ in range(2)]
        assert producer.first_request.wait(20)
        # The run holding the lock is the one whose run row is open while the producer holds.
        row = conn.execute(
            "SELECT pid FROM worker_job_runs WHERE job = 'replenish' AND status = 'running'"
        ).fetchone()
        assert row is not None
        (holder,) = [w for w in workers if w.proc.pid == row["pid"]]
        (other,) = [w for w in workers if w is not holder]
        other.wait_for("job_claimed_elsewhere", job="replenish")
        assert other.wait() == 0
        server.release.set()
        assert holder.wait() == 0
        seen = requests_by_campaign(server)
    assert {c: len(r) for c, r in seen.items()} == {c: 1 for c in ids}
    assert [available(conn, c) for c in ids] == [3, 3, 3]
    assert holder.events("job_claimed_elsewhere") == []


def test_webhook_receiver_down_does_not_fail_the_run(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    ok, refused = seed_three(conn)[:2]
    with serving(Producer().on(refused, Reply(400))) as server:
        env = {
            "DATABASE_URL": db_url,
            "REPLENISH_API_URL": f"{server.url}/replenish",
            "ALERT_WEBHOOK_URL": closed_port_url(),
        }
        worker = spawn("replenish", "--once", env=env)
        assert worker.wait() == 0
    failed = worker.events("alert_webhook_failed")
    run = conn.execute(
        "SELECT status, failed, succeeded FROM worker_job_runs WHERE job = 'replenish'"
    ).fetchone()
    assert run == {"status": "partial", "failed": 1, "succeeded": 2}
    (alert,) = alert_rows(conn)
    assert alert["metadata"]["failures"][0]["campaign_id"] == refused
    assert alert["id"] in {e["alert_id"] for e in failed}
    assert available(conn, ok) == 3


@contextmanager
def daemon(settings_env: dict[str, str], db_url: str) -> Iterator[Daemon]:
    settings = make_settings(db_url, **settings_env)
    worker = Daemon(settings, SERVICES["replenish"])
    try:
        yield worker
    finally:
        worker.http.close()


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_the_alert_reaches_a_live_webhook(conn: db.Conn, db_url: str, fmt: str) -> None:
    refused = add_campaign(conn, "refused", low=1, target=1)
    with serving(Producer().on(refused, Reply(400))) as producer, serving() as sink:
        env = {
            "REPLENISH_API_URL": f"{producer.url}/replenish",
            "ALERT_WEBHOOK_URL": f"{sink.url}/hook",
            "ALERT_WEBHOOK_FORMAT": fmt,
        }
        with daemon(env, db_url) as worker:
            assert worker.run_job(JOBS["replenish"]) == "failed"
        deliveries = [r.json() for r in sink.received("POST", "/hook")]
    # The run-level rules (run failed...) post their own alerts too; pick ours.
    (payload,) = [p for p in deliveries if "STOCK_REPLENISH_FAILED" in json.dumps(p)]
    message = (
        f"1 of 1 low-stock campaigns could not be replenished\n- refused ({refused}): http_400"
    )
    if fmt == "json":
        assert payload["type"] == "STOCK_REPLENISH_FAILED"
        assert payload["level"] == "WARNING"
        assert payload["message"] == message
        assert payload["metadata"]["failures"][0]["campaign_name"] == "refused"
    else:
        assert payload["text"] == f"[WARNING] STOCK_REPLENISH_FAILED [replenish]\n{message}"
        assert payload["blocks"][1]["text"]["text"] == message


# --- a broken or hostile producer costs one campaign ------------------------------------


def test_oversized_producer_answers_fail_their_campaign_and_insert_nothing(
    conn: db.Conn,
) -> None:
    many = add_campaign(conn, "many-items", low=5, target=5)
    huge = add_campaign(conn, "huge-items", low=5, target=5)
    fine = add_campaign(conn, "fine", low=1, target=2)
    ten_thousand = {"items": [f"item-{i}" for i in range(10_000)]}
    ten_mb = b"x" * (10 * 1024 * 1024)

    def huge_items() -> Iterator[bytes]:
        yield b'{"items": ["'
        for i in range(5):
            yield from repeated(len(ten_mb), ten_mb[: 64 * 1024])()
            yield b'", "' if i < 4 else b'"]}'

    producer = (
        Producer()
        .on(many, Reply(200, ten_thousand))
        .on(huge, Reply(200, stream=huge_items, framing="chunked"))
    )
    with serving(producer) as server:
        result = run_pass(conn, server)
        assert {c: len(r) for c, r in requests_by_campaign(server).items()} == {
            many: 1,
            huge: 1,
            fine: 1,
        }

    reasons = {f["campaign_id"]: (f["reason"], f["error"]) for f in result.failures}
    assert reasons == {
        many: ("bad_response", "bad_response: 10000 items for a quantity of 5"),
        huge: ("response_too_large", "response_too_large: body is over 1048576 bytes"),
    }
    assert new_payloads(conn, many) == new_payloads(conn, huge) == []
    assert new_payloads(conn, fine) == [f"item-{fine}:0-0", f"item-{fine}:0-1"]
    [alert] = alert_rows(conn)
    assert f"- huge-items ({huge}): response_too_large" in alert["message"]
