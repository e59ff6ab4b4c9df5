"""The cleanup service against a real PostgreSQL: retention, batches, locks, extra rules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from tests.conftest import make_context, make_settings, run_job_pass
from tests.support.processes import WorkerProcess
from worker import db
from worker.batches import BatchSizer
from worker.daemon import Daemon
from worker.jobs import cleanup
from worker.jobs.base import JobResult
from worker.logs import get_logger
from worker.registry import JOBS, SERVICES

GUARDED = "cleanup_test_guarded"  # a throwaway table whose deletes a trigger refuses
EXTRA = "cleanup_test_extra"  # a throwaway table for operator-configured rules
WALKED = "cleanup_test_walked"  # a throwaway table for the walks
WALKED_RULE = cleanup.Rule.of(WALKED, "created_at", 7)
EACH_WALK = pytest.mark.parametrize("walk", list(cleanup.Walk))


def add_rows(conn: db.Conn, table: str, column: str, age: str, count: int = 1) -> list[int]:
    """Insert `count` rows whose `column` is `age` ago (a negative age is in the future)."""
    statement = sql.SQL(
        "INSERT INTO {table} ({column}) SELECT now() - %s::interval FROM generate_series(1, %s)"
        " RETURNING id"
    ).format(table=sql.Identifier(table), column=sql.Identifier(column))
    return [row["id"] for row in conn.execute(statement, (age, count)).fetchall()]


def add_tokens(conn: db.Conn, table: str, expires_in: str, count: int = 1) -> list[int]:
    statement = sql.SQL(
        "INSERT INTO {} (user_id, token_hash, expires_at)"
        " SELECT 1, md5(g::text), now() + %s::interval FROM generate_series(1, %s) AS g"
        " RETURNING id"
    ).format(sql.Identifier(table))
    return [row["id"] for row in conn.execute(statement, (expires_in, count)).fetchall()]


def add_run(conn: db.Conn, *, age: str, status: str = "success", job: str = "quota") -> int:
    row = conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, started_at, host, pid)"
        " VALUES (%s, 'schedule', %s, now() - %s::interval, 'test-host', 1) RETURNING id",
        (job, status, age),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def add_alert(conn: db.Conn, *, age: str) -> int:
    row = conn.execute(
        "INSERT INTO worker_alerts (type, level, message, created_at)"
        " VALUES ('TEST', 'INFO', 'old news', now() - %s::interval) RETURNING id",
        (age,),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def ids(conn: db.Conn, table: str) -> set[int]:
    statement = sql.SQL("SELECT id FROM {}").format(sql.Identifier(table))
    return {row["id"] for row in conn.execute(statement).fetchall()}


def run_job(
    conn: db.Conn, job: Callable[..., JobResult], *, dry_run: bool = False, **env: str
) -> JobResult:
    settings = make_settings(conn.info.dsn, **env)
    return run_job_pass(job, make_context(conn, settings, job="cleanup_test", dry_run=dry_run))


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@contextmanager
def throwaway_table(conn: db.Conn, name: str, *, refuse_deletes: bool = False) -> Iterator[None]:
    """A table `name(id, created_at, note)` that exists only for the `with` block."""
    table = sql.Identifier(name)
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL, note text)"
        ).format(table)
    )
    if refuse_deletes:
        conn.execute(
            "CREATE FUNCTION cleanup_test_refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'rows of this table are kept by policy'; END $$"
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER refuse BEFORE DELETE ON {} FOR EACH ROW"
                " EXECUTE FUNCTION cleanup_test_refuse()"
            ).format(table)
        )
    try:
        yield
    finally:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute("DROP FUNCTION IF EXISTS cleanup_test_refuse()")


@contextmanager
def walked_table(
    conn: db.Conn,
    *,
    rows: int,
    every: int,
    every_is_live: bool = True,
    indexed: bool = True,
    pad_bytes: int = 1000,
) -> Iterator[None]:
    """WALKED with `rows` rows in id (and block) order, each `every`th live (created an hour
    ago) and the others 10 days old, or the other way round; analyzed. A note of `pad_bytes`
    bytes per row puts a few rows in each block, so a small table spans several batches of
    the block walk too. `indexed`: an index on created_at."""
    with throwaway_table(conn, WALKED):
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (created_at, note)"
                " SELECT CASE WHEN (g %% %s = 0) = %s THEN now() - interval '1 hour'"
                "             ELSE now() - interval '10 days' END,"
                "        repeat('x', %s)"
                "   FROM generate_series(1, %s) AS g"
            ).format(sql.Identifier(WALKED)),
            (every, every_is_live, pad_bytes, rows),
        )
        if indexed:
            conn.execute(sql.SQL("CREATE INDEX ON {} (created_at)").format(sql.Identifier(WALKED)))
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(WALKED)))
        yield


def live_rows(conn: db.Conn, table: str) -> tuple[int, str]:
    """(count, checksum of every column) of the rows of `table` created in the last 7 days."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) AS n, md5(string_agg(id || ':' || created_at || ':' || note, ','"
            " ORDER BY id)) AS checksum FROM {} WHERE created_at > now() - interval '7 days'"
        ).format(sql.Identifier(table))
    ).fetchone()
    assert row is not None
    return row["n"], row["checksum"]


