"""The run vocabulary: how a run starts, how a claim is answered, how a run ends.

Every layer speaks these words; this module imports nothing of the worker's. The statuses
and triggers are also the CHECK constraints of `worker_job_runs` (migrations 0001, 0005, 0006).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    """The statuses of a `worker_job_runs` row; the table's CHECK constraint lists the same."""

    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"
    CANCELLED = "cancelled"  # someone asked it to stop (`POST /api/runs/ID/cancel`)


class Trigger(StrEnum):
    """Why a run started; the `trigger` column's CHECK constraint lists the same."""

    STARTUP = "startup"
    SCHEDULE = "schedule"
    MANUAL = "manual"
    RETRY = "retry"  # an owed occurrence run again: the same scheduled_for, attempt + 1


class Mode(StrEnum):
    """What a claim asks for."""

    SCHEDULED = "scheduled"  # the daemon's wake-up: a due occurrence or a waiting request
    DUE = "due"  # `--once --due`: a due occurrence only
    ONCE = "once"  # `--once`: a run now, honouring the pause
    MANUAL = "manual"  # `worker run JOB`: a run now, even of a paused job


class Refusal(StrEnum):
    """Why a claim gave no run."""

    NOT_DUE = "not_due"
    PAUSED = "paused"  # the occurrence or request was consumed without a run
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    UNKNOWN = "unknown"  # no service has registered the job
    LATE = "late"  # the occurrence was later than the job's max_lateness: skipped


# What an attempt to run a job came to: a run's status, or why there was no run.
Outcome = RunStatus | Refusal


@dataclass(frozen=True)
class Run:
    id: int
    started_at: datetime


@dataclass(frozen=True)
class Claim:
    """A granted claim: this process holds the job's lease until it finishes `run`.

    `abandoned` lists the dead runners' runs the claim marked abandoned (`id, host, pid`).
    """

    job: str
    owner: str
    trigger: Trigger
    scheduled_for: datetime | None
    next_due_at: datetime
    paused: bool
    run: Run
    abandoned: list[dict[str, Any]]
    attempt: int = 1
    kwargs: dict[str, Any] | None = None  # the run's parameters (a runtime job's, a one-off's)
