"""Benchmark the cleanup rule's batched delete against one plain DELETE, side by side.

Identical tables of refresh-token shape, each of 1,100,000 rows: 1,000,000 expired
(`expires_at` spread over the past 30 days, in no order of id) and 100,000 live (every 11th
row, expiring 1 to 30 days ahead), `expires_at` indexed; loaded once from generate_series and
copied row for row, indexed, VACUUM ANALYZEd. Two rounds, each on its own pair of tables:

- (b) the naive design: one `DELETE FROM t WHERE expires_at < now()` in one transaction;
- (a) the worker's rule: `cleanup.delete_in_batches(conn, Rule(t, "expires_at", 0), ...)` with
  the default CLEANUP_BATCH_SIZE (5000), one transaction per batch.

Round 1 runs (b) then (a), round 2 (a) then (b), so neither gains from its place. Before a
round both its tables are read the same way (equally warm); a CHECKPOINT precedes each timing;
autovacuum is off on every table, so no vacuum of a finished table runs during a timing.
Targets: sum (a) <= 2.5 x sum (b); longest batch transaction <= 0.25 s; live rows intact
(checked in the table: 100,000 left, the same checksum of all their columns as before, and 0
expired left). A fifth table gets the rule with synchronize_seqscans off, for the record.

Run: `uv run python scripts/bench_cleanup.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import benchlib
from benchlib import Report, log
from psycopg import sql

if TYPE_CHECKING:
    from worker.jobs.cleanup import RuleOutcome

ROWS = 1_100_000
LIVE_EVERY = 11  # every 11th row is live: 100,000 of 1,100,000
LIVE = ROWS // LIVE_EVERY
EXPIRED = ROWS - LIVE
MAX_VS_SINGLE = 2.5
MAX_BATCH_S = 0.25


@dataclass(frozen=True)
class Round:
    """One side-by-side measurement: the rule on `rule_table`, one DELETE on `delete_table`."""

    rule_table: str
    delete_table: str
    rule_first: bool


# Two rounds in opposite orders, so neither design gains from going second (warmer caches,
# a quieter machine) or first (no checkpoint debt): the ratio is of the two rounds' sums.
ROUNDS = (
    Round("bench_tokens_a1", "bench_tokens_b1", rule_first=False),
    Round("bench_tokens_a2", "bench_tokens_b2", rule_first=True),
)
# The rule once more with synchronized scans off, for the record (no target): on this small
# embedded server (shared_buffers 128 MB) a seq scan of a table larger than a quarter of
# shared_buffers starts where the previous one stopped, so each batch's `SELECT id ... LIMIT`
# resumes past the rows already deleted; a server with shared_buffers over 4x the table
# starts every such scan at block 0.
NO_SYNC_TABLE = "bench_tokens_c"
TABLES = [*(table for r in ROUNDS for table in (r.rule_table, r.delete_table)), NO_SYNC_TABLE]
RULE_TABLES = [*(r.rule_table for r in ROUNDS), NO_SYNC_TABLE]

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
        log(f"loading {len(TABLES)} identical tables of {ROWS:,} rows")
        load_tables(url)
        before = {table: live_rows(url, table) for table in TABLES}
        results = [measure_round(url, r) for r in ROUNDS]
        warm_up(url, NO_SYNC_TABLE)
        log(f"the rule on {NO_SYNC_TABLE} with synchronize_seqscans off")
        _, no_sync = run_rule(url, NO_SYNC_TABLE, sync_scans=False)
        after = {table: live_rows(url, table) for table in RULE_TABLES}
        expired_left = sum(count_expired(url, table) for table in RULE_TABLES)
    report_results(report, results)
    mean_single_s = sum(res.single_s for res in results) / len(results)
    report.figure(
        "(a) with synchronize_seqscans off (no target), / mean (b)",
        f"{rate(no_sync.elapsed_seconds, no_sync.deleted)}, "
        f"{no_sync.elapsed_seconds / mean_single_s:.2f}, "
        f"longest batch {no_sync.longest_batch_seconds:.3f} s",
    )
    report.expect(
        "tables identical before the runs (live rows' checksum)", len(set(before.values())), 1
    )
    report.expect("expired rows left after the rule (checked in the table)", expired_left, 0)
    report.expect(
        "live rows left after the rule, each run (checked in the table)",
        [after[t][0] for t in RULE_TABLES],
        [LIVE] * len(RULE_TABLES),
    )
    report.expect(
        "live rows' checksum unchanged by the rule, each run",
        [after[t][1] == before[t][1] for t in RULE_TABLES],
        [True] * len(RULE_TABLES),
    )
    report.note(
        "order: round 1 ran the single DELETE first, round 2 the rule first; each round on its "
        "own pair of identical tables. Before each round both of its tables were read once "
        "(count(*) and a count over the expires_at index); a CHECKPOINT preceded each timing; "
        "autovacuum was off on all tables, so no vacuum of a finished table ran during a timing."
    )
    report.note(
        "synchronize_seqscans off is how a server whose shared_buffers exceed 4x the table "
        "scans: batches walk the table by id range, so the rule must not depend on "
        "synchronized scans (informational, no target)."
    )
    return report.finish()


@dataclass(frozen=True)
class RoundResult:
    round: Round
    single_s: float
    single_deleted: int
    batch_size: int
    outcome: RuleOutcome


def measure_round(url: str, r: Round) -> RoundResult:
    warm_up(url, r.rule_table, r.delete_table)
    first = "the rule" if r.rule_first else "the single DELETE"
    log(f"round on {r.rule_table} / {r.delete_table}, {first} first")
    if r.rule_first:
        batch_size, outcome = run_rule(url, r.rule_table)
        single_s, single_deleted = time_single_delete(url, r.delete_table)
    else:
        single_s, single_deleted = time_single_delete(url, r.delete_table)
        batch_size, outcome = run_rule(url, r.rule_table)
    return RoundResult(r, single_s, single_deleted, batch_size, outcome)


def report_results(report: Report, results: list[RoundResult]) -> None:
    for i, res in enumerate(results, 1):
        order = "rule first" if res.round.rule_first else "DELETE first"
        batched_s = res.outcome.elapsed_seconds
        report.figure(
            f"round {i} ({order}): (b) one DELETE, one transaction",
            rate(res.single_s, res.single_deleted),
        )
        report.figure(
            f"round {i} ({order}): (a) cleanup rule, batches of {res.batch_size}",
            rate(batched_s, res.outcome.deleted),
        )
        report.figure(f"round {i}: (a) / (b)", f"{batched_s / res.single_s:.2f}")
    single_s = sum(res.single_s for res in results)
    batched_s = sum(res.outcome.elapsed_seconds for res in results)
    report.at_most("(a) / (b), both rounds summed", batched_s / single_s, MAX_VS_SINGLE)
    report.figure(
        "batches (transactions that deleted rows), each round",
        ", ".join(str(res.outcome.batches) for res in results),
    )
    report.at_most(
        "longest batch transaction, both rounds",
        max(res.outcome.longest_batch_seconds for res in results),
        MAX_BATCH_S,
        "s",
        3,
    )
    report.expect(
        "rows the rule deleted, each round",
        [res.outcome.deleted for res in results],
        [EXPIRED] * len(results),
    )
    report.expect(
        "rows the single DELETE deleted, each round",
        [res.single_deleted for res in results],
        [EXPIRED] * len(results),
    )


def rate(seconds: float, rows: int) -> str:
    return f"{seconds:.2f} s ({rows / seconds:,.0f} rows/s)"


def statement(template: str, table: str) -> sql.Composed:
    return sql.SQL(template).format(table=sql.Identifier(table))


def load_tables(url: str) -> None:
    """The first table from generate_series, the others copied from it row for row."""
    source, *copies = TABLES
    with benchlib.connect(url) as conn:
        for table in TABLES:
            conn.execute(statement("DROP TABLE IF EXISTS {table}", table))
            conn.execute(statement(CREATE_TABLE, table))
        conn.execute(statement(LOAD_ROWS, source), {"live_every": LIVE_EVERY, "rows": ROWS})
        for table in copies:
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM {} ORDER BY id").format(
                    sql.Identifier(table), sql.Identifier(source)
                )
            )
        for table in TABLES:
            conn.execute(statement("CREATE INDEX ON {table} (expires_at)", table))
        conn.execute(
            sql.SQL("VACUUM ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLES)))
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


def warm_up(url: str, *tables: str) -> None:
    """Read the tables and their expiry indexes the same way, so they start equally warm."""
    with benchlib.connect(url) as conn:
        for table in tables:
            conn.execute(statement("SELECT count(*) FROM {table}", table))
            conn.execute(statement(COUNT_EXPIRED, table))


def checkpoint(url: str) -> None:
    with benchlib.connect(url) as conn:
        conn.execute("CHECKPOINT")


def time_single_delete(url: str, table: str) -> tuple[float, int]:
    """The naive design: every expired row in one DELETE, one transaction."""
    checkpoint(url)
    with benchlib.connect(url) as conn:
        started = time.monotonic()
        with conn.transaction():
            deleted = conn.execute(statement(SINGLE_DELETE, table)).rowcount
        return time.monotonic() - started, deleted


def run_rule(url: str, table: str, *, sync_scans: bool = True) -> tuple[int, RuleOutcome]:
    """The worker's rule as `cleanup_tokens` runs it (default batch size, JSON log to /dev/null)."""
    from worker import db, logs
    from worker.batches import BatchSizer
    from worker.jobs import cleanup
    from worker.settings import from_env

    settings = from_env({"DATABASE_URL": url})
    checkpoint(url)
    with open(os.devnull, "w") as devnull, db.connect(settings.database) as conn:
        logs.configure("INFO", "json", stream=devnull)
        if not sync_scans:
            conn.execute("SET synchronize_seqscans = off")
        outcome = cleanup.delete_in_batches(
            conn,
            cleanup.Rule(table, "expires_at", 0),
            BatchSizer.from_settings(settings),
            lambda: False,
            logs.get_logger(job=cleanup.TOKENS),
        )
    return settings.cleanup_batch_size, outcome


if __name__ == "__main__":
    sys.exit(main())