def old_rows(conn: db.Conn, table: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) AS n FROM {} WHERE created_at < now() - interval '7 days'").format(
            sql.Identifier(table)
        )
    ).fetchone()
    assert row is not None
    return int(row["n"])


def walk_rule(
    conn: db.Conn,
    walk: cleanup.Walk | None,
    size: int = 7,
    should_stop: Callable[[], bool] = lambda: False,
) -> cleanup.RuleOutcome:
    """WALKED_RULE applied on `walk` (None: the one it chooses), `size` rows a batch."""
    return cleanup.delete_in_batches(
        conn, WALKED_RULE, BatchSizer.fixed(size), should_stop, get_logger(), walk=walk
    )


@contextmanager
def table_hidden(conn: db.Conn, name: str) -> Iterator[None]:
    """The app table `name` is missing for the `with` block (renamed, then renamed back)."""
    hidden = sql.Identifier(f"{name}_hidden_by_test")
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(name), hidden))
    try:
        yield
    finally:
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(hidden, sql.Identifier(name)))


def test_tokens_past_expiry_go_and_live_tokens_stay(conn: db.Conn) -> None:
    expired = add_tokens(conn, "refresh_tokens", "-1 minute", 3)
    live = add_tokens(conn, "refresh_tokens", "1 minute", 2)
    expired_resets = add_tokens(conn, "password_reset_tokens", "-2 days", 2)
    live_resets = add_tokens(conn, "password_reset_tokens", "10 minutes", 1)

    result = run_job(conn, cleanup.clean_tokens)

    assert ids(conn, "refresh_tokens") == set(live)
    assert ids(conn, "password_reset_tokens") == set(live_resets)
    assert (result.total, result.succeeded, result.failed) == (2, 2, 0)
    rules = result.details["rules"]
    assert rules["refresh_tokens.expires_at"]["deleted"] == len(expired)
    assert rules["password_reset_tokens.expires_at"]["deleted"] == len(expired_resets)


def test_sessions_older_than_retention_go_and_boundary_rows_stay(conn: db.Conn) -> None:
    add_rows(conn, "scrape_sessions", "created_at", "30 days 1 hour", 4)
    add_rows(conn, "scrape_sessions", "created_at", "400 days", 1)
    boundary = add_rows(conn, "scrape_sessions", "created_at", "29 days 23 hours", 2)
    recent = add_rows(conn, "scrape_sessions", "created_at", "1 hour", 1)

    with capture_logs() as logs:
        result = run_job(conn, cleanup.clean_sessions, SCRAPE_SESSION_RETENTION_DAYS="30")

    assert ids(conn, "scrape_sessions") == set(boundary + recent)
    assert result.details["rules"]["scrape_sessions.created_at"]["deleted"] == 5
    [completed] = events(logs, "cleanup_rule_completed")
    assert (completed["table"], completed["deleted"], completed["batches"]) == (
        "scrape_sessions",
        5,
        1,
    )
    assert isinstance(completed["elapsed_seconds"], float)
    [totals] = events(logs, "cleanup_completed")
    assert (totals["rules"], totals["deleted"], totals["failed_rules"]) == (1, 5, 0)


def test_old_posts_go_with_all_their_comments_and_recent_content_stays(conn: db.Conn) -> None:
    [old_post] = add_rows(conn, "reddit_posts", "created_at", "90 days 1 hour")
    [boundary_post] = add_rows(conn, "reddit_posts", "created_at", "89 days 23 hours")
    comment = (
        "INSERT INTO reddit_comments (post_id, created_at) VALUES (%s, now() - %s::interval)"
        " RETURNING id"
    )
    conn.execute(comment, (old_post, "91 days"))
    conn.execute(comment, (old_post, "1 day"))  # recent, but its post goes: cascade
    conn.execute(comment, (boundary_post, "120 days"))  # old itself: goes, its post stays
    kept = conn.execute(comment, (boundary_post, "2 days")).fetchone()
    assert kept is not None

    result = run_job(conn, cleanup.clean_content, REDDIT_CONTENT_RETENTION_DAYS="90")

    assert ids(conn, "reddit_posts") == {boundary_post}
    assert ids(conn, "reddit_comments") == {kept["id"]}
    rules = result.details["rules"]
    assert list(rules) == ["reddit_comments.created_at", "reddit_posts.created_at"]
    assert rules["reddit_comments.created_at"]["deleted"] == 2  # the old ones, by their age
    assert rules["reddit_posts.created_at"]["deleted"] == 1


def test_history_keeps_running_rows_and_recent_history(conn: db.Conn) -> None:
    add_run(conn, age="31 days")
    add_run(conn, age="200 days", status="failed")
    running = add_run(conn, age="45 days", status="running")
    boundary = add_run(conn, age="29 days 23 hours")
    add_alert(conn, age="90 days 1 hour")
    kept_alert = add_alert(conn, age="89 days 23 hours")

    result = run_job(conn, cleanup.clean_history)

    assert ids(conn, "worker_job_runs") == {running, boundary}
    assert ids(conn, "worker_alerts") == {kept_alert}
    rules = result.details["rules"]
    assert rules["worker_job_runs.started_at"]["deleted"] == 2
    assert rules["worker_alerts.created_at"]["deleted"] == 1


