"""The searched history over real HTTP: `/api/runs` and `/api/alerts`, each filter alone
and combined, the keyset cursor, the 400s; "acknowledge all"; an alert's run."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.webtools import TOKEN, Spawn, client, web_worker
from worker import alerts, db

BEARER = {"Authorization": f"Bearer {TOKEN}"}
ZONE = "Asia/Shanghai"  # UTC+8 all year: a local midnight is 16:00 UTC
NOW = datetime.now(UTC).replace(microsecond=0)
STATUSES = ("success", "failed", "partial", "success", "cancelled")
TRIGGERS = ("schedule", "schedule", "manual", "retry")
RUN_KEYS = {
    "id",
    "job",
    "status",
    "trigger",
    "scheduled_for",
    "started_at",
    "finished_at",
    "duration_ms",
}


@pytest.fixture
def http(spawn: Spawn, db_url: str) -> Iterator[httpx.Client]:
    env = {"WORKER_HTTP_TOKEN": TOKEN, "RUN_ON_START": "false", "SCHEDULE_TIMEZONE": ZONE}
    with web_worker(spawn, db_url, **env) as (_, url), client(url, headers=BEARER) as session:
        yield session


def insert_run(conn: db.Conn, job: str, status: str, trigger: str, started_at: datetime) -> int:
    row = conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at, finished_at,"
        " duration_ms) VALUES (%s, %s, %s, 'test', 1, %s, %s, 1000) RETURNING id",
        (job, trigger, status, started_at, started_at + timedelta(seconds=1)),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def seed_runs(conn: db.Conn) -> list[dict[str, Any]]:
    """40 runs of two jobs an hour apart, statuses and triggers varied, two pairs started
    at the same instant (the cursor's tie); returned newest first, as the API lists them."""
    seeded = []
    for i in range(40):
        job = ("alpha", "beta")[i % 2]
        started = NOW - timedelta(hours=i // 2 * 2 if i in (10, 11, 20, 21) else i)
        status, trigger = STATUSES[i % 5], TRIGGERS[i % 4]
        run_id = insert_run(conn, job, status, trigger, started)
        seeded.append(
            {"id": run_id, "job": job, "status": status, "trigger": trigger, "at": started}
        )
    return sorted(seeded, key=lambda r: (r["at"], r["id"]), reverse=True)


def ids(http: httpx.Client, path: str, **params: Any) -> list[int]:
    answer = http.get(path, params={"limit": 500, **params})
    assert answer.status_code == 200, answer.text
    key = "runs" if path == "/api/runs" else "alerts"
    assert answer.json()["next"] is None
    return [row["id"] for row in answer.json()[key]]


def walk(http: httpx.Client, path: str, limit: int, **params: Any) -> list[int]:
    """Every page of `path`, following `next`; the ids in order."""
    key = "runs" if path == "/api/runs" else "alerts"
    found, before = [], None
    for _ in range(100):
        page = http.get(path, params={**params, "limit": limit, "before": before}).json()
        assert len(page[key]) <= limit
        found += [row["id"] for row in page[key]]
        before = page["next"]
        if before is None:
            return found
        assert len(page[key]) == limit  # only a full page says more follow
    raise AssertionError("the pages never ended")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_runs_every_filter_alone_and_combined(http: httpx.Client, conn: db.Conn) -> None:
    seeded = seed_runs(conn)

    def expect(**want: Any) -> list[int]:
        since, until = want.pop("since", None), want.pop("until", None)
        return [
            r["id"]
            for r in seeded
            if all(r[k] == v for k, v in want.items())
            and (since is None or r["at"] >= since)
            and (until is None or r["at"] < until)
        ]

    assert ids(http, "/api/runs") == expect()
    first = http.get("/api/runs", params={"limit": 1}).json()["runs"][0]
    assert set(first) >= RUN_KEYS and first["id"] == seeded[0]["id"]
    assert ids(http, "/api/runs", job="alpha") == expect(job="alpha")
    assert ids(http, "/api/runs", status="failed") == expect(status="failed")
    assert ids(http, "/api/runs", trigger="manual") == expect(trigger="manual")
    since, until = NOW - timedelta(hours=30), NOW - timedelta(hours=9)
    assert ids(http, "/api/runs", since=iso(since), until=iso(until)) == expect(
        since=since, until=until
    )
    combined = {"job": "beta", "status": "success", "trigger": "retry"}
    assert expect(**combined), "the seed has a run matching every filter at once"
    assert ids(http, "/api/runs", **combined, since=iso(since)) == expect(**combined, since=since)
    cancelled = expect(job="alpha", status="cancelled")
    assert ids(http, "/api/runs", job="alpha", status="cancelled") == cancelled
    assert ids(http, "/api/runs", job="alpha", trigger="retry") == []  # retries: odd, beta
    assert ids(http, "/api/runs", job="nobody") == []
    # An empty form field is no filter.
    assert ids(http, "/api/runs", job="", status="", since="") == expect()


def test_runs_pages_follow_the_cursor_without_gaps_or_repeats(
    http: httpx.Client, conn: db.Conn
) -> None:
    seeded = seed_runs(conn)
    assert walk(http, "/api/runs", 3) == [r["id"] for r in seeded]  # through both ties
    failed = [r["id"] for r in seeded if r["status"] == "failed" and r["job"] == "beta"]
    assert walk(http, "/api/runs", 2, job="beta", status="failed") == failed
    # A run started after the first page was read does not shift the next one.
    page = http.get("/api/runs", params={"limit": 5}).json()
    insert_run(conn, "alpha", "failed", "schedule", NOW + timedelta(minutes=1))
    later = http.get("/api/runs", params={"limit": 5, "before": page["next"]}).json()
    assert [r["id"] for r in later["runs"]] == [r["id"] for r in seeded[5:10]]


def test_runs_dates_are_in_the_schedule_timezone(http: httpx.Client, conn: db.Conn) -> None:
    midnight = datetime(2026, 11, 30, 16, tzinfo=UTC)  # 2026-12-01 00:00 in Shanghai
    second = timedelta(seconds=1)
    before_day, first, last, after_day = (
        insert_run(conn, "gamma", "failed", "schedule", at)
        for at in (
            midnight - second,
            midnight,
            midnight + timedelta(days=1) - second,
            midnight + timedelta(days=1),
        )
    )
    one_day = ids(http, "/api/runs", job="gamma", since="2026-12-01", until="2026-12-01")
    assert one_day == [last, first]
    assert ids(http, "/api/runs", job="gamma", until="2026-11-30") == [before_day]
    noon = ids(http, "/api/runs", job="gamma", since="2026-12-01 12:00")  # 04:00 UTC
    assert noon == [after_day, last]
    utc = ids(http, "/api/runs", job="gamma", since="2026-11-30T16:00:00Z", until="2026-12-01")
    assert utc == [last, first]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("status", "broken", "one of running, success, partial, failed"),
        ("trigger", "cron", "one of startup, schedule, manual, retry"),
        ("since", "yesterday", "YYYY-MM-DD"),
        ("until", "2026-13-01", "YYYY-MM-DD"),
        ("limit", "0", "from 1 to 500"),
        ("before", "abc", "an id"),
    ],
)
def test_a_bad_filter_is_400_naming_it_and_what_it_may_be(
    http: httpx.Client, name: str, value: str, says: str
) -> None:
    for path in ("/api/runs", "/runs"):
        answer = http.get(path, params={name: value})
        assert answer.status_code == 400, (path, name)
        assert f"{name}: " in answer.text and says in answer.text, answer.text
    if name not in ("status", "trigger"):
        assert http.get("/api/alerts", params={name: value}).status_code == 400


