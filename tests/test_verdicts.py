"""The health verdicts of `worker status` as a pure function: no database, no process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.status import HEALTHY, health

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def row(**fields: Any) -> dict[str, Any]:
    """A job_status row of an hourly job that last succeeded ten minutes ago."""
    base = {
        "paused": False,
        "last_completed_status": "success",
        "last_started_at": NOW - timedelta(minutes=10),
        "first_started_at": NOW - 10 * HOUR,
        "last_success_at": NOW - timedelta(minutes=10),
        "next_due_at": NOW + timedelta(minutes=50),
    }
    return {**base, **fields}


@pytest.mark.parametrize(
    ("fields", "verdict"),
    [
        ({}, "ok"),
        ({"paused": True, "last_completed_status": "failed"}, "paused"),  # paused wins
        ({"last_completed_status": "failed"}, "failed"),
        ({"last_success_at": NOW - 2 * HOUR - timedelta(seconds=1)}, "stale"),
        ({"last_success_at": NOW - 2 * HOUR}, "ok"),  # exactly two periods: not yet stale
        # Never started: waiting until its due time is two periods past.
        ({"last_started_at": None, "next_due_at": NOW - HOUR}, "waiting"),
        ({"last_started_at": None, "next_due_at": NOW - 3 * HOUR}, "never_run"),
        # Trying since its first run without a success: stale once that is two periods ago.
        ({"last_success_at": None, "first_started_at": NOW - HOUR}, "waiting"),
        ({"last_success_at": None, "first_started_at": NOW - 3 * HOUR}, "stale"),
    ],
)
def test_health(fields: dict[str, Any], verdict: str) -> None:
    assert health(row(**fields), HOUR, NOW) == verdict


@pytest.mark.parametrize(
    ("fields", "verdict"),
    [
        # Last success 5 h ago, paused since: resumed 30 min ago, the clock starts then.
        ({"last_success_at": NOW - 5 * HOUR, "resumed_at": NOW - HOUR / 2}, "ok"),
        ({"last_success_at": NOW - 5 * HOUR, "resumed_at": NOW - 2 * HOUR - HOUR}, "stale"),
        # A resume long ago does not excuse a job that has not run since.
        ({"last_success_at": NOW - 5 * HOUR, "resumed_at": NOW - 10 * HOUR}, "stale"),
        # A failing job that was paused: trying counted from the resume.
        (
            {"last_success_at": None, "first_started_at": NOW - 9 * HOUR, "resumed_at": NOW},
            "waiting",
        ),
        # Never ran, paused before its first occurrence: due counted from the resume.
        (
            {"last_started_at": None, "next_due_at": NOW - 9 * HOUR, "resumed_at": NOW - HOUR},
            "waiting",
        ),
    ],
)
def test_the_staleness_clock_starts_at_the_resume(fields: dict[str, Any], verdict: str) -> None:
    assert health(row(**fields), HOUR, NOW) == verdict


def test_only_ok_paused_and_waiting_are_healthy() -> None:
    assert set(HEALTHY) == {"ok", "paused", "waiting"}


@pytest.mark.parametrize(
    ("fields", "verdict"),
    [
        ({"last_started_at": None, "next_due_at": NOW - 30 * HOUR}, "waiting"),
        ({"last_success_at": NOW - 300 * HOUR}, "ok"),
        ({"last_completed_status": "failed"}, "failed"),
    ],
)
def test_a_job_without_a_period_is_never_stale(fields: dict[str, Any], verdict: str) -> None:
    assert health(row(**fields), None, NOW) == verdict