def test_many_rows_go_in_small_batches_while_the_app_updates_a_live_row(
    conn: db.Conn, db_url: str
) -> None:
    add_rows(conn, "scrape_sessions", "created_at", "31 days", 50)
    [live] = add_rows(conn, "scrape_sessions", "created_at", "1 day")
    conn.execute("UPDATE scrape_sessions SET url = repeat('x', 1000)")  # a few rows a block
    # If a batch ever waited on the app's lock, fail the test instead of hanging it.
    conn.execute("SET statement_timeout = '10s'")
    with psycopg.connect(db_url) as app:
        app.execute("UPDATE scrape_sessions SET url = 'edited by the app' WHERE id = %s", (live,))
        # The app's transaction is open, holding the live row's lock, while cleanup runs.
        result = run_job(conn, cleanup.clean_sessions, CLEANUP_BATCH_SIZE="7")
        assert app.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        app.commit()

    rule = result.details["rules"]["scrape_sessions.created_at"]
    assert (rule["status"], rule["deleted"], rule["min_batch_size"]) == ("completed", 50, 7)
    assert rule["walk"] == "blocks" and rule["batches"] > 1
    assert result.failed == 0
    row = conn.execute("SELECT id, url FROM scrape_sessions").fetchall()
    assert row == [{"id": live, "url": "edited by the app"}]


@EACH_WALK
def test_a_batch_waiting_on_an_app_row_lock_fails_fast_and_rolls_back(
    conn: db.Conn, db_url: str, walk: cleanup.Walk
) -> None:
    expired = add_tokens(conn, "refresh_tokens", "-1 hour", 5)
    rule = cleanup.Rule.of("refresh_tokens", "expires_at", 0)
    conn.execute("SET statement_timeout = '10s'")  # a regression fails instead of hanging
    with psycopg.connect(db_url) as app:
        # The app checks (and holds) one expired token, as a login flow would.
        app.execute("SELECT id FROM refresh_tokens WHERE id = %s FOR UPDATE", (expired[0],))
        with capture_logs() as logs:
            outcome = cleanup.delete_in_batches(
                conn,
                rule,
                BatchSizer.fixed(100),
                lambda: False,
                get_logger(),
                lock_timeout_ms=100,
                walk=walk,
            )
        app.execute("UPDATE refresh_tokens SET token_hash = 'rotated' WHERE id = %s", (expired[0],))
        app.commit()

    assert outcome.status == cleanup.RuleStatus.FAILED
    assert outcome.error is not None and "lock timeout" in outcome.error
    assert outcome.elapsed_seconds < 5  # it gave up; it did not wait for the app
    assert outcome.deleted == 0 and ids(conn, "refresh_tokens") == set(expired)  # rolled back
    assert conn.execute(
        "SELECT token_hash FROM refresh_tokens WHERE id = %s", (expired[0],)
    ).fetchone() == {"token_hash": "rotated"}
    [failed] = events(logs, "cleanup_rule_failed")
    assert failed["log_level"] == "error" and failed["table"] == "refresh_tokens"


@EACH_WALK
def test_a_stop_request_is_honoured_between_batches(conn: db.Conn, walk: cleanup.Walk) -> None:
    asked: list[int] = []

    def stop_after_first_batch() -> bool:
        asked.append(1)
        return True

    with walked_table(conn, rows=100, every=3):
        outcome = walk_rule(conn, walk, should_stop=stop_after_first_batch)
        left = old_rows(conn, WALKED)

    assert (outcome.walk, outcome.status, outcome.batches) == (
        walk,
        cleanup.RuleStatus.INTERRUPTED,
        1,
    )
    assert len(asked) == 1
    assert 0 < outcome.deleted < 67 and left == 67 - outcome.deleted  # the first batch stays done


@EACH_WALK
def test_each_batch_reports_the_rows_deleted_so_far_of_the_estimate(
    conn: db.Conn, walk: cleanup.Walk
) -> None:
    reported: list[tuple[int, int]] = []
    with walked_table(conn, rows=100, every=3):
        outcome = cleanup.delete_in_batches(
            conn,
            WALKED_RULE,
            BatchSizer.fixed(7),
            lambda: False,
            get_logger(),
            walk=walk,
            on_batch=lambda deleted, matching: reported.append((deleted, matching)),
        )
    done = [deleted for deleted, _ in reported]
    assert done[0] == 0 and done == sorted(done) and done[-1] == outcome.deleted == 67
    assert len(reported) >= 67 // 7  # the start, then every batch
    assert all(60 <= matching <= 75 for _, matching in reported)  # the planner's, analyzed


def test_a_pass_reports_its_rows_across_rules(conn: db.Conn) -> None:
    add_tokens(conn, "refresh_tokens", "-1 day", 30)
    add_tokens(conn, "password_reset_tokens", "-1 day", 20)
    conn.execute("ANALYZE refresh_tokens; ANALYZE password_reset_tokens")
    reported: list[tuple[int, int | None]] = []
    settings = make_settings(conn.info.dsn, CLEANUP_BATCH_SIZE="10")
    ctx = replace(
        make_context(conn, settings, job=cleanup.TOKENS),
        progress=lambda done, total: reported.append((done, total)),
    )
    cleanup.clean_tokens(ctx)
    done = [d for d, _ in reported]
    assert done == sorted(done) and reported[-1] == (50, 50)
    assert all(total is not None and total >= d for d, total in reported)
    assert 30 in done  # the first table's rows, then the second's on top