# --- alerts ------------------------------------------------------------------------------


def insert_alert(
    conn: db.Conn, type: str, job: str | None, created_at: datetime, *, acked: bool = False
) -> int:
    row = conn.execute(
        "INSERT INTO worker_alerts (type, level, job, message, created_at, acknowledged_at)"
        " VALUES (%s, 'WARNING', %s, 'seeded', %s, %s) RETURNING id",
        (type, job, created_at, created_at if acked else None),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def seed_alerts(conn: db.Conn) -> list[dict[str, Any]]:
    seeded = []
    for i in range(24):
        type = ("JOB_FAILED", "JOB_OVERDUE", "JOB_SLOW")[i % 3]
        job = ("alpha", "beta", None)[i % 4 % 3]
        at = NOW - timedelta(hours=i)
        acked = i % 5 == 0
        alert_id = insert_alert(conn, type, job, at, acked=acked)
        seeded.append({"id": alert_id, "type": type, "job": job, "at": at, "open": not acked})
    return seeded  # newest first already


def open_ids(conn: db.Conn) -> set[int]:
    rows = conn.execute("SELECT id FROM worker_alerts WHERE acknowledged_at IS NULL")
    return {row["id"] for row in rows.fetchall()}


def test_alerts_every_filter_and_the_cursor(http: httpx.Client, conn: db.Conn) -> None:
    seeded = seed_alerts(conn)

    def expect(since: datetime | None = None, **want: Any) -> list[int]:
        return [
            a["id"]
            for a in seeded
            if all(a[k] == v for k, v in want.items()) and (since is None or a["at"] >= since)
        ]

    assert ids(http, "/api/alerts") == expect()
    assert ids(http, "/api/alerts", type="JOB_OVERDUE") == expect(type="JOB_OVERDUE")
    assert ids(http, "/api/alerts", job="beta") == expect(job="beta")
    assert ids(http, "/api/alerts", open=1) == expect(open=True)
    since = NOW - timedelta(hours=12)
    assert ids(http, "/api/alerts", since=iso(since)) == expect(since=since)
    both = ids(http, "/api/alerts", type="JOB_FAILED", job="alpha", open=1, since=iso(since))
    assert both and both == expect(since=since, type="JOB_FAILED", job="alpha", open=True)
    assert walk(http, "/api/alerts", 5) == expect()
    assert walk(http, "/api/alerts", 2, open=1, job="alpha") == expect(open=True, job="alpha")


def test_acknowledge_all_takes_the_filters_and_no_alert_newer_than_shown(
    http: httpx.Client, conn: db.Conn
) -> None:
    seeded = seed_alerts(conn)
    failed = {a["id"] for a in seeded if a["open"] and a["type"] == "JOB_FAILED"}
    acked = http.post("/api/alerts/ack", params={"type": "JOB_FAILED"})
    assert acked.status_code == 200 and acked.json() == {"acknowledged": len(failed)}
    rest = {a["id"] for a in seeded if a["open"]} - failed
    assert open_ids(conn) == rest
    # `upto`: one raised after the page was read stays open.
    upto = max(rest)
    newer = insert_alert(conn, "JOB_SLOW", "alpha", NOW + timedelta(minutes=1))
    answer = http.post("/api/alerts/ack", data={"upto": str(upto)})  # a form's fields too
    assert answer.json() == {"acknowledged": len(rest)}
    assert open_ids(conn) == {newer}
    assert http.post("/api/alerts/ack").json() == {"acknowledged": 1}
    assert open_ids(conn) == set()
    assert http.post("/api/alerts/ack").json() == {"acknowledged": 0}
    assert http.post("/api/alerts/ack", params={"since": "soon"}).status_code == 400


def test_an_alert_links_the_run_it_is_about(http: httpx.Client, conn: db.Conn, db_url: str) -> None:
    run_id = insert_run(conn, "alpha", "failed", "schedule", NOW)
    outcome = alerts.RunOutcome("alpha", run_id, "failed", 4, 4, 1000)
    raised = alerts.evaluate_run(conn, make_settings(db_url), outcome)
    assert raised
    insert_alert(conn, "SERVICE_DOWN", None, NOW)  # about no run
    listed = http.get("/api/alerts").json()["alerts"]
    by_id = {a["id"]: a for a in listed}
    assert all(by_id[alert_id]["run_id"] == run_id for alert_id in raised)
    assert [a["run_id"] for a in listed if a["type"] == "SERVICE_DOWN"] == [None]
    for path in ("/", "/alerts"):
        page = http.get(path).text
        assert f'href="/runs/{run_id}" class="run-link"' in page, path
