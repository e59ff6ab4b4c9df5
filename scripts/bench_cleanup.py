"""Benchmark the cleanup rule's batched delete against one plain DELETE, side by side.

Two identical tables of refresh-token shape (`bench_tokens_a`, `bench_tokens_b`), each with
1,100,000 rows: 1,000,000 expired (`expires_at` spread over the past 30 days, in no order of
id) and 100,000 live (every 11th row, expiring in the future), `expires_at` indexed. Both are
loaded, indexed and VACUUM ANALYZEd the same way, read once each (so both are equally warm),
then, in this order:

1. (b) the naive baseline on B: one `DELETE FROM B WHERE expires_at < now()`, one transaction;
2. (a) the worker's rule on A: `cleanup.delete_in_batches` with `Rule(A, "expires_at", 0)` and
   the default CLEANUP_BATCH_SIZE (5000), one transaction per batch.

A CHECKPOINT precedes each, so neither pays for the other's dirty pages. Autovacuum is off on
both tables, so a vacuum of B (after its delete) cannot run during A's timing.
Targets: (a) <= 2.5 x (b); the longest batch transaction <= 0.25 s; live rows intact in A
(checked: 100,000 left, the same checksum as before, 0 expired left).

Run: `uv run python scripts/bench_cleanup.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import benchlib
from benchlib import Report, log
from psycopg import sql

if TYPE_CHECKING:
    from worker.jobs.cleanup import RuleOutcome

TABLE_A = "bench_tokens_a"
TABLE_B = "bench_tokens_b"
ROWS = 1_100_000
LIVE_EVERY = 11  # every 11th row is live: 100,000 of 1,100,000
LIVE = ROWS // LIVE_EVERY
EXPIRED = ROWS - LIVE
MAX_VS_SINGLE = 2.5
MAX_BATCH_S = 0.25

CREATE_TABLE = """
CREATE TABLE {table} (
    id         bigserial PRIMARY KEY,
    user_id    bigint      NOT NULL,
    token_hash text        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_enabled = false)
"""
# Live rows expire 1 to 30 days ahead, expired ones 1 minute to 30 days ago; neither in id order.
LOAD_ROWS = """
INSERT INTO {table} (user_id, token_hash, expires_at, created_at)
SELECT i %% 50000,
       md5(i::text),
       CASE WHEN i %% %(live_every)s = 0
            THEN now() + interval '1 day' + (hashint4(i) & 1023) * interval '41 minutes'
            ELSE now() - interval '1 minute' - (hashint4(i) & 1023) * interval '42 minutes'
       END,
       now() - interval '60 days' + i * interval '3 seconds'
  FROM generate_series(1, %(rows)s) AS i
"""
LIVE_CHECKSUM = """
SELECT count(*) AS live,
       md5(string_agg(id || ':' || user_id || ':' || token_hash || ':' || expires_at,
                      ',' ORDER BY id)) AS checksum
  FROM {table} WHERE expires_at >= now()