def test_missing_table_and_failing_batch_leave_other_rules_running(conn: db.Conn) -> None:
    expired = add_tokens(conn, "refresh_tokens", "-1 day", 3)
    old_run = add_run(conn, age="60 days")
    running = add_run(conn, age="60 days", status="running")
    old_alert = add_alert(conn, age="100 days")
    settings = make_settings(conn.info.dsn, CLEANUP_EXTRA_RULES=f"{GUARDED}.created_at:7")
    with throwaway_table(conn, GUARDED, refuse_deletes=True):
        guarded = add_rows(conn, GUARDED, "created_at", "30 days", 4)
        with table_hidden(conn, "password_reset_tokens"), capture_logs() as logs:
            exit_code = Daemon(settings, SERVICES["cleanup"]).run(once=True)
        assert ids(conn, GUARDED) == set(guarded)  # the failing batch rolled back alone

    assert exit_code == 0  # partial is not failed
    assert not set(expired) & ids(conn, "refresh_tokens")
    assert running in ids(conn, "worker_job_runs") and old_run not in ids(conn, "worker_job_runs")
    assert old_alert not in ids(conn, "worker_alerts")
    runs = {
        row["job"]: row
        for row in conn.execute(
            "SELECT job, status, succeeded, failed, details FROM worker_job_runs"
            " WHERE job LIKE 'cleanup%'"
        )
    }
    assert {job: row["status"] for job, row in runs.items()} == {
        "cleanup_tokens": "success",
        "cleanup_sessions": "success",
        "cleanup_content": "success",
        "cleanup_history": "partial",
    }
    tokens = runs["cleanup_tokens"]["details"]["rules"]
    assert tokens["password_reset_tokens.expires_at"]["status"] == "table_missing"
    assert tokens["refresh_tokens.expires_at"]["deleted"] == 3
    history = runs["cleanup_history"]
    assert (history["succeeded"], history["failed"]) == (2, 1)
    assert history["details"]["rules"]["worker_job_runs.started_at"]["deleted"] == 1
    assert history["details"]["rules"]["worker_alerts.created_at"]["deleted"] == 1
    [failure] = history["details"]["failures"]
    assert failure["item"] == f"{GUARDED}.created_at" and failure["reason"] == "batch_failed"
    assert "kept by policy" in failure["error"]
    [missing] = events(logs, "cleanup_table_missing")
    assert (missing["log_level"], missing["table"]) == ("warning", "password_reset_tokens")


def test_valid_extra_rules_are_applied(conn: db.Conn) -> None:
    with throwaway_table(conn, EXTRA):
        old = add_rows(conn, EXTRA, "created_at", "7 days 1 hour", 3)
        recent = add_rows(conn, EXTRA, "created_at", "6 days 23 hours", 2)
        settings = make_settings(
            conn.info.dsn, CLEANUP_EXTRA_RULES=f" public.{EXTRA}.created_at:7 , "
        )
        cleanup.check_extra_rules(conn, settings)  # accepted at start
        result = run_job_pass(
            cleanup.clean_history, make_context(conn, settings, job=cleanup.HISTORY)
        )
        remaining = ids(conn, EXTRA)

    assert remaining == set(recent)
    assert result.details["rules"][f"public.{EXTRA}.created_at"]["deleted"] == len(old)
    assert result.failed == 0


@pytest.mark.parametrize(
    "rules",
    [
        "users; drop table x",
        '"scrape_sessions".created_at:7',
        "scrape_sessions.created_at:0",
        "scrape sessions.created_at:7",
        "scrape_sessions.created_at:7,scrape_sessions.no_such_column:7",
        "scrape_sessions.url:7",  # a text column: not an age
        "no_such_table.created_at:7",
    ],
)
def test_hostile_or_unusable_extra_rules_are_refused_at_start(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess], rules: str
) -> None:
    old = add_rows(conn, "scrape_sessions", "created_at", "100 days", 2)

    worker = spawn("cleanup", "--once", env={"DATABASE_URL": db_url, "CLEANUP_EXTRA_RULES": rules})
    code = worker.wait()

    assert code == 2
    assert "CLEANUP_EXTRA_RULES" in worker.stderr()
    assert ids(conn, "scrape_sessions") == set(old)  # nothing ran
    assert conn.execute("SELECT count(*) AS n FROM worker_job_runs").fetchone() == {"n": 0}
    assert not worker.events("job_started")


