"""How a cleanup rule's batches go through its table: its blocks in order, or the order of
the index on its column (README, "How a rule deletes"); which one a rule takes, and why."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from .. import db
from ..db import Conn

if TYPE_CHECKING:
    from .cleanup import Rule

# A rule the planner expects to match less than this share of its table's rows walks the
# index on its column, if there is one; any other walks the table's blocks. Around it the two
# walks cost about the same (README, "How a rule deletes", for the figures).
INDEX_WALK_MAX_SHARE = 0.02
# What a row the block walk reads but keeps counts for, in deleted rows, when batches are sized.
# Reading one costs a sixth (token rows) to a quarter (1 KiB rows) of deleting one: counted as
# a whole row, batches grew over kept rows and, where deleted ones began, one took 0.18 s.
KEPT_ROW_WEIGHT = 0.125


class Walk(StrEnum):
    """How a rule's batches go through its table (README, "How a rule deletes")."""

    BLOCKS = "blocks"  # the table's blocks in order, a TID range per batch
    INDEX = "index"  # the order of the index on the rule's column, the next n rows per batch


@dataclass(frozen=True)
class Table:
    """What choosing a walk found out about a rule's table."""

    walk: Walk
    blocks: int  # its size now
    rows_per_block: float  # the planner's estimate of its rows, over its blocks
    matching: int = 0  # the planner's estimate of the rows the rule matches


class BlockWalk:
    """Batches of consecutive blocks, from the first to the last the table had at the start:
    a batch of `size` rows takes the blocks that hold about that many, matching or not."""

    walk = Walk.BLOCKS

    def __init__(self, rule: Rule, table: Table) -> None:
        self.matching = table.matching
        self.statement = rule.statement("delete_blocks")
        self.days = rule.retention.days
        self.end_block = table.blocks
        self.rows_per_block = table.rows_per_block
        self.next_block = 0
        self.done = table.blocks == 0
        self._batch_end = 0

    def execute(self, conn: Conn, size: int) -> psycopg.Cursor[Any]:
        """Inside the batch's transaction: send the statement of a batch of about `size` rows."""
        blocks = max(1, math.ceil(size / self.rows_per_block))
        self._batch_end = min(self.next_block + blocks, self.end_block)
        first, end = f"({self.next_block},0)", f"({self._batch_end},0)"
        return conn.execute(self.statement, {"first_tid": first, "end_tid": end, "days": self.days})

    def advance(self, cursor: psycopg.Cursor[Any]) -> tuple[int, int]:
        """After the commit: move past the batch; (rows it deleted, rows its time measured)."""
        walked = (self._batch_end - self.next_block) * self.rows_per_block
        self.next_block = self._batch_end
        self.done = self.next_block >= self.end_block
        deleted = max(cursor.rowcount, 0)
        return deleted, deleted + round(max(walked - deleted, 0) * KEPT_ROW_WEIGHT)


class IndexWalk:
    """Batches of the next rows the rule matches, in the order of its column's index."""

    walk = Walk.INDEX

    def __init__(self, rule: Rule, table: Table) -> None:
        self.matching = table.matching
        self.statement = rule.statement("delete_indexed")
        self.days = rule.retention.days
        # Before any date or timestamp; then the last value, in the column's own type.
        self.from_value: Any = "-infinity"
        self.done = False
        self._limit = 0

    def execute(self, conn: Conn, size: int) -> psycopg.Cursor[Any]:
        self._limit = size
        return conn.execute(
            self.statement, {"from_value": self.from_value, "days": self.days, "limit": size}
        )

    def advance(self, cursor: psycopg.Cursor[Any]) -> tuple[int, int]:
        row = cursor.fetchone()
        assert row is not None
        self.done = row["matched"] < self._limit
        if row["last_value"] is not None:
            self.from_value = row["last_value"]
        return int(row["deleted"]), int(row["deleted"])


Walker = BlockWalk | IndexWalk


def walker(conn: Conn, rule: Rule, walk: Walk | None) -> Walker | None:
    table = describe_table(conn, rule)
    if table is None:
        return None
    if (walk or table.walk) == Walk.INDEX:
        return IndexWalk(rule, table)
    return BlockWalk(rule, table)


def describe_table(conn: Conn, rule: Rule) -> Table | None:
    # Quoted exactly as the statements will quote it, so all resolve the same relation.
    relation = rule.identifier().as_string(conn)
    row = conn.execute(
        db.query("cleanup.describe_table"), {"relation": relation, "column": rule.retention.column}
    ).fetchone()
    if row is None or not row["present"]:
        return None
    blocks = int(row["blocks"] or 0)
    rows = _estimate(conn, rule.statement("estimate_rows"), {})
    matching = _estimate(conn, rule.statement("estimate_matching"), {"days": rule.retention.days})
    sparse = matching < INDEX_WALK_MAX_SHARE * rows
    walk = Walk.INDEX if row["indexed"] and sparse else Walk.BLOCKS
    return Table(walk, blocks, max(rows / blocks, 1.0) if blocks else 1.0, round(matching))


def _estimate(conn: Conn, explain: sql.Composed, params: dict[str, Any]) -> float:
    """The planner's row estimate of an EXPLAIN (FORMAT JSON) statement."""
    row = conn.execute(explain, params, prepare=False).fetchone()
    assert row is not None
    return float(row["QUERY PLAN"][0]["Plan"]["Plan Rows"])
