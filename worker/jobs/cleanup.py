"""Delete expired and aged-out rows in small batches that never hold the app's tables for long."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql

from .. import db
from ..batches import BatchSizer
from ..db import Conn
from ..settings import ConfigError, RetentionRule, Settings
from . import walks
from .base import Fence, JobContext, fenced_out
from .walks import Walk

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

_DATE_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")
_NOT_IN_SUMMARY = ("rule", "table", "error")  # RuleOutcome fields its summary leaves out


class RuleStatus(StrEnum):
    """How a rule ended: the `status` of its entry in a run's `details.rules`."""

    COMPLETED = "completed"
    TABLE_MISSING = "table_missing"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    DRY_RUN = "dry_run"


@dataclass(frozen=True)
class Rule:
    """A retention rule (settings.RetentionRule) as cleanup applies it. `kept`, when set, names a
    condition in cleanup.sql whose rows the rule never deletes, however old (SQL of this
    package, never taken from configuration)."""

    retention: RetentionRule
    kept: str | None = None

    @classmethod
    def of(cls, table: str, column: str, days: int, *, kept: str | None = None) -> Rule:
        """Delete rows of `table` whose `column` is more than `days` days in the past (`days=0`:
        already past, for expiry columns such as `expires_at`)."""
        return cls(RetentionRule(table, column, days), kept)

    @property
    def name(self) -> str:
        return self.retention.name

    @property
    def relation(self) -> str:
        schema, table = self.retention.schema, self.retention.table
        return f"{schema}.{table}" if schema else table

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(*self.relation.split("."))  # names are plain identifiers

    def statement(self, name: str) -> sql.Composed:
        """The named statement `cleanup.<name>` with this rule's table, column and kept rows."""
        kept = sql.SQL(db.query(f"cleanup.{self.kept}")) if self.kept else sql.Literal(False)
        return sql.SQL(db.query(f"cleanup.{name}")).format(
            table=self.identifier(), column=sql.Identifier(self.retention.column), kept=kept
        )


@dataclass
class RuleOutcome:
    """What one rule did: its walk, rows deleted, batches (transactions that deleted rows),
    timings, and the batch sizes it asked for (smallest, largest, last; None if none ran):
    matching rows in the index walk, rows its blocks hold (estimated) in the block walk."""

    rule: str
    table: str
    walk: Walk | None = None
    status: RuleStatus = RuleStatus.COMPLETED
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
        entry = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_IN_SUMMARY
        }
        entry["elapsed_seconds"] = round(self.elapsed_seconds, 3)
        entry["longest_batch_seconds"] = round(self.longest_batch_seconds, 3)
        if self.error:
            entry["error"] = self.error
        return entry


def clean_tokens(ctx: JobContext) -> None:
    """One pass of `cleanup_tokens`: refresh and password-reset tokens past `expires_at`."""
    tables = ("refresh_tokens", "password_reset_tokens")
    _run_rules(ctx, [Rule.of(table, "expires_at", 0) for table in tables])


def clean_sessions(ctx: JobContext) -> None:
    """One pass of `cleanup_sessions`: scrape sessions older than their retention."""
    days = ctx.settings.scrape_session_retention_days
    _run_rules(ctx, [Rule.of("scrape_sessions", "created_at", days)])


def clean_content(ctx: JobContext) -> None:
    """One pass of `cleanup_content`: old Reddit comments, then old posts (with their comments)."""
    days = ctx.settings.reddit_content_retention_days
    # Comments first: each post's delete then cascades to fewer rows, keeping batches short.
    tables = ("reddit_comments", "reddit_posts")
    _run_rules(ctx, [Rule.of(table, "created_at", days) for table in tables])


def clean_history(ctx: JobContext) -> None:
    """One pass of `cleanup_history`: finished worker runs, old alerts, then CLEANUP_EXTRA_RULES."""
    settings, runs_days = ctx.settings, ctx.settings.job_run_retention_days
    rules = [
        Rule.of("worker_job_runs", "started_at", runs_days, kept="running_run"),
        Rule.of("worker_alerts", "created_at", settings.alert_retention_days),
        *(Rule(rule) for rule in settings.cleanup_extra_rules),
    ]
    _run_rules(ctx, rules)