def test_clock_jobs_are_due_at_their_time_in_schedule_timezone() -> None:
    settings = make_settings("postgresql://localhost/unused", SCHEDULE_TIMEZONE="Asia/Shanghai")
    thursday = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # 20:00 in Shanghai

    sessions = JOBS["cleanup_sessions"].schedule(settings)
    content = JOBS["cleanup_content"].schedule(settings)
    tokens = JOBS["cleanup_tokens"].schedule(settings)

    assert sessions.text == "cron 0 2 * * * Asia/Shanghai"
    assert sessions.first_due(thursday) == datetime(2026, 11, 26, 18, 0, tzinfo=UTC)
    assert content.text == "cron 30 2 * * 0 Asia/Shanghai"  # Sunday 02:30
    assert content.first_due(thursday) == datetime(2026, 11, 28, 18, 30, tzinfo=UTC)
    assert tokens.text == "every 1h"
    assert tokens.first_due(thursday) == thursday + timedelta(hours=1)


def test_dry_run_reports_counts_and_deletes_nothing(conn: db.Conn) -> None:
    add_tokens(conn, "refresh_tokens", "-1 hour", 3)
    add_rows(conn, "scrape_sessions", "created_at", "31 days", 4)
    add_rows(conn, "scrape_sessions", "created_at", "1 day", 1)
    add_run(conn, age="40 days")
    before = {t: ids(conn, t) for t in ("refresh_tokens", "scrape_sessions", "worker_job_runs")}

    with capture_logs() as logs:
        tokens = run_job(conn, cleanup.clean_tokens, dry_run=True)
        sessions = run_job(conn, cleanup.clean_sessions, dry_run=True)
        history = run_job(conn, cleanup.clean_history, dry_run=True)

    assert {t: ids(conn, t) for t in before} == before
    assert tokens.details["rules"]["refresh_tokens.expires_at"] == {
        "status": "dry_run",
        "would_delete": 3,
    }
    assert sessions.details["rules"]["scrape_sessions.created_at"]["would_delete"] == 4
    assert history.details["rules"]["worker_job_runs.started_at"]["would_delete"] == 1
    would = {e["rule"]: e["count"] for e in events(logs, "cleanup_rule_would_delete")}
    assert would["refresh_tokens.expires_at"] == 3
    assert would["scrape_sessions.created_at"] == 4
    assert not events(logs, "cleanup_rule_completed")
    totals = [(e["would_delete"], e["dry_run"]) for e in events(logs, "cleanup_completed")]
    assert totals == [(3, True), (4, True), (1, True)]
    assert [(r.total, r.succeeded, r.failed) for r in (tokens, sessions, history)] == [
        (2, 2, 0),  # one per rule counted
        (1, 1, 0),
        (2, 2, 0),
    ]


def test_cleanup_once_deletes_old_rows_and_prints_per_rule_counts(
    conn: db.Conn, db_url: str, spawn: Callable[..., WorkerProcess]
) -> None:
    add_tokens(conn, "refresh_tokens", "-1 hour", 2)
    live_token = add_tokens(conn, "refresh_tokens", "1 hour", 1)
    add_rows(conn, "scrape_sessions", "created_at", "31 days", 3)
    [post] = add_rows(conn, "reddit_posts", "created_at", "100 days")
    conn.execute("INSERT INTO reddit_comments (post_id) VALUES (%s)", (post,))
    with throwaway_table(conn, EXTRA):
        add_rows(conn, EXTRA, "created_at", "3 days", 2)
        worker = spawn(
            "cleanup",
            "--once",
            env={
                "DATABASE_URL": db_url,
                "CLEANUP_EXTRA_RULES": f"{EXTRA}.created_at:2",
                "CLEANUP_BATCH_SIZE": "2",
            },
        )
        code = worker.wait(60)
        extra_left = ids(conn, EXTRA)

    assert code == 0, worker.stderr()
    counts = {e["rule"]: e["deleted"] for e in worker.events("cleanup_rule_completed")}
    assert counts == {
        "refresh_tokens.expires_at": 2,
        "password_reset_tokens.expires_at": 0,
        "scrape_sessions.created_at": 3,
        "reddit_comments.created_at": 0,
        "reddit_posts.created_at": 1,
        "worker_job_runs.started_at": 0,
        "worker_alerts.created_at": 0,
        f"{EXTRA}.created_at": 2,
    }
    assert ids(conn, "refresh_tokens") == set(live_token)
    assert ids(conn, "scrape_sessions") == set() and ids(conn, "reddit_comments") == set()
    assert extra_left == set()
    assert len(worker.events("cleanup_completed")) == 4
    statuses = conn.execute("SELECT job, status FROM worker_job_runs ORDER BY id").fetchall()
    assert [(r["job"], r["status"]) for r in statuses] == [
        (job, "success")
        for job in ("cleanup_tokens", "cleanup_sessions", "cleanup_content", "cleanup_history")
    ]


