"""Benchmark the cleanup rule against one plain DELETE, side by side, on seven table shapes.

Every shape is a refresh-token table (`id, user_id, token_hash, expires_at, created_at` and a
`payload` that only the wide shape fills),
autovacuum off, loaded once from generate_series, copied row for row, then VACUUM ANALYZEd:

- uniform expiry: 1,100,000 rows, every 11th live, the expired ones sharing one expires_at;
- spread expiry: the same, expired rows' expires_at spread over the past 30 days (no id order);
- clustered at the start: the first 1,000,000 ids expired (the table's first blocks), the
  last 100,000 live;
- wide rows: spread expiry, each row with a 1 KiB payload; a fifth of the rows (220,000), so
  the table (about 250 MB) stays within a few minutes' run;
- sparse 1 %: every 100th row expired;
- no index: sparse 1 %, and no index on expires_at;
- live, then expired (no target): the first half of the ids live, the second half expired,
  where block batches grown over kept rows meet deleted ones.

Each shape but "no index" has an index on expires_at. Per shape, two rounds on their own pairs
of tables: one `DELETE FROM t WHERE expires_at < now()` in one transaction, and the worker's
rule (`cleanup.delete_in_batches`, default settings: batches start at a tenth of
CLEANUP_BATCH_SIZE and adapt so each takes about CLEANUP_BATCH_TARGET_MS, 50 ms). Round 1 runs
the DELETE first, round 2 the rule first; before a round both its tables are read the same
way, and a CHECKPOINT precedes each timing. A fifth table gets the walk the rule did not
choose, for comparison. While a rule runs, a second connection polls its backend's
`pg_stat_activity.xact_start` every 5 ms: the longest transaction seen from outside. One more
spread table gets the rule while an app writer updates a random live row every 10 ms. Last,
where the rule's choice between its walks lies: tables with every 200th, 33rd and 10th row
expired get one DELETE and each walk, in two rounds of opposite orders (no target).

Targets: the rule <= 1.25 x one DELETE on the dense shapes, <= 1.5 x on the sparse ones (both
rounds summed); every batch <= 0.1 s (timed by the worker and seen from outside); every
expired row gone and every live row intact (count and checksum of whole rows); the writer's
slowest UPDATE <= 0.2 s.

Run: `uv run python scripts/bench_cleanup.py` (a few minutes); `--rows 110000` for a quick
check. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import benchlib
from benchlib import Report, log
from psycopg import sql

if TYPE_CHECKING:
    from worker.jobs.cleanup import RuleOutcome, Walk

MAX_DENSE_VS_SINGLE = 1.25
MAX_SPARSE_VS_SINGLE = 1.5
MAX_BATCH_S = 0.1
MAX_WRITE_S = 0.2  # the app writer's slowest UPDATE while the rule runs
POLL_S = 0.005  # how often the outside watch reads pg_stat_activity
WRITE_EVERY_S = 0.010
ROWS = 1_100_000

# Which rows are expired, and when they expired. Live rows expire 1 to 30 days ahead.
EVERY_11TH_LIVE = "i %% 11 <> 0"
FIRST_TEN_ELEVENTHS = "i <= %(rows)s / 11 * 10"
SECOND_HALF = "i > %(rows)s / 2"
EVERY_100TH = "i %% 100 = 0"
SHARED_EXPIRY = "now() - interval '1 hour'"
SPREAD_EXPIRY = "now() - interval '1 minute' - (hashint4(i) & 1023) * interval '42 minutes'"


@dataclass(frozen=True)
class Shape:
    name: str
    expired: str  # SQL condition on i, the row's place in generate_series
    expired_at: str  # SQL expression: the expired rows' expires_at
    sparse: bool | None  # None: no ratio target
    payload_bytes: int = 0
    indexed: bool = True
    rows_divisor: int = 1

    @property
    def max_vs_single(self) -> float | None:
        if self.sparse is None:
            return None
        return MAX_SPARSE_VS_SINGLE if self.sparse else MAX_DENSE_VS_SINGLE

    def tables(self) -> list[str]:
        """Round 1 (DELETE, rule), round 2 (rule, DELETE), the other walk."""
        stem = f"bench_{self.name.split()[0]}"
        return [f"{stem}_{suffix}" for suffix in ("d1", "r1", "r2", "d2", "other")]


SHAPES = (
    Shape("uniform expiry", EVERY_11TH_LIVE, SHARED_EXPIRY, sparse=False),
    Shape("spread expiry", EVERY_11TH_LIVE, SPREAD_EXPIRY, sparse=False),
    Shape("clustered at the start", FIRST_TEN_ELEVENTHS, SPREAD_EXPIRY, sparse=False),
    Shape(
        "wide rows (1 KiB)",
        EVERY_11TH_LIVE,
        SPREAD_EXPIRY,
        sparse=False,
        payload_bytes=1024,
        rows_divisor=5,
    ),
    Shape("sparse 1 %", EVERY_100TH, SPREAD_EXPIRY, sparse=True),
    Shape("no index, sparse 1 %", EVERY_100TH, SPREAD_EXPIRY, sparse=True, indexed=False),
    Shape("live, then expired", SECOND_HALF, SPREAD_EXPIRY, sparse=None),
)
SHARES_EVERY = (200, 33, 10)  # the sweep: every n-th row expired (1 %: the shape above)
BUSY_TABLE = "bench_busy"

CREATE_TABLE = """
CREATE TABLE {table} (
    id         bigserial PRIMARY KEY,
    user_id    bigint      NOT NULL,
    token_hash text        NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload    text
) WITH (autovacuum_enabled = false)
"""
LOAD_ROWS = """
INSERT INTO {table} (user_id, token_hash, expires_at, created_at, payload)
SELECT i %% 50000,
       md5(i::text),
       CASE WHEN {expired} THEN {expired_at}
            ELSE now() + interval '1 day' + (hashint4(i) & 1023) * interval '41 minutes'
       END,
       now() - interval '60 days' + i * interval '3 seconds',
       CASE WHEN %(payload_bytes)s > 0 THEN repeat(md5(i::text), %(payload_bytes)s / 32) END
  FROM generate_series(1, %(rows)s) AS i