def check_extra_rules(conn: Conn, settings: Settings) -> None:
    """Refuse at start (ConfigError, exit 2) any extra rule the database cannot apply.

    The relation must exist (an operator named it, so a missing one is a mistake, unlike the
    built-in app tables) and be a table, with a date or timestamp column of the given name,
    and this role must be allowed to delete from it.
    """
    for setting in settings.cleanup_extra_rules:
        rule = Rule(setting)
        problem = _extra_rule_problem(conn, rule)
        if problem:
            raise ConfigError(f"CLEANUP_EXTRA_RULES: rule {rule.name}:{setting.days}: {problem}")


def delete_in_batches(
    conn: Conn,
    rule: Rule,
    sizer: BatchSizer,
    should_stop: Callable[[], bool],
    log: Any,
    *,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    fence: Fence | None = None,
    walk: Walk | None = None,
    on_batch: Callable[[int, int], None] = lambda deleted, matching: None,
) -> RuleOutcome:
    """Delete every row `rule` matches, one transaction per batch, until none is left.

    The walk is `walk`, or the one `choose_walk` picks. Each batch asks `sizer` how many rows
    to take and tells it how long they took; after each one (and before the first),
    `on_batch(rows deleted so far, the planner's estimate of the rows the rule matched when
    it began)`. `conn` must be in autocommit mode. Stops early
    when `should_stop()` turns true between batches, or at the first failing batch (which
    rolls back alone). A missing table is reported, not raised. Raises only when the
    connection itself is lost.
    """
    outcome = RuleOutcome(rule.name, rule.relation)
    started = time.monotonic()
    walker = walks.walker(conn, rule, walk)
    if walker is None:
        return _table_missing(log, outcome)
    outcome.walk = walker.walk
    on_batch(0, walker.matching)
    while not walker.done:
        size = sizer.size
        try:
            deleted, measured, seconds = _run_batch(conn, walker, size, lock_timeout_ms, fence)
        except psycopg.Error as exc:
            if conn.broken:
                raise
            if fenced_out(exc) and fence is not None:
                fence.lost()  # the run lost its lease: this batch rolled back, stop here
                outcome.status = RuleStatus.INTERRUPTED
                break
            outcome.status, outcome.error = RuleStatus.FAILED, db.describe_error(exc)
            break
        outcome.record_batch(size, deleted, seconds)
        on_batch(outcome.deleted, walker.matching)
        sizer.next_size(measured, seconds)
        if not walker.done and should_stop():
            outcome.status = RuleStatus.INTERRUPTED
            break
    outcome.elapsed_seconds = time.monotonic() - started
    _log_outcome(log, outcome)
    return outcome


def choose_walk(conn: Conn, rule: Rule) -> Walk | None:
    """The walk `rule` takes through its table now; None when the table does not exist.

    The index walk when an index leads with the rule's column and the planner expects the
    rule to match less than walks.INDEX_WALK_MAX_SHARE of the table's rows; the block walk
    otherwise.
    """
    table = walks.describe_table(conn, rule)
    return table.walk if table else None


def count_rows(conn: Conn, rule: Rule) -> int | None:
    """How many rows `rule` would delete now; None when its table does not exist."""
    if walks.describe_table(conn, rule) is None:
        return None
    row = conn.execute(rule.statement("count_rows"), {"days": rule.retention.days}).fetchone()
    return int(row["n"]) if row else 0


def _run_batch(
    conn: Conn, walker: walks.Walker, size: int, lock_timeout_ms: int, fence: Fence | None
) -> tuple[int, int, float]:
    """One batch in its own transaction, pipelined (one round trip): (rows deleted, rows its
    time measured, seconds)."""
    started = time.monotonic()
    with conn.pipeline(), conn.transaction():
        if fence is not None:
            fence.check(conn)
        conn.execute(db.query("cleanup.batch_settings"), {"lock_timeout": f"{lock_timeout_ms}ms"})
        cursor = walker.execute(conn, size)
    deleted, measured = walker.advance(cursor)
    return deleted, measured, time.monotonic() - started


