"""A child's run as it goes: its output so far and the progress its handler reports
(`task.progress`) written to the run's row at most once a FLUSH_S, for the run page and
`GET /api/runs/ID` (ARCHITECTURE.md, "Runtime jobs")."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from .. import db, task
from ..store import ledger
from .base import JobContext

FLUSH_S = 1.0
# The variable naming the file a handler's `task.progress` writes.
PROGRESS_ENV = task.PROGRESS_ENV


class LiveRun:
    """Called every supervisor tick; writes only what changed, never more than once a
    FLUSH_S. A write that fails (the database blinked) is skipped: the run goes on, and its
    outcome is recorded as always when it ends."""

    def __init__(
        self,
        ctx: JobContext,
        output: Callable[[], str],
        progress_path: Path | None,
        mask: Callable[[str], str],
    ) -> None:
        self._ctx = ctx
        self._output = output
        self._progress_path = progress_path
        self._mask = mask
        self._flushed_at = time.monotonic()
        self._written: tuple[str, int | None, int | None] = ("", None, None)
        self._failing = False

    @property
    def run_id(self) -> int | None:
        return None if self._ctx.fence is None else self._ctx.fence.run_id

    def tick(self) -> None:
        if self.run_id is None or time.monotonic() - self._flushed_at < FLUSH_S:
            return
        self._flushed_at = time.monotonic()
        state = (self._output(), *read_progress(self._progress_path))
        if state == self._written:
            return
        text, done, total = state
        try:
            ledger.run_progress(self._ctx.conn, self.run_id, self._mask(text) or None, done, total)
        except psycopg.Error as exc:
            if not self._failing:
                self._ctx.log.warning("run_progress_failed", error=db.describe_error(exc))
            self._failing = True
            return
        self._written, self._failing = state, False


def read_progress(path: Path | None) -> tuple[int | None, int | None]:
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