"""
# Every column of every live row, in id order (one md5 per row keeps the aggregate small).
LIVE_CHECKSUM = """
SELECT count(*) AS live, md5(string_agg(md5(t::text), ',' ORDER BY id)) AS checksum
  FROM {table} AS t WHERE expires_at >= now()
"""
COUNT_EXPIRED = "SELECT count(*) AS n FROM {table} WHERE expires_at < now()"
LIVE_IDS = "SELECT id FROM {table} WHERE expires_at >= now()"
SINGLE_DELETE = "DELETE FROM {table} WHERE expires_at < now()"
# The app extends a live token, as a refresh would.
APP_WRITE = "UPDATE {table} SET expires_at = expires_at + interval '1 second' WHERE id = %(id)s"
XACT_AGE = """
SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age_s
  FROM pg_stat_activity
 WHERE pid = %(pid)s AND xact_start IS NOT NULL
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows per table ({ROWS:,})")
    rows = parser.parse_args(argv).rows
    report = Report("bench_cleanup: the rule's walks against one DELETE, per table shape")
    with benchlib.embedded_server() as server_url:
        url = benchlib.create_database(server_url, "bench_cleanup")
        results = [measure_shape(url, shape, rows // shape.rows_divisor) for shape in SHAPES]
        busy = measure_busy(url, rows)
        shares = [measure_share(url, every, rows) for every in SHARES_EVERY]
    print_matrix(results)
    print_shares(shares)
    report_shapes(report, results)
    report_busy(report, busy)
    report_shares(report, shares)
    add_notes(report)
    return report.finish()


# --- measuring ---------------------------------------------------------------------------


class TransactionWatch:
    """From a second connection, the longest transaction of backend `pid`, polled every POLL_S.

    What the app would see: it counts from `xact_start`, so a batch is measured whole (BEGIN
    to COMMIT), to within one polling interval.
    """

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.longest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> TransactionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        with benchlib.connect(self.url) as conn:
            while not self._stop.wait(POLL_S):
                row = conn.execute(XACT_AGE, {"pid": self.pid}).fetchone()
                if row is not None:
                    self.longest_s = max(self.longest_s, row["age_s"])


@dataclass
class AppWriter:
    """The app: every WRITE_EVERY_S one UPDATE of a random live row, in its own transaction."""

    url: str
    table: str
    live_ids: list[int]
    seconds: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> AppWriter:
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)

    def _write(self) -> None:
        pick = random.Random(14).choice
        update = statement(APP_WRITE, self.table)
        with benchlib.connect(self.url) as conn:
            due = time.monotonic()
            while not self._stop.is_set():
                started = time.monotonic()
                conn.execute(update, {"id": pick(self.live_ids)})
                self.seconds.append(time.monotonic() - started)
                due += WRITE_EVERY_S
                self._stop.wait(max(0.0, due - time.monotonic()))


@dataclass(frozen=True)
class RuleRun:
    outcome: RuleOutcome
    watched_s: float  # the longest transaction seen from outside


@dataclass(frozen=True)
class ShapeResult:
    shape: Shape
    rows: int
    expired: int
    single_s: list[float]  # round 1, round 2
    single_deleted: list[int]
    rules: list[RuleRun]  # round 1, round 2
    other: RuleRun  # the walk the rule did not choose
    live_before: tuple[int, str]
    live_after: dict[str, tuple[int, str]]  # the rule's tables
    expired_left: int  # in the rule's tables

    @property
    def ratio(self) -> float:
        return sum(r.outcome.elapsed_seconds for r in self.rules) / sum(self.single_s)

    @property
    def other_ratio(self) -> float:
        return self.other.outcome.elapsed_seconds / statistics.mean(self.single_s)

    @property
    def intact(self) -> bool:
        return all(after == self.live_before for after in self.live_after.values())


@dataclass(frozen=True)
class BusyResult:
    rule: RuleRun
    writes_s: list[float]
    live_left: int
    live_wanted: int


def measure_shape(url: str, shape: Shape, rows: int) -> ShapeResult:
    d1, r1, r2, d2, other = tables = shape.tables()
    log(f"{shape.name}: loading {len(tables)} identical tables of {rows:,} rows")
    expired = load_tables(url, shape, rows, tables)
    before = live_rows(url, d1)  # the other tables are copies of it, row for row
    log(f"{shape.name}: round 1 on {d1} / {r1}, the single DELETE first")
    warm_up(url, d1, r1)
    single_1 = time_single_delete(url, d1)
    rule_1 = run_rule(url, r1)
    log(f"{shape.name}: round 2 on {r2} / {d2}, the rule first")
    warm_up(url, r2, d2)
    rule_2 = run_rule(url, r2)
    single_2 = time_single_delete(url, d2)
    other_walk = other_than(rule_1.outcome.walk)
    log(f"{shape.name}: the {other_walk} walk on {other}, for comparison")
    warm_up(url, other)
    other_run = run_rule(url, other, walk=other_walk)
    rule_tables = (r1, r2, other)
    after = {table: live_rows(url, table) for table in rule_tables}
    left = sum(count_rows(url, COUNT_EXPIRED, table) for table in rule_tables)
    drop_tables(url, tables)
    return ShapeResult(
        shape,
        rows,
        expired,
        [single_1[0], single_2[0]],
        [single_1[1], single_2[1]],
        [rule_1, rule_2],
        other_run,
        before,
        after,
        left,
    )


def measure_busy(url: str, rows: int) -> BusyResult:
    shape = SHAPES[1]  # spread expiry
    load_tables(url, shape, rows, [BUSY_TABLE])
    warm_up(url, BUSY_TABLE)
    with benchlib.connect(url) as conn:
        live_ids = [row["id"] for row in conn.execute(statement(LIVE_IDS, BUSY_TABLE))]
    log(f"the rule on {BUSY_TABLE}, the app updating a live row every {WRITE_EVERY_S * 1000:g} ms")
    with AppWriter(url, BUSY_TABLE, live_ids) as writer:
        rule = run_rule(url, BUSY_TABLE)
    live_left = live_rows(url, BUSY_TABLE)[0]
    drop_tables(url, [BUSY_TABLE])
    return BusyResult(rule, writer.seconds, live_left, len(live_ids))


@dataclass(frozen=True)
class ShareResult:
    every: int
    expired: int
    chosen: Walk | None
    single_s: float  # both rounds summed
    walk_s: dict[Walk, float]  # both rounds summed
    deleted: list[int]  # by each DELETE and each walk run
    intact: bool  # no expired row left, live rows unchanged, after each walk


def measure_share(url: str, every: int, rows: int) -> ShareResult:
    """Round 1: one DELETE, the index walk, the block walk; round 2 the other way round."""
    from worker import db
    from worker.jobs import cleanup
    from worker.settings import from_env

    shape = Shape(f"every {every}th", f"i %% {every} = 0", SPREAD_EXPIRY, sparse=True)
    order = ["delete", *cleanup.Walk]
    rounds = [order, order[::-1]]
    tables = [[f"bench_share_{name}{n}" for name in names] for n, names in enumerate(rounds, 1)]
    log(f"every {every}th row expired: loading {sum(map(len, tables))} tables of {rows:,} rows")
    expired = load_tables(url, shape, rows, [t for ts in tables for t in ts])
    before = live_rows(url, tables[0][0])
    with db.connect(from_env({"DATABASE_URL": url}).database) as conn:
        chosen = cleanup.choose_walk(conn, cleanup.Rule.of(tables[0][0], "expires_at", 0))
    single_s, walk_s = 0.0, dict.fromkeys(cleanup.Walk, 0.0)
    deleted, intact = [], True
    for names, round_tables in zip(rounds, tables, strict=True):
        warm_up(url, *round_tables)
        for name, table in zip(names, round_tables, strict=True):
            if name == "delete":
                seconds, rows_deleted = time_single_delete(url, table)
                single_s += seconds
            else:
                outcome = run_rule(url, table, walk=cleanup.Walk(name)).outcome
                walk_s[cleanup.Walk(name)] += outcome.elapsed_seconds
                rows_deleted = outcome.deleted
                intact &= live_rows(url, table) == before
                intact &= count_rows(url, COUNT_EXPIRED, table) == 0
            deleted.append(rows_deleted)
    drop_tables(url, [t for ts in tables for t in ts])
    return ShareResult(every, expired, chosen, single_s, walk_s, deleted, intact)


def time_single_delete(url: str, table: str) -> tuple[float, int]:
    """The naive design: every expired row in one DELETE, one transaction: (seconds, rows)."""
    checkpoint(url)
    with benchlib.connect(url) as conn:
        started = time.monotonic()
        with conn.transaction():
            deleted = conn.execute(statement(SINGLE_DELETE, table)).rowcount
        return time.monotonic() - started, deleted


def run_rule(url: str, table: str, *, walk: Walk | None = None) -> RuleRun:
    """The worker's rule as `cleanup_tokens` runs it (default settings, JSON log to /dev/null);
    `walk` forces a walk instead of the one the rule chooses."""
    from worker import db, logs
    from worker.batches import BatchSizer
    from worker.jobs import cleanup
    from worker.settings import from_env

    settings = from_env({"DATABASE_URL": url})
    checkpoint(url)
    with open(os.devnull, "w") as devnull, db.connect(settings.database) as conn:
        logs.configure("INFO", "json", stream=devnull)
        with TransactionWatch(url, conn.info.backend_pid) as watch:
            outcome = cleanup.delete_in_batches(
                conn,
                cleanup.Rule.of(table, "expires_at", 0),
                BatchSizer.from_settings(settings),
                lambda: False,
                logs.get_logger(job=cleanup.TOKENS),
                walk=walk,
            )
    return RuleRun(outcome, watch.longest_s)


def other_than(walk: Walk | None) -> Walk:
    from worker.jobs.cleanup import Walk

    return Walk.INDEX if walk == Walk.BLOCKS else Walk.BLOCKS


# --- reporting ---------------------------------------------------------------------------

MATRIX_HEADER = (
    "| shape | rows | expired | walk | rule | one DELETE | rule / DELETE | target | batches "
    "| longest batch | checksum | other walk / DELETE |"
)


def print_matrix(results: list[ShapeResult]) -> None:
    """One line per shape: times are the means of the two rounds, the ratio their sums'."""
    print("\n## bench_cleanup: the rule against one DELETE, per table shape\n")
    print(MATRIX_HEADER)
    print("|" + "---|" * MATRIX_HEADER.count(" | ") + "---|")
    for res in results:
        rule_s = statistics.mean(r.outcome.elapsed_seconds for r in res.rules)
        longest_s = max(max(r.outcome.longest_batch_seconds, r.watched_s) for r in res.rules)
        cells = [
            res.shape.name,
            f"{res.rows:,}",
            f"{res.expired:,}",
            str(res.rules[0].outcome.walk),
            f"{rule_s:.3f} s",
            f"{statistics.mean(res.single_s):.3f} s",
            f"{res.ratio:.2f}",
            "—" if res.shape.max_vs_single is None else f"≤ {res.shape.max_vs_single:g}",
            ", ".join(str(r.outcome.batches) for r in res.rules),
            f"{longest_s:.3f} s",
            "ok" if res.intact and res.expired_left == 0 else "MISS",
            f"{res.other_ratio:.2f} ({res.other.outcome.walk})",
        ]
        print("| " + " | ".join(cells) + " |")


def report_shapes(report: Report, results: list[ShapeResult]) -> None:
    for res in results:
        name, limit = f"{res.shape.name}: rule / one DELETE", res.shape.max_vs_single
        if limit is None:
            report.figure(f"{name} (no target)", f"{res.ratio:.2f}")
        else:
            report.at_most(name, res.ratio, limit)
    runs = [run for res in results for run in res.rules]
    report.at_most(
        "longest rule batch, timed by the worker (every round)",
        max(run.outcome.longest_batch_seconds for run in runs),
        MAX_BATCH_S,
        "s",
        3,
    )
    report.at_most(
        f"longest rule transaction seen from outside (every round; polled every "
        f"{POLL_S * 1000:g} ms)",
        max(run.watched_s for run in runs),
        MAX_BATCH_S,
        "s",
        3,
    )
    report.expect(
        "rows deleted by the rule (each round, the other walk) and by each DELETE, per shape",
        [
            [r.outcome.deleted for r in (*res.rules, res.other)] + res.single_deleted
            for res in results
        ],
        [[res.expired] * 5 for res in results],
    )
    report.expect(
        "expired rows left after every rule run, live rows' count and checksum unchanged",
        [res.expired_left == 0 and res.intact for res in results],
        [True] * len(results),
    )


def print_shares(shares: list[ShareResult]) -> None:
    """One line per share of expired rows: each walk against one DELETE, and the rule's choice."""
    from worker.jobs.cleanup import Walk

    print("\n## bench_cleanup: both walks around the rule's choice (two rounds, no target)\n")
    print("| expired | of rows | one DELETE | index walk / DELETE | block walk / DELETE | chosen |")
    print("|---|---|---|---|---|---|")
    for share in shares:
        cells = [
            f"{share.expired:,}",
            f"{100 / share.every:.1f} %",
            f"{share.single_s / 2:.3f} s",
            f"{share.walk_s[Walk.INDEX] / share.single_s:.2f}",
            f"{share.walk_s[Walk.BLOCKS] / share.single_s:.2f}",
            str(share.chosen),
        ]
        print("| " + " | ".join(cells) + " |")


def report_shares(report: Report, shares: list[ShareResult]) -> None:
    report.expect(
        "the sweep: rows deleted by the DELETE and by each walk, per share",
        [s.deleted for s in shares],
        [[s.expired] * 6 for s in shares],
    )
    report.expect(
        "the sweep: expired rows left after each walk, live rows' count and checksum unchanged",
        [s.intact for s in shares],
        [True] * len(shares),
    )


def report_busy(report: Report, busy: BusyResult) -> None:
    outcome, writes = busy.rule.outcome, sorted(busy.writes_s)
    report.figure(
        "spread expiry, app writing: the rule",
        f"{outcome.elapsed_seconds:.3f} s, {outcome.walk} walk, {outcome.batches} batches, "
        f"longest {max(outcome.longest_batch_seconds, busy.rule.watched_s):.3f} s",
    )
    p99_s = statistics.quantiles(writes, n=100)[98] if len(writes) > 1 else writes[-1]
    report.figure(
        f"spread expiry, app writing: its UPDATEs (one every {WRITE_EVERY_S * 1000:g} ms), "
        "p50 / p99",
        f"{len(writes)} UPDATEs, {statistics.median(writes) * 1000:.1f} ms / {p99_s * 1000:.1f} ms",
    )
    report.at_most(
        "spread expiry, app writing: its slowest UPDATE", writes[-1], MAX_WRITE_S, "s", 3
    )
    report.expect("spread expiry, app writing: live rows left", busy.live_left, busy.live_wanted)


def add_notes(report: Report) -> None:
    report.note(
        "each shape's tables were copied row for row from its first; round 1 ran "
        "the single DELETE first, round 2 the rule first, each on its own pair of tables; "
        "before each round both tables were read once (count(*) and a count of the expired "
        "rows); a CHECKPOINT preceded each timing; autovacuum was off. The rule's time includes "
        "choosing its walk (two EXPLAINs and a catalog read). 'other walk': the walk the rule "
        "did not choose, once, against the mean of the two DELETEs; no target. Checksums: every "
        "column of every live row, before (the first table) and after (each rule's table)."
    )
    report.note(
        "longest batch: the longer of the worker's own timer and a second connection reading "
        "clock_timestamp() - xact_start of the worker's backend every 5 ms (a transaction may "
        "have lasted up to one interval longer than seen)."
    )


# --- tables ------------------------------------------------------------------------------


def statement(template: str, table: str) -> sql.Composed:
    return sql.SQL(template).format(table=sql.Identifier(table))


def load_tables(url: str, shape: Shape, rows: int, tables: list[str]) -> int:
    """The first table from generate_series, the others copied from it row for row; returns
    how many rows are expired."""
    source, *copies = tables
    load = sql.SQL(LOAD_ROWS).format(
        table=sql.Identifier(source),
        expired=sql.SQL(shape.expired),
        expired_at=sql.SQL(shape.expired_at),
    )
    with benchlib.connect(url) as conn:
        for table in tables:
            conn.execute(statement("DROP TABLE IF EXISTS {table}", table))
            conn.execute(statement(CREATE_TABLE, table))
        conn.execute(load, {"rows": rows, "payload_bytes": shape.payload_bytes})
        for table in copies:
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM {} ORDER BY id").format(
                    sql.Identifier(table), sql.Identifier(source)
                )
            )
        for table in tables:
            if shape.indexed:
                conn.execute(statement("CREATE INDEX ON {table} (expires_at)", table))
            conn.execute(statement("VACUUM ANALYZE {table}", table))
    return count_rows(url, COUNT_EXPIRED, source)


def drop_tables(url: str, tables: list[str]) -> None:
    with benchlib.connect(url) as conn:
        for table in tables:
            conn.execute(statement("DROP TABLE {table}", table))


def live_rows(url: str, table: str) -> tuple[int, str]:
    """(count, checksum) of the live rows: every column of each, in id order."""
    with benchlib.connect(url) as conn:
        row = conn.execute(statement(LIVE_CHECKSUM, table)).fetchone()
    assert row is not None
    return row["live"], row["checksum"]


def count_rows(url: str, template: str, table: str) -> int:
    with benchlib.connect(url) as conn:
        row = conn.execute(statement(template, table)).fetchone()
    assert row is not None
    return int(row["n"])


def warm_up(url: str, *tables: str) -> None:
    """Read the tables (and their expiry indexes) the same way, so they start equally warm."""
    with benchlib.connect(url) as conn:
        for table in tables:
            conn.execute(statement("SELECT count(*) FROM {table}", table))
            conn.execute(statement(COUNT_EXPIRED, table))


def checkpoint(url: str) -> None:
    with benchlib.connect(url) as conn:
        conn.execute("CHECKPOINT")


if __name__ == "__main__":
    sys.exit(main())
