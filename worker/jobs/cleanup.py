"""Delete expired and aged-out rows in small batches that never hold the app's tables for long."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .. import db
from ..batches import BatchSizer
from ..db import Conn
from ..settings import ConfigError, RetentionRule, Settings
from .base import Fence, JobContext, fenced_out

TOKENS = "cleanup_tokens"
SESSIONS = "cleanup_sessions"
CONTENT = "cleanup_content"
HISTORY = "cleanup_history"

# How long one batch may wait for a row or table lock before it gives up. An app's own
# transactions hold row locks for milliseconds; a wait of a whole second means a long
# transaction (or one idle in transaction) holds a row we want, and while our DELETE waits
# it keeps the locks it already took, so app requests touching those rows would queue
# behind it. Failing the batch costs nothing: it rolls back and the next run retries.
LOCK_TIMEOUT_MS = 1000
# Up to this many rows a batch deletes by id what its one walk of the table found; beyond
# it, by id range. Where expired rows are sparse, batches stay small (each walks many live
# rows) and one walk instead of two halves their cost; where they are dense, batches grow
# past it, and deleting a range beats looking up tens of thousands of ids.
ONE_WALK_MAX_ROWS = 10_000

COMPLETED = "completed"
TABLE_MISSING = "table_missing"
FAILED = "failed"
INTERRUPTED = "interrupted"
DRY_RUN = "dry_run"

_DATE_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")


@dataclass(frozen=True)
class Rule:
    """Delete rows of `table` whose `column` is more than `days` days in the past.

    `days=0` deletes rows whose `column` is already past (expiry columns such as
    `expires_at`). `only`, when set, is a further condition rows must meet to go; it is SQL
    written in this package, never taken from configuration.
    """

    table: str
    column: str
    days: int
    schema: str | None = None
    only: sql.Composable | None = None

    @classmethod
    def from_setting(cls, rule: RetentionRule) -> Rule:
        """The rule an operator configured in CLEANUP_EXTRA_RULES."""
        return cls(rule.table, rule.column, rule.days, schema=rule.schema)

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    @property
    def name(self) -> str:
        return f"{self.relation}.{self.column}"

    def identifier(self) -> sql.Identifier:
        return (
            sql.Identifier(self.schema, self.table) if self.schema else sql.Identifier(self.table)
        )


@dataclass
class RuleOutcome:
    """What one rule did: rows deleted, batches (transactions that deleted rows), timings,
    and the batch sizes it used (smallest, largest, last; None when no batch completed)."""

    rule: str
    table: str
    status: str = COMPLETED
    deleted: int = 0
    batches: int = 0
    elapsed_seconds: float = 0.0
    longest_batch_seconds: float = 0.0
    min_batch_size: int | None = None
    max_batch_size: int | None = None
    final_batch_size: int | None = None
    error: str | None = None

    def record_batch(self, size: int, deleted: int, seconds: float) -> None:
        """Count one committed batch of `size` rows asked for."""
        self.deleted += deleted
        self.batches += 1 if deleted else 0
        self.longest_batch_seconds = max(self.longest_batch_seconds, seconds)
        self.min_batch_size = min(self.min_batch_size or size, size)
        self.max_batch_size = max(self.max_batch_size or size, size)
        self.final_batch_size = size

    def summary(self) -> dict[str, Any]:
        """The per-rule entry of the run's `details`."""
        entry: dict[str, Any] = {
            "deleted": self.deleted,
            "batches": self.batches,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "longest_batch_seconds": round(self.longest_batch_seconds, 3),
            "min_batch_size": self.min_batch_size,
            "max_batch_size": self.max_batch_size,
            "final_batch_size": self.final_batch_size,
            "status": self.status,
        }
        if self.error:
            entry["error"] = self.error
        return entry


def clean_tokens(ctx: JobContext) -> None:
    """One pass of `cleanup_tokens`: refresh and password-reset tokens past `expires_at`."""
    _run_rules(
        ctx,
        [Rule("refresh_tokens", "expires_at", 0), Rule("password_reset_tokens", "expires_at", 0)],
    )


def clean_sessions(ctx: JobContext) -> None:
    """One pass of `cleanup_sessions`: scrape sessions older than their retention."""
    days = ctx.settings.scrape_session_retention_days
    _run_rules(ctx, [Rule("scrape_sessions", "created_at", days)])


def clean_content(ctx: JobContext) -> None:
    """One pass of `cleanup_content`: old Reddit comments, then old posts (with their comments)."""
    days = ctx.settings.reddit_content_retention_days
    # Comments first: each post's delete then cascades to fewer rows, keeping batches short.
    _run_rules(
        ctx, [Rule("reddit_comments", "created_at", days), Rule("reddit_posts", "created_at", days)]
    )


