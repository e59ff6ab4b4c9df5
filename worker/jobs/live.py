"""A run as it goes: its output so far and how many of its items are done, written to the
run's row at most once a FLUSH_S, for the run page and `GET /api/runs/ID` (ARCHITECTURE.md,
"Runtime jobs" and "A run as it goes").

Two kinds of source feed it: a child's (a declared or runtime job: its output, and the file
its handler's `task.progress` writes), read on every supervisor tick; and a built-in job's
own count, handed over by `JobContext.progress` after each item or batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from .. import db, task
from ..db import Conn
from ..store import ledger

FLUSH_S = 1.0
# The variable naming the file a handler's `task.progress` writes.
PROGRESS_ENV = task.PROGRESS_ENV

Progress = tuple[int | None, int | None]  # (done, total); None: not reported / not known


class LiveRun:
    """Writes only what changed, never more than once a FLUSH_S (the first change at once).
    A write that fails (the database blinked) is skipped: the run goes on, and its outcome
    is recorded as always when it ends. Each call costs a clock read unless a write is due:
    a job may report after every item."""

    def __init__(
        self,
        conn: Conn,
        log: Any,
        run_id: int | None,
        *,
        output: Callable[[], str] | None = None,
        progress: Callable[[], Progress] | None = None,
        mask: Callable[[str], str] = str,
    ) -> None:
        self._conn = conn
        self._log = log
        self.run_id = run_id  # None: no run row to write (a dry run)
        self._output = output or (lambda: "")
        self._progress = progress or (lambda: self._reported)
        self._mask = mask
        self._reported: Progress = (None, None)
        self._flushed_at = time.monotonic() - FLUSH_S
        self._written: tuple[str, int | None, int | None] = ("", None, None)
        self._failing = False

    def report(self, done: int, total: int | None) -> None:
        """`done` of `total` items so far (a built-in job's count): written now if a write
        is due, else by a later call."""
        self._reported = (done, None if total is None else max(total, done))
        self.tick()

    def tick(self) -> None:
        if self.run_id is None or time.monotonic() - self._flushed_at < FLUSH_S:
            return
        self._flushed_at = time.monotonic()
        state = (self._output(), *self._progress())
        if state == self._written:
            return
        text, done, total = state
        try:
            ledger.run_progress(self._conn, self.run_id, self._mask(text) or None, done, total)
        except psycopg.Error as exc:
            if not self._failing:
                self._log.warning("run_progress_failed", error=db.describe_error(exc))
            self._failing = True
            return
        self._written, self._failing = state, False


def read_progress(path: Path | None) -> Progress:
    """(done, total) as the handler last wrote them; (None, None) before it did."""
    if path is None:
        return None, None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        done, total = value.get("done"), value.get("total")
    except (OSError, ValueError, AttributeError):
        return None, None
    as_int = [v if isinstance(v, int) and not isinstance(v, bool) else None for v in (done, total)]
    return as_int[0], as_int[1]