"""
COUNT_EXPIRED = "SELECT count(*) AS n FROM {table} WHERE expires_at < now()"
SINGLE_DELETE = "DELETE FROM {table} WHERE expires_at < now()"


def main() -> int:
    report = Report(f"bench_cleanup: {EXPIRED:,} expired among {ROWS:,} rows, default batches")
    with benchlib.embedded_server() as server_url:
        url = benchlib.create_database(server_url, "bench_cleanup")
        log(f"loading {TABLE_A} and {TABLE_B} ({ROWS:,} rows each)")
        load_tables(url)
        before = live_rows(url, TABLE_A)
        same_data = before == live_rows(url, TABLE_B)
        warm_up(url)
        log(f"(b) one DELETE on {TABLE_B}")
        single_s, single_deleted = time_single_delete(url)
        log(f"(a) the cleanup rule on {TABLE_A}")
        batch_size, outcome = run_rule(url)
        after = live_rows(url, TABLE_A)
        expired_left = count_expired(url, TABLE_A)
    batched_s = outcome.elapsed_seconds
    report.figure("(b) one DELETE, one transaction", rate(single_s, single_deleted))
    report.figure(f"(a) cleanup rule, batches of {batch_size}", rate(batched_s, outcome.deleted))
    report.at_most("(a) / (b)", batched_s / single_s, MAX_VS_SINGLE)
    report.figure("batches (transactions that deleted rows)", str(outcome.batches))
    report.at_most("longest batch transaction", outcome.longest_batch_seconds, MAX_BATCH_S, "s", 3)
    report.expect("rows the rule deleted", outcome.deleted, EXPIRED)
    report.expect("rows the single DELETE deleted", single_deleted, EXPIRED)
    report.expect("expired rows left in A (checked in the table)", expired_left, 0)
    report.expect("live rows left in A (checked in the table)", after[0], LIVE)
    report.expect("live rows' checksum in A unchanged", after[1] == before[1], True)
    report.expect("A and B identical before the runs (live checksum)", same_data, True)
    report.note(
        "order: (b) first, then (a); both tables VACUUM ANALYZEd and read once (a count(*) "
        "and a count over the expires_at index) before either timing, a CHECKPOINT before "
        "each; autovacuum off on both tables, so no vacuum of B runs during (a)."
    )
    return report.finish()


def rate(seconds: float, rows: int) -> str:
    return f"{seconds:.2f} s ({rows / seconds:,.0f} rows/s)"


def statement(template: str, table: str) -> sql.Composed:
    return sql.SQL(template).format(table=sql.Identifier(table))


def load_tables(url: str) -> None:
    with benchlib.connect(url) as conn:
        for table in (TABLE_A, TABLE_B):
            conn.execute(statement("DROP TABLE IF EXISTS {table}", table))
            conn.execute(statement(CREATE_TABLE, table))
            conn.execute(statement(LOAD_ROWS, table), {"live_every": LIVE_EVERY, "rows": ROWS})
            conn.execute(statement("CREATE INDEX ON {table} (expires_at)", table))
        conn.execute(
            sql.SQL("VACUUM ANALYZE {}, {}").format(
                sql.Identifier(TABLE_A), sql.Identifier(TABLE_B)
            )
        )


def live_rows(url: str, table: str) -> tuple[int, str]:
    """(count, checksum) of the live rows: every column of each, in id order."""
    with benchlib.connect(url) as conn:
        row = conn.execute(statement(LIVE_CHECKSUM, table)).fetchone()
    assert row is not None
    return row["live"], row["checksum"]


def count_expired(url: str, table: str) -> int:
    with benchlib.connect(url) as conn:
        row = conn.execute(statement(COUNT_EXPIRED, table)).fetchone()
    assert row is not None
    return int(row["n"])


def warm_up(url: str) -> None:
    """Read both tables and their expiry indexes the same way, so both start equally warm."""
    with benchlib.connect(url) as conn:
        for table in (TABLE_A, TABLE_B):
            conn.execute(statement("SELECT count(*) FROM {table}", table))
            conn.execute(statement(COUNT_EXPIRED, table))


def checkpoint(url: str) -> None:
    with benchlib.connect(url) as conn:
        conn.execute("CHECKPOINT")


def time_single_delete(url: str) -> tuple[float, int]:
    """The naive design: every expired row in one DELETE, one transaction."""
    checkpoint(url)
    with benchlib.connect(url) as conn:
        started = time.monotonic()
        with conn.transaction():
            deleted = conn.execute(statement(SINGLE_DELETE, TABLE_B)).rowcount
        return time.monotonic() - started, deleted


def run_rule(url: str) -> tuple[int, RuleOutcome]:
    """The worker's rule as `cleanup_tokens` runs it (default batch size, JSON log to /dev/null)."""
    from worker import db, logs
    from worker.jobs import cleanup
    from worker.settings import from_env

    settings = from_env({"DATABASE_URL": url})
    checkpoint(url)
    with open(os.devnull, "w") as devnull, db.connect(settings.database) as conn:
        logs.configure("INFO", "json", stream=devnull)
        outcome = cleanup.delete_in_batches(
            conn,
            cleanup.Rule(TABLE_A, "expires_at", 0),
            settings.cleanup_batch_size,
            lambda: False,
            logs.get_logger(job=cleanup.TOKENS),
        )
    return settings.cleanup_batch_size, outcome


if __name__ == "__main__":
    sys.exit(main())