def clean_history(ctx: JobContext) -> None:
    """One pass of `cleanup_history`: finished worker runs, old alerts, then CLEANUP_EXTRA_RULES."""
    settings = ctx.settings
    not_running = sql.SQL(db.query("cleanup.not_running"))
    rules = [
        Rule("worker_job_runs", "started_at", settings.job_run_retention_days, only=not_running),
        Rule("worker_alerts", "created_at", settings.alert_retention_days),
        *(Rule.from_setting(rule) for rule in settings.cleanup_extra_rules),
    ]
    _run_rules(ctx, rules)


def check_extra_rules(conn: Conn, settings: Settings) -> None:
    """Refuse at start (ConfigError, exit 2) any extra rule the database cannot apply.

    The table must exist (an operator named it, so a missing one is a mistake, unlike the
    built-in app tables), have an `id` column, a date or timestamp column of the given name,
    and this role must be allowed to delete from it.
    """
    for setting in settings.cleanup_extra_rules:
        rule = Rule.from_setting(setting)
        problem = _extra_rule_problem(conn, rule)
        if problem:
            raise ConfigError(f"CLEANUP_EXTRA_RULES: rule {rule.name}:{rule.days}: {problem}")


def delete_in_batches(
    conn: Conn,
    rule: Rule,
    sizer: BatchSizer,
    should_stop: Callable[[], bool],
    log: Any,
    *,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    fence: Fence | None = None,
) -> RuleOutcome:
    """Delete every row `rule` matches, one transaction per batch, until none is left.

    Each batch asks `sizer` how many rows to take and tells it how long they took. `conn`
    must be in autocommit mode. Stops early when `should_stop()` turns true between
    batches, or at the first failing batch (which rolls back alone). A missing table is
    reported, not raised. Raises only when the connection itself is lost.
    """
    outcome = RuleOutcome(rule.name, rule.relation)
    if not _table_exists(conn, rule):
        return _table_missing(log, outcome)
    params: dict[str, Any] = {"days": rule.days}
    started = time.monotonic()
    while True:
        size = sizer.size
        params["offset"] = size - 1
        try:
            deleted, last_id, seconds = _delete_batch(conn, rule, params, lock_timeout_ms, fence)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            if fenced_out(exc) and fence is not None:
                fence.lost()  # the run lost its lease: this batch rolled back, stop here
                outcome.status = INTERRUPTED
                break
            outcome.status, outcome.error = FAILED, db.describe_error(exc)
            break
        outcome.record_batch(size, deleted, seconds)
        if last_id is None:  # that was the final batch
            break
        params["after_id"] = last_id  # in the id column's own type (int, uuid...)
        sizer.next_size(deleted, seconds)
        if should_stop():
            outcome.status = INTERRUPTED
            break
    outcome.elapsed_seconds = time.monotonic() - started
    _log_outcome(log, outcome)
    return outcome


def count_rows(conn: Conn, rule: Rule) -> int | None:
    """How many rows `rule` would delete now; None when its table does not exist."""
    if not _table_exists(conn, rule):
        return None
    row = conn.execute(_rule_statement("count_rows", rule), {"days": rule.days}).fetchone()
    return int(row["n"]) if row else 0


def _run_rules(ctx: JobContext, rules: Sequence[Rule]) -> None:
    summaries: dict[str, dict[str, Any]] = {}
    for rule in rules:
        if ctx.should_stop():
            break
        summaries[rule.name] = _preview(ctx, rule) if ctx.dry_run else _apply(ctx, rule)
    ctx.result.details["rules"] = summaries
    totals = {
        key: sum(s.get(key, 0) for s in summaries.values())
        for key in (("would_delete",) if ctx.dry_run else ("deleted", "batches"))
    }
    ctx.log.info(
        "cleanup_completed",
        rules=len(summaries),
        failed_rules=ctx.result.failed,
        dry_run=ctx.dry_run,
        elapsed_seconds=ctx.elapsed_s(),
        **totals,
    )


def _apply(ctx: JobContext, rule: Rule) -> dict[str, Any]:
    sizer = BatchSizer.from_settings(ctx.settings)  # each rule learns its own table's pace
    outcome = delete_in_batches(ctx.conn, rule, sizer, ctx.should_stop, ctx.log, fence=ctx.fence)
    if outcome.status == FAILED:
        ctx.result.fail(rule.name, "batch_failed", error=outcome.error, deleted=outcome.deleted)
    elif outcome.status != INTERRUPTED:
        ctx.result.ok()  # completed, or a table this app does not have
    return outcome.summary()


