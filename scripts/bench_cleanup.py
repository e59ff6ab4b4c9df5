"""Benchmark the cleanup rule's adaptive batches against one plain DELETE, side by side.

Tables of refresh-token shape, 1,100,000 rows each, `expires_at` indexed, autovacuum off;
each shape is loaded once from generate_series and copied row for row, then VACUUM ANALYZEd:

- dense: 1,000,000 expired (`expires_at` spread over the past 30 days, in no order of id) and
  100,000 live (every 11th row, expiring 1 to 30 days ahead);
- sparse: 11,000 expired (every 100th row), 1,089,000 live.

For each shape, two rounds on their own pairs of tables: (b) one `DELETE FROM t WHERE
expires_at < now()` in one transaction; (a) the worker's rule, `cleanup.delete_in_batches`
with the default settings (batches start at CLEANUP_BATCH_SIZE, 5000 rows, and adapt so each
takes about CLEANUP_BATCH_TARGET_MS, 50 ms). Round 1 runs (b) then (a), round 2 (a) then (b).
Before a round both its tables are read the same way; a CHECKPOINT precedes each timing.

While every rule and every single DELETE runs, a second connection polls
`pg_stat_activity.xact_start` of its backend every 5 ms: the longest transaction seen from
outside the worker. One more dense table gets the rule while an app writer updates a random
live row every 10 ms, each UPDATE timed; one more gets it with synchronize_seqscans off.

Targets: dense (a) <= 1.5 x (b), sparse (a) <= 2 x (b) (both rounds summed); the longest rule
transaction seen from outside <= 0.1 s; the writer's slowest UPDATE <= 0.2 s; every expired
row gone and every live row intact (count and checksum of all columns; on the written table,
the count).

Run: `uv run python scripts/bench_cleanup.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

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
    from worker.jobs.cleanup import RuleOutcome

MAX_DENSE_VS_SINGLE = 1.5
MAX_SPARSE_VS_SINGLE = 2.0
MAX_BATCH_S = 0.1  # the longest rule transaction, seen from another connection
MAX_WRITE_S = 0.2  # the app writer's slowest UPDATE while the rule runs
POLL_S = 0.005  # how often the outside watch reads pg_stat_activity
WRITE_EVERY_S = 0.010


@dataclass(frozen=True)
class Round:
    """One side-by-side measurement: the rule on `rule_table`, one DELETE on `delete_table`."""

    rule_table: str
    delete_table: str
    rule_first: bool


@dataclass(frozen=True)
class Shape:
    """Identical tables of `rows` rows; row i is expired unless it is (or is not) an `every`th."""

    name: str
    rows: int
    every: int
    every_is_live: bool
    rounds: tuple[Round, ...]
    max_vs_single: float
    extra_tables: tuple[str, ...] = ()

    @property
    def live(self) -> int:
        nth = self.rows // self.every
        return nth if self.every_is_live else self.rows - nth

    @property
    def expired(self) -> int:
        return self.rows - self.live

    @property
    def tables(self) -> list[str]:
        paired = [t for r in self.rounds for t in (r.rule_table, r.delete_table)]
        return [*paired, *self.extra_tables]


# Two rounds per shape in opposite orders, so neither design gains from going second (warmer
# caches, a quieter machine) or first (no checkpoint debt): the ratio is of the rounds' sums.
# The dense shape has two more tables: the rule under an app writer, and the rule with
# synchronized scans off (for the record: a server whose shared_buffers exceed 4x the table
# starts every seq scan at block 0; batches walk by id range and must not depend on it).
BUSY_TABLE = "bench_tokens_busy"
NO_SYNC_TABLE = "bench_tokens_c"
DENSE = Shape(
    "dense",
    1_100_000,
    11,
    every_is_live=True,
    rounds=(
        Round("bench_tokens_a1", "bench_tokens_b1", rule_first=False),
        Round("bench_tokens_a2", "bench_tokens_b2", rule_first=True),
    ),
    max_vs_single=MAX_DENSE_VS_SINGLE,
    extra_tables=(BUSY_TABLE, NO_SYNC_TABLE),
)
SPARSE = Shape(
    "sparse",
    1_100_000,
    100,
    every_is_live=False,
    rounds=(
        Round("bench_sparse_a1", "bench_sparse_b1", rule_first=False),
        Round("bench_sparse_a2", "bench_sparse_b2", rule_first=True),
    ),
    max_vs_single=MAX_SPARSE_VS_SINGLE,
)

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
       CASE WHEN (i %% %(every)s = 0) = %(every_is_live)s
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
LIVE_IDS = "SELECT id FROM {table} WHERE expires_at >= now()"
SINGLE_DELETE = "DELETE FROM {table} WHERE expires_at < now()"
# The app extends a live token, as a refresh would.
APP_WRITE = "UPDATE {table} SET expires_at = expires_at + interval '1 second' WHERE id = %(id)s"
XACT_AGE = """
SELECT extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age_s
  FROM pg_stat_activity
 WHERE pid = %(pid)s AND xact_start IS NOT NULL