@EACH_WALK
def test_a_token_the_app_extends_during_the_batch_is_not_deleted(
    db_url: str, conn: db.Conn, walk: cleanup.Walk
) -> None:
    import threading
    import time

    expired = add_tokens(conn, "refresh_tokens", "-1 hour", count=3)
    extended = expired[1]
    with psycopg.connect(db_url) as app:
        # The app is extending a token that is still expired in every other session's view.
        app.execute(
            "UPDATE refresh_tokens SET expires_at = now() + interval '30 days' WHERE id = %s",
            (extended,),
        )
        outcomes: list[cleanup.RuleOutcome] = []
        rule = cleanup.Rule.of("refresh_tokens", "expires_at", 0)

        def clean() -> None:
            with psycopg.connect(db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as own:
                outcomes.append(
                    cleanup.delete_in_batches(
                        own, rule, BatchSizer.fixed(100), lambda: False, get_logger(), walk=walk
                    )
                )

        worker = threading.Thread(target=clean)
        worker.start()
        deadline = time.monotonic() + 5
        while not conn.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted"
        ).fetchone():
            assert time.monotonic() < deadline, "the batch never waited on the app's row"
            time.sleep(0.01)
        app.commit()  # the batch now re-checks the extended row and leaves it
        worker.join(10)
    assert [(o.status, o.deleted) for o in outcomes] == [("completed", 2)]
    assert ids(conn, "refresh_tokens") == {extended}


# --- walks -------------------------------------------------------------------------------


@EACH_WALK
@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "no_index"])
def test_each_walk_deletes_exactly_the_matching_rows(
    conn: db.Conn, walk: cleanup.Walk, indexed: bool
) -> None:
    with walked_table(conn, rows=100, every=3, indexed=indexed):
        before = live_rows(conn, WALKED)
        outcome = walk_rule(conn, walk)
        after, left = live_rows(conn, WALKED), old_rows(conn, WALKED)

    assert (outcome.walk, outcome.status, outcome.deleted, left) == (walk, "completed", 67, 0)
    assert outcome.batches > 1 and outcome.min_batch_size == 7
    assert after == before and after[0] == 33  # every live row intact, every column


@EACH_WALK
def test_a_row_the_app_extends_between_batches_survives(
    conn: db.Conn, db_url: str, walk: cleanup.Walk
) -> None:
    with walked_table(conn, rows=100, every=3), psycopg.connect(db_url, autocommit=True) as app:
        # The old row with the largest id: the last one either walk reaches (its created_at
        # ties with every other old row's, and the index orders ties by their place).
        [last_old] = conn.execute(
            sql.SQL(
                "SELECT max(id) AS id FROM {} WHERE created_at < now() - interval '7 days'"
            ).format(sql.Identifier(WALKED))
        ).fetchall()
        extended: list[int] = []

        def app_extends_once() -> bool:  # called between batches: the app runs meanwhile
            if not extended:
                app.execute(
                    sql.SQL("UPDATE {} SET created_at = now() WHERE id = %s").format(
                        sql.Identifier(WALKED)
                    ),
                    (last_old["id"],),
                )
                extended.append(last_old["id"])
            return False

        outcome = walk_rule(conn, walk, should_stop=app_extends_once)
        left = ids(conn, WALKED)

    assert extended and outcome.batches > 1
    assert (outcome.status, outcome.deleted) == ("completed", 66)
    assert last_old["id"] in left and len(left) == 34


@EACH_WALK
def test_walks_need_no_id_column(conn: db.Conn, walk: cleanup.Walk) -> None:
    conn.execute("CREATE TABLE cleanup_test_keyless (seen_at timestamptz NOT NULL, note text)")
    try:
        conn.execute(
            "INSERT INTO cleanup_test_keyless"
            " SELECT now() - CASE WHEN g % 4 = 0 THEN interval '1 day' ELSE interval '10 days' END,"
            "        repeat('x', 1000)"
            "   FROM generate_series(1, 40) AS g"
        )
        rule = cleanup.Rule.of("cleanup_test_keyless", "seen_at", 7)
        outcome = cleanup.delete_in_batches(
            conn, rule, BatchSizer.fixed(5), lambda: False, get_logger(), walk=walk
        )
        left = conn.execute("SELECT count(*) AS n FROM cleanup_test_keyless").fetchone()
    finally:
        conn.execute("DROP TABLE cleanup_test_keyless")
    assert (outcome.status, outcome.deleted) == ("completed", 30)
    assert outcome.batches > 1
    assert left == {"n": 10}


@EACH_WALK
def test_walks_delete_across_the_partitions_of_a_partitioned_table(
    conn: db.Conn, walk: cleanup.Walk
) -> None:
    conn.execute(
        "CREATE TABLE cleanup_test_parts (id bigint, created_at timestamptz, note text)"
        " PARTITION BY RANGE (id)"
    )
    try:
        conn.execute(
            "CREATE TABLE cleanup_test_parts_1 PARTITION OF cleanup_test_parts"
            " FOR VALUES FROM (0) TO (30)"
        )
        conn.execute(
            "CREATE TABLE cleanup_test_parts_2 PARTITION OF cleanup_test_parts"
            " FOR VALUES FROM (30) TO (1000)"
        )
        conn.execute("CREATE INDEX ON cleanup_test_parts (created_at)")
        conn.execute(
            "INSERT INTO cleanup_test_parts"
            " SELECT g, now() - CASE WHEN g % 3 = 0 THEN interval '1 day' ELSE interval '10 days'"
            "        END, repeat('x', 1000)"
            "   FROM generate_series(1, 100) AS g"
        )
        rule = cleanup.Rule.of("cleanup_test_parts", "created_at", 7)
        chosen = cleanup.choose_walk(conn, rule)
        outcome = cleanup.delete_in_batches(
            conn, rule, BatchSizer.fixed(7), lambda: False, get_logger(), walk=walk
        )
        left = conn.execute(
            "SELECT count(*) AS n, bool_and(id % 3 = 0) AS all_live FROM cleanup_test_parts"
        ).fetchone()
    finally:
        conn.execute("DROP TABLE cleanup_test_parts")
    assert chosen == cleanup.Walk.BLOCKS  # two thirds of the rows match
    assert (outcome.status, outcome.deleted) == ("completed", 67)
    assert left == {"n": 33, "all_live": True}