def _preview(ctx: JobContext, rule: Rule) -> dict[str, Any]:
    count: int | None = None
    with ctx.item(rule.name, "cleanup_count_failed", rule=rule.name) as counting:
        count = count_rows(ctx.conn, rule)
    if counting.error is not None:
        return {"status": FAILED, "error": counting.error}
    ctx.result.ok()
    if count is None:
        _table_missing(ctx.log, RuleOutcome(rule.name, rule.relation))
        return {"status": TABLE_MISSING, "would_delete": 0}
    ctx.log.info("cleanup_rule_would_delete", rule=rule.name, table=rule.relation, count=count)
    return {"status": DRY_RUN, "would_delete": count}


def _delete_batch(
    conn: Conn, rule: Rule, params: dict[str, Any], lock_timeout_ms: int, fence: Fence | None
) -> tuple[int, Any, float]:
    """One batch in its own transaction: (rows deleted, its last id or None if final, seconds).

    A batch of up to ONE_WALK_MAX_ROWS rows walks the table once and deletes what it found
    by id; a larger one (rows are dense: the sizer grew it) reads its bound, then deletes
    the id range, which costs less than looking up that many ids one by one. Pipelined:
    each takes one or two round trips to the server.
    """
    started = time.monotonic()
    after = sql.SQL(db.query("cleanup.after_id") if "after_id" in params else "")
    if params["offset"] < ONE_WALK_MAX_ROWS:
        with conn.pipeline(), conn.transaction():
            if fence is not None:
                fence.check(conn)
            conn.execute(
                db.query("cleanup.batch_settings"), {"lock_timeout": f"{lock_timeout_ms}ms"}
            )
            batch = conn.execute(
                _rule_statement("delete_walked", rule, after=after),
                {**params, "limit": params["offset"] + 1},
            )
        row = batch.fetchone()
        assert row is not None
        last_id = row["last_id"] if row["matched"] > params["offset"] else None
        return int(row["deleted"]), last_id, time.monotonic() - started
    with conn.pipeline(), conn.transaction():
        if fence is not None:
            fence.check(conn)
        conn.execute(db.query("cleanup.batch_settings"), {"lock_timeout": f"{lock_timeout_ms}ms"})
        bound = conn.execute(_rule_statement("batch_bound", rule, after=after), params).fetchone()
        last_id = bound["id"] if bound else None
        upto = sql.SQL(db.query("cleanup.upto_id") if bound else "")
        deleting = conn.execute(
            _rule_statement("delete_range", rule, after=after, upto=upto),
            {**params, "upto_id": last_id},
        )
    return max(deleting.rowcount, 0), last_id, time.monotonic() - started


def _rule_statement(query_name: str, rule: Rule, **parts: sql.Composable) -> sql.Composed:
    predicate: sql.Composable = sql.SQL(db.query("cleanup.older_than")).format(
        column=sql.Identifier(rule.column)
    )
    if rule.only is not None:
        predicate = sql.SQL("{} AND {}").format(predicate, rule.only)
    return sql.SQL(db.query(f"cleanup.{query_name}")).format(
        table=rule.identifier(), predicate=predicate, **parts
    )


def _table_exists(conn: Conn, rule: Rule) -> bool:
    # Quoted exactly as the DELETE will quote it, so both resolve the same relation.
    relation = rule.identifier().as_string(conn)
    row = conn.execute(db.query("cleanup.relation_exists"), {"relation": relation}).fetchone()
    return bool(row and row["present"])


def _table_missing(log: Any, outcome: RuleOutcome) -> RuleOutcome:
    log.warning("cleanup_table_missing", rule=outcome.rule, table=outcome.table)
    outcome.status = TABLE_MISSING
    return outcome


def _log_outcome(log: Any, outcome: RuleOutcome) -> None:
    fields = {"rule": outcome.rule, "table": outcome.table, **outcome.summary()}
    if outcome.status == FAILED:
        log.error("cleanup_rule_failed", **fields)
    elif outcome.status == INTERRUPTED:
        log.warning("cleanup_rule_interrupted", **fields)
    else:
        log.info("cleanup_rule_completed", **fields)


def _extra_rule_problem(conn: Conn, rule: Rule) -> str | None:
    relation = rule.identifier().as_string(conn)
    row = conn.execute(
        db.query("cleanup.describe_rule"), {"relation": relation, "column": rule.column}
    ).fetchone()
    if row is None or not row["table_exists"]:
        return f"table {rule.relation} does not exist"
    if row["column_type"] is None:
        return f"table {rule.relation} has no column {rule.column}"
    if row["column_type"] not in _DATE_TYPES:
        return f"column {rule.column} is {row['column_type']}, not a date or timestamp"
    if not row["has_id"]:
        return f"table {rule.relation} has no id column (batches delete by id)"
    if not row["can_delete"]:
        return f"this database role lacks the DELETE privilege on {rule.relation}"
    return None
