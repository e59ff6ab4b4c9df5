"""What every job receives (JobContext) and gives back (JobResult)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..db import Conn
from ..settings import Settings

MAX_DETAILED_FAILURES = 100


@dataclass
class JobResult:
    """Counts of one pass, up to MAX_DETAILED_FAILURES failures with reasons, and extra details."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def ok(self) -> None:
        self.total += 1
        self.succeeded += 1

    def fail(self, item: str, reason: str, **extra: Any) -> None:
        """Count one failed item; `item` and `extra` must not hold secrets."""
        self.total += 1
        self.failed += 1
        if len(self.failures) < MAX_DETAILED_FAILURES:
            self.failures.append({"item": item, "reason": reason, **extra})

    def status(self, *, broken: bool, interrupted: bool) -> str:
        """success, partial, failed or interrupted (DESIGN §3, run lifecycle step 5)."""
        if broken:
            return "failed"
        if interrupted:
            return "interrupted"
        if self.failed and not self.succeeded:
            return "failed"
        return "partial" if self.failed else "success"


AlertFn = Callable[..., None]


@dataclass(frozen=True)
class JobContext:
    """Everything a pass may use: time and configuration come from here or from PostgreSQL."""

    job: str
    conn: Conn
    settings: Settings
    http: httpx.Client
    log: Any
    result: JobResult
    should_stop: Callable[[], bool]
    sleep: Callable[[float], None]
    alert: AlertFn
    dry_run: bool = False