"""


def main() -> int:
    report = Report("bench_cleanup: the rule's adaptive batches against one DELETE")
    with benchlib.embedded_server() as server_url:
        url = benchlib.create_database(server_url, "bench_cleanup")
        for shape in (DENSE, SPARSE):
            log(f"loading {len(shape.tables)} identical {shape.name} tables of {shape.rows:,} rows")
            load_tables(url, shape)
        before = {t: live_rows(url, t) for shape in (DENSE, SPARSE) for t in shape.tables}
        dense = [measure_round(url, r) for r in DENSE.rounds]
        sparse = [measure_round(url, r) for r in SPARSE.rounds]
        busy = run_busy(url)
        warm_up(url, NO_SYNC_TABLE)
        log(f"the rule on {NO_SYNC_TABLE} with synchronize_seqscans off")
        no_sync = run_rule(url, NO_SYNC_TABLE, sync_scans=False)
        checks = check_tables(url, before)
    report_shape(report, DENSE, dense)
    report_shape(report, SPARSE, sparse)
    report_busy(report, busy)
    report_outside(report, [*dense, *sparse], [busy.rule, no_sync])
    report_no_sync(report, no_sync, dense)
    report_checks(report, checks)
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
        self.polls = 0
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
                self.polls += 1
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
class RoundResult:
    round: Round
    single_s: float
    single_deleted: int
    single_watched_s: float
    rule: RuleRun


@dataclass(frozen=True)
class BusyResult:
    rule: RuleRun
    writes_s: list[float]


def measure_round(url: str, r: Round) -> RoundResult:
    warm_up(url, r.rule_table, r.delete_table)
    first = "the rule" if r.rule_first else "the single DELETE"
    log(f"round on {r.rule_table} / {r.delete_table}, {first} first")
    if r.rule_first:
        rule = run_rule(url, r.rule_table)
        single_s, single_deleted, watched_s = time_single_delete(url, r.delete_table)
    else:
        single_s, single_deleted, watched_s = time_single_delete(url, r.delete_table)
        rule = run_rule(url, r.rule_table)
    return RoundResult(r, single_s, single_deleted, watched_s, rule)


def run_busy(url: str) -> BusyResult:
    warm_up(url, BUSY_TABLE)
    with benchlib.connect(url) as conn:
        live_ids = [row["id"] for row in conn.execute(statement(LIVE_IDS, BUSY_TABLE))]
    log(f"the rule on {BUSY_TABLE}, the app updating a live row every {WRITE_EVERY_S * 1000:g} ms")
    with AppWriter(url, BUSY_TABLE, live_ids) as writer:
        rule = run_rule(url, BUSY_TABLE)
    return BusyResult(rule, writer.seconds)


def time_single_delete(url: str, table: str) -> tuple[float, int, float]:
    """The naive design: every expired row in one DELETE, one transaction.

    Returns (seconds, rows deleted, its transaction's length seen from outside).
    """
    checkpoint(url)
    with benchlib.connect(url) as conn, TransactionWatch(url, conn.info.backend_pid) as watch:
        started = time.monotonic()
        with conn.transaction():
            deleted = conn.execute(statement(SINGLE_DELETE, table)).rowcount
        elapsed_s = time.monotonic() - started
    return elapsed_s, deleted, watch.longest_s


def run_rule(url: str, table: str, *, sync_scans: bool = True) -> RuleRun:
    """The worker's rule as `cleanup_tokens` runs it (default settings, JSON log to /dev/null)."""
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
        with TransactionWatch(url, conn.info.backend_pid) as watch:
            outcome = cleanup.delete_in_batches(
                conn,
                cleanup.Rule(table, "expires_at", 0),
                BatchSizer.from_settings(settings),
                lambda: False,
                logs.get_logger(job=cleanup.TOKENS),
            )
    return RuleRun(outcome, watch.longest_s)


# --- reporting ---------------------------------------------------------------------------


def report_shape(report: Report, shape: Shape, results: list[RoundResult]) -> None:
    label = f"{shape.name}, {shape.expired:,} expired of {shape.rows:,}"
    for i, res in enumerate(results, 1):
        order = "rule first" if res.round.rule_first else "DELETE first"
        report.figure(
            f"{label}, round {i} ({order}): (b) one DELETE, one transaction",
            rate(res.single_s, res.single_deleted),
        )
        report.figure(
            f"{label}, round {i} ({order}): (a) the cleanup rule",
            f"{rate(res.rule.outcome.elapsed_seconds, res.rule.outcome.deleted)}, "
            f"{res.rule.outcome.batches} batches, {batch_sizes(res.rule.outcome)}",
        )
        report.figure(f"{label}, round {i}: (a) / (b)", f"{ratio(res):.2f}")
    rule_s = sum(res.rule.outcome.elapsed_seconds for res in results)
    single_s = sum(res.single_s for res in results)
    report.at_most(
        f"{label}: (a) / (b), both rounds summed", rule_s / single_s, shape.max_vs_single
    )
    report.expect(
        f"{label}: rows deleted by the rule, by the single DELETE, each round",
        [(res.rule.outcome.deleted, res.single_deleted) for res in results],
        [(shape.expired, shape.expired)] * len(results),
    )


def report_busy(report: Report, busy: BusyResult) -> None:
    outcome, writes = busy.rule.outcome, sorted(busy.writes_s)
    report.figure(
        "dense, app writing: the cleanup rule",
        f"{rate(outcome.elapsed_seconds, outcome.deleted)}, {outcome.batches} batches, "
        f"{batch_sizes(outcome)}",
    )
    p99_s = statistics.quantiles(writes, n=100)[98] if len(writes) > 1 else writes[-1]
    report.figure(
        f"dense, app writing: its UPDATEs (one every {WRITE_EVERY_S * 1000:g} ms), p50 / p99",
        f"{len(writes)} UPDATEs, {statistics.median(writes) * 1000:.1f} ms / {p99_s * 1000:.1f} ms",
    )
    report.at_most("dense, app writing: its slowest UPDATE", writes[-1], MAX_WRITE_S, "s", 3)


def report_outside(report: Report, rounds: list[RoundResult], others: list[RuleRun]) -> None:
    runs = [*(res.rule for res in rounds), *others]
    report.figure(
        "longest rule batch, timed by the worker (every run)",
        f"{max(run.outcome.longest_batch_seconds for run in runs):.3f} s",
    )
    report.at_most(
        f"longest rule transaction seen from outside (every run; polled every "
        f"{POLL_S * 1000:g} ms)",
        max(run.watched_s for run in runs),
        MAX_BATCH_S,
        "s",
        3,
    )
    report.figure(
        "the single DELETE's transaction seen from outside (each dense round)",
        ", ".join(f"{res.single_watched_s:.3f} s" for res in rounds[: len(DENSE.rounds)]),
    )


def report_no_sync(report: Report, no_sync: RuleRun, dense: list[RoundResult]) -> None:
    outcome = no_sync.outcome
    mean_single_s = sum(res.single_s for res in dense) / len(dense)
    report.figure(
        "dense, synchronize_seqscans off (no target): the rule, / mean (b)",
        f"{rate(outcome.elapsed_seconds, outcome.deleted)}, "
        f"{outcome.elapsed_seconds / mean_single_s:.2f}, {batch_sizes(outcome)}",
    )


def batch_sizes(outcome: RuleOutcome) -> str:
    return (
        f"batch sizes {outcome.min_batch_size:,} to {outcome.max_batch_size:,}, "
        f"final {outcome.final_batch_size:,}"
    )


def ratio(res: RoundResult) -> float:
    return res.rule.outcome.elapsed_seconds / res.single_s


def rate(seconds: float, rows: int) -> str:
    return f"{seconds:.2f} s ({rows / seconds:,.0f} rows/s)"


def add_notes(report: Report) -> None:
    report.note(
        "order: round 1 of each shape ran the single DELETE first, round 2 the rule first; "
        "each round on its own pair of identical tables. Before each round both of its tables "
        "were read once (count(*) and a count over the expires_at index); a CHECKPOINT "
        "preceded each timing; autovacuum was off on all tables."
    )
    report.note(
        "seen from outside: a second connection read clock_timestamp() - xact_start of the "
        "worker's backend from pg_stat_activity every 5 ms, so a transaction may have lasted "
        "up to one interval longer than seen. The app writer ran in a thread of this process, "
        "each UPDATE in its own transaction, on rows the rule does not delete."
    )


# --- tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checks:
    identical: dict[str, bool]  # per shape: its tables' live rows identical before the runs
    before: dict[str, tuple[int, str]]
    after: dict[str, tuple[int, str]]
    expired_left: int


RULE_TABLES = [
    *(r.rule_table for shape in (DENSE, SPARSE) for r in shape.rounds),
    BUSY_TABLE,
    NO_SYNC_TABLE,
]


def check_tables(url: str, before: dict[str, tuple[int, str]]) -> Checks:
    identical = {
        shape.name: len({before[t] for t in shape.tables}) == 1 for shape in (DENSE, SPARSE)
    }
    after = {t: live_rows(url, t) for t in RULE_TABLES}
    expired_left = sum(count_rows(url, COUNT_EXPIRED, t) for t in RULE_TABLES)
    return Checks(identical, before, after, expired_left)


def report_checks(report: Report, checks: Checks) -> None:
    report.expect(
        "each shape's tables identical before the runs",
        checks.identical,
        {"dense": True, "sparse": True},
    )
    report.expect(
        "expired rows left after every rule run (checked in the tables)", checks.expired_left, 0
    )
    untouched = [t for t in RULE_TABLES if t != BUSY_TABLE]
    wanted = {t: (DENSE if t.startswith("bench_tokens") else SPARSE).live for t in RULE_TABLES}
    report.expect(
        "live rows left after each rule run (checked in the tables)",
        [checks.after[t][0] for t in RULE_TABLES],
        [wanted[t] for t in RULE_TABLES],
    )
    report.expect(
        "live rows' checksum unchanged by the rule, each run without the app writer",
        [checks.after[t][1] == checks.before[t][1] for t in untouched],
        [True] * len(untouched),
    )


def statement(template: str, table: str) -> sql.Composed:
    return sql.SQL(template).format(table=sql.Identifier(table))


def load_tables(url: str, shape: Shape) -> None:
    """The first table from generate_series, the others copied from it row for row."""
    source, *copies = shape.tables
    params = {"every": shape.every, "every_is_live": shape.every_is_live, "rows": shape.rows}
    with benchlib.connect(url) as conn:
        for table in shape.tables:
            conn.execute(statement("DROP TABLE IF EXISTS {table}", table))
            conn.execute(statement(CREATE_TABLE, table))
        conn.execute(statement(LOAD_ROWS, source), params)
        for table in copies:
            conn.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM {} ORDER BY id").format(
                    sql.Identifier(table), sql.Identifier(source)
                )
            )
        for table in shape.tables:
            conn.execute(statement("CREATE INDEX ON {table} (expires_at)", table))
        conn.execute(
            sql.SQL("VACUUM ANALYZE {}").format(
                sql.SQL(", ").join(map(sql.Identifier, shape.tables))
            )
        )


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
    """Read the tables and their expiry indexes the same way, so they start equally warm."""
    with benchlib.connect(url) as conn:
        for table in tables:
            conn.execute(statement("SELECT count(*) FROM {table}", table))
            conn.execute(statement(COUNT_EXPIRED, table))


def checkpoint(url: str) -> None:
    with benchlib.connect(url) as conn:
        conn.execute("CHECKPOINT")


if __name__ == "__main__":
    sys.exit(main())