# --- the job -----------------------------------------------------------------------------


def _run_rules(ctx: JobContext, rules: Sequence[Rule]) -> None:
    summaries: dict[str, dict[str, Any]] = {}
    progress = _Progress(ctx.progress)
    for rule in rules:
        if ctx.should_stop():
            break
        summaries[rule.name] = _preview(ctx, rule) if ctx.dry_run else _apply(ctx, rule, progress)
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


@dataclass
class _Progress:
    """A pass's progress in rows: deleted so far, of the rows its rules that ended deleted
    plus the planner's estimate for the rule under way (rules not begun are not counted)."""

    report: Callable[[int, int | None], None]
    before: int = 0  # rows the rules that ended deleted

    def batch(self, deleted: int, matching: int) -> None:
        self.report(self.before + deleted, self.before + max(deleted, matching))


def _apply(ctx: JobContext, rule: Rule, progress: _Progress) -> dict[str, Any]:
    sizer = BatchSizer.from_settings(ctx.settings)  # each rule learns its own table's pace
    outcome = delete_in_batches(
        ctx.conn, rule, sizer, ctx.should_stop, ctx.log, fence=ctx.fence, on_batch=progress.batch
    )
    progress.before += outcome.deleted
    if outcome.status is RuleStatus.FAILED:
        ctx.result.fail(rule.name, "batch_failed", error=outcome.error, deleted=outcome.deleted)
    elif outcome.status is not RuleStatus.INTERRUPTED:
        ctx.result.ok()  # completed, or a table this app does not have
    return outcome.summary()


def _preview(ctx: JobContext, rule: Rule) -> dict[str, Any]:
    count: int | None = None
    with ctx.item(rule.name, "cleanup_count_failed", rule=rule.name) as counting:
        count = count_rows(ctx.conn, rule)
    if counting.error is not None:
        return {"status": RuleStatus.FAILED, "error": counting.error}
    ctx.result.ok()
    if count is None:
        _table_missing(ctx.log, RuleOutcome(rule.name, rule.relation))
        return {"status": RuleStatus.TABLE_MISSING, "would_delete": 0}
    ctx.log.info("cleanup_rule_would_delete", rule=rule.name, table=rule.relation, count=count)
    return {"status": RuleStatus.DRY_RUN, "would_delete": count}


def _table_missing(log: Any, outcome: RuleOutcome) -> RuleOutcome:
    log.warning("cleanup_table_missing", rule=outcome.rule, table=outcome.table)
    outcome.status = RuleStatus.TABLE_MISSING
    return outcome


def _log_outcome(log: Any, outcome: RuleOutcome) -> None:
    fields = {"rule": outcome.rule, "table": outcome.table, **outcome.summary()}
    if outcome.status is RuleStatus.FAILED:
        log.error("cleanup_rule_failed", **fields)
    elif outcome.status is RuleStatus.INTERRUPTED:
        log.warning("cleanup_rule_interrupted", **fields)
    else:
        log.info("cleanup_rule_completed", **fields)


def _extra_rule_problem(conn: Conn, rule: Rule) -> str | None:
    relation, column = rule.identifier().as_string(conn), rule.retention.column
    row = conn.execute(
        db.query("cleanup.describe_rule"), {"relation": relation, "column": column}
    ).fetchone()
    if row is None or not row["table_exists"]:
        return f"table {rule.relation} does not exist"
    if not row["is_table"]:
        return f"{rule.relation} is not a table (batches walk a table's blocks)"
    if row["column_type"] is None:
        return f"table {rule.relation} has no column {column}"
    if row["column_type"] not in _DATE_TYPES:
        return f"column {column} is {row['column_type']}, not a date or timestamp"
    if not row["can_delete"]:
        return f"this database role lacks the DELETE privilege on {rule.relation}"
    return None