@EACH_WALK
def test_each_walk_keeps_a_running_run_however_old(conn: db.Conn, walk: cleanup.Walk) -> None:
    old_runs = [add_run(conn, age="40 days") for _ in range(5)]
    running = add_run(conn, age="45 days", status="running")
    recent = add_run(conn, age="1 day")
    rule = cleanup.Rule.of("worker_job_runs", "started_at", 30, kept="running_run")

    outcome = cleanup.delete_in_batches(
        conn, rule, BatchSizer.fixed(2), lambda: False, get_logger(), walk=walk
    )

    assert (outcome.status, outcome.deleted) == ("completed", len(old_runs))
    assert ids(conn, "worker_job_runs") == {running, recent}


@pytest.mark.parametrize(
    ("every", "every_is_live", "index", "walk"),
    [
        (3, True, "created_at", cleanup.Walk.BLOCKS),  # two thirds match
        (20, False, "created_at", cleanup.Walk.BLOCKS),  # 5 %: above the share
        (200, False, "created_at", cleanup.Walk.INDEX),  # 0.5 %: below it, and indexed
        (200, False, None, cleanup.Walk.BLOCKS),  # no index on the rule's column
        (200, False, "note, created_at", cleanup.Walk.BLOCKS),  # not led by the column
        (200, False, "created_at) WHERE (note IS NULL", cleanup.Walk.BLOCKS),  # partial
    ],
    ids=["dense", "5_percent", "sparse", "sparse_no_index", "other_leading", "partial_index"],
)
def test_the_walk_follows_the_planners_estimate_and_the_indexes(
    conn: db.Conn, every: int, every_is_live: bool, index: str | None, walk: cleanup.Walk
) -> None:
    with walked_table(
        conn, rows=20_000, every=every, every_is_live=every_is_live, indexed=False, pad_bytes=0
    ):
        if index is not None:
            conn.execute(sql.SQL(f"CREATE INDEX ON {WALKED} ({index})"))
        chosen = cleanup.choose_walk(conn, WALKED_RULE)
        outcome = walk_rule(conn, None, size=500)  # the walk it chooses
        left = old_rows(conn, WALKED)

    assert (chosen, outcome.walk, outcome.status, left) == (walk, walk, "completed", 0)


def test_no_walk_for_a_missing_table(conn: db.Conn) -> None:
    assert cleanup.choose_walk(conn, cleanup.Rule.of("no_such_table", "created_at", 7)) is None


# --- batch sizes -------------------------------------------------------------------------


def sizer(size: int = 1000, target_ms: int = 50) -> BatchSizer:
    """A sizer at `size` rows, with the bounds CLEANUP_BATCH_SIZE=`size` gives."""
    return BatchSizer(size, target_ms / 1000, minimum=min(100, size), maximum=100 * size)


def test_sizer_from_settings_starts_at_a_tenth_between_100_and_100_times_the_setting() -> None:
    def from_env(size: int) -> BatchSizer:
        settings = make_settings(
            "postgresql://localhost/unused",
            CLEANUP_BATCH_SIZE=str(size),
            CLEANUP_BATCH_TARGET_MS="20",
        )
        return BatchSizer.from_settings(settings)

    default = from_env(5000)
    assert (default.size, default.minimum, default.maximum) == (500, 100, 500_000)
    assert default.target_s == 0.020
    assert from_env(500).size == 100  # never below the floor
    small = from_env(7)  # a setting below 100 is its own floor
    assert (small.size, small.minimum, small.maximum) == (7, 7, 700)


def test_sizer_aims_at_the_target_and_grows_at_most_twice_per_batch() -> None:
    s = sizer(1000, target_ms=50)
    # 1000 rows in 10 ms is 100,000 rows/s: 5000 rows would take 50 ms, but growth is capped.
    assert s.next_size(1000, 0.010) == 2000
    assert s.next_size(2000, 0.020) == 4000
    assert s.next_size(4000, 0.040) == 5000  # the rate times 50 ms: no longer capped
    assert s.next_size(5000, 0.050) == 5000  # on target: it stays


def test_sizer_shrinks_at_once_after_a_slow_batch() -> None:
    s = sizer(1000, target_ms=50)
    for _ in range(5):
        s.next_size(1000, 0.050)  # steady, on target
    # Ten times slower (the table got busy): the next batch is sized from this batch alone,
    # not from an average that remembers the quiet batches.
    assert s.next_size(1000, 0.500) == 100


def test_sizer_averages_out_one_fast_batch() -> None:
    s = sizer(1000, target_ms=50)
    for _ in range(5):
        s.next_size(1000, 0.050)
    # One batch ten times faster than the others moves the size, but far less than 10x.
    assert 1000 < s.next_size(1000, 0.005) < 2000


def test_sizer_stays_within_its_bounds() -> None:
    s = sizer(10, target_ms=1000)
    sizes = [s.next_size(s.size, 0.001) for _ in range(20)]  # very fast batches
    assert max(sizes) == 1000 and sizes[-1] == 1000  # 100 x CLEANUP_BATCH_SIZE
    s = sizer(5000, target_ms=10)
    sizes = [s.next_size(s.size, 2.0) for _ in range(5)]  # very slow batches
    assert min(sizes) == 100 and sizes[-1] == 100
    assert BatchSizer.fixed(7).next_size(7, 10.0) == 7


def test_sizer_learns_nothing_from_a_batch_too_fast_to_time() -> None:
    s = sizer(1000)
    assert s.next_size(1000, 0.0) == 1000


@contextmanager
def slow_deletes(conn: db.Conn, name: str, sleep_s: float) -> Iterator[None]:
    """A throwaway table each of whose DELETE statements takes at least `sleep_s`."""
    with throwaway_table(conn, name):
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION cleanup_test_slow() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep({}); RETURN NULL; END $$"
            ).format(sql.Literal(sleep_s))
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER slow BEFORE DELETE ON {} FOR EACH STATEMENT"
                " EXECUTE FUNCTION cleanup_test_slow()"
            ).format(sql.Identifier(name))
        )
        try:
            yield
        finally:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            conn.execute("DROP FUNCTION cleanup_test_slow()")


def test_batches_grow_when_fast_up_to_100_times_the_setting(conn: db.Conn) -> None:
    add_rows(conn, "scrape_sessions", "created_at", "31 days", 1500)
    kept = add_rows(conn, "scrape_sessions", "created_at", "1 day", 3)

    # A generous target: a few rows per batch are always far faster than a second.
    result = run_job(
        conn, cleanup.clean_sessions, CLEANUP_BATCH_SIZE="2", CLEANUP_BATCH_TARGET_MS="1000"
    )

    rule = result.details["rules"]["scrape_sessions.created_at"]
    assert (rule["walk"], rule["status"], rule["deleted"]) == ("blocks", "completed", 1500)
    # 2, 4, 8 ... 128, then 200 (100 x 2) rows' worth of blocks until the table ends.
    assert (rule["min_batch_size"], rule["max_batch_size"]) == (2, 200)
    assert ids(conn, "scrape_sessions") == set(kept)


def test_index_walk_batches_grow_by_rows_up_to_100_times_the_setting(conn: db.Conn) -> None:
    add_rows(conn, "scrape_sessions", "created_at", "31 days", 1500)
    kept = add_rows(conn, "scrape_sessions", "created_at", "1 day", 3)
    settings = make_settings(conn.info.dsn, CLEANUP_BATCH_SIZE="2", CLEANUP_BATCH_TARGET_MS="1000")
    rule = cleanup.Rule.of("scrape_sessions", "created_at", 30)

    outcome = cleanup.delete_in_batches(
        conn,
        rule,
        BatchSizer.from_settings(settings),
        lambda: False,
        get_logger(),
        walk=cleanup.Walk.INDEX,
    )

    assert (outcome.status, outcome.deleted) == ("completed", 1500)
    # 2, 4, 8 ... 128, then 200 (100 x 2) until the rows run out.
    assert (outcome.min_batch_size, outcome.max_batch_size, outcome.final_batch_size) == (
        2,
        200,
        200,
    )
    assert outcome.batches == 7 + math.ceil((1500 - 254) / 200)
    assert ids(conn, "scrape_sessions") == set(kept)


@EACH_WALK
def test_batches_shrink_when_slow_down_to_100_rows(conn: db.Conn, walk: cleanup.Walk) -> None:
    table = "cleanup_test_slow"
    with slow_deletes(conn, table, sleep_s=0.05):
        add_rows(conn, table, "created_at", "10 days", 3000)
        kept = add_rows(conn, table, "created_at", "1 day", 2)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        # The first batch takes a tenth of CLEANUP_BATCH_SIZE: 1000 rows.
        settings = make_settings(
            conn.info.dsn, CLEANUP_BATCH_SIZE="10000", CLEANUP_BATCH_TARGET_MS="10"
        )
        rule = cleanup.Rule.of(table, "created_at", 7)
        with capture_logs() as logs:
            outcome = cleanup.delete_in_batches(
                conn,
                rule,
                BatchSizer.from_settings(settings),
                lambda: False,
                get_logger(),
                walk=walk,
            )
        left = ids(conn, table)

    assert (outcome.status, outcome.deleted) == ("completed", 3000)
    # Every DELETE takes 50 ms whatever its size, five times the target: 1000 rows, then
    # about 200 (sized from the first batch alone), then the floor.
    assert (outcome.max_batch_size, outcome.min_batch_size, outcome.final_batch_size) == (
        1000,
        100,
        100,
    )
    assert left == set(kept)
    [completed] = events(logs, "cleanup_rule_completed")
    assert (completed["max_batch_size"], completed["min_batch_size"]) == (1000, 100)
    assert completed["walk"] == walk
