"""Schedules as pure functions: DST-safe cron in a time zone, phase-keeping intervals, parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker import schedules
from worker.schedules import Cron, Interval, ScheduleError


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


# --- cron across DST (America/New_York, 2026: spring forward 03-08, fall back 11-01) ---


def test_a_time_spring_forward_skips_runs_once_right_after_the_gap() -> None:
    daily = schedules.parse("30 2 * * *", "America/New_York")

    # 02:30 does not exist on 2026-03-08: it runs at 03:00 EDT (07:00 UTC), once.
    assert daily.upcoming(utc(2026, 3, 7, 12), 3) == [
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 9, 6, 30),
        utc(2026, 3, 10, 6, 30),
    ]
    assert daily.next_after(utc(2026, 3, 8, 6, 59)) == utc(2026, 3, 8, 7, 0)
    assert daily.next_after(utc(2026, 3, 8, 7, 0)) == utc(2026, 3, 9, 6, 30)


def test_a_time_fall_back_repeats_runs_once() -> None:
    daily = schedules.parse("30 1 * * *", "America/New_York")

    # 01:30 happens twice on 2026-11-01: only the first (EDT, 05:30 UTC) runs.
    assert daily.upcoming(utc(2026, 10, 31, 12), 3) == [
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 2, 6, 30),
        utc(2026, 11, 3, 6, 30),
    ]
    first = daily.next_after(utc(2026, 11, 1, 5, 0))
    assert first == utc(2026, 11, 1, 5, 30)
    assert daily.next_after(first) == utc(2026, 11, 2, 6, 30)  # never 06:30 UTC the same day
    assert daily.next_due(first, now=first) == utc(2026, 11, 2, 6, 30)


@pytest.mark.parametrize("minute", [0, 10, 29])
def test_next_after_inside_the_repeated_hour_is_never_in_the_past(minute: int) -> None:
    daily = schedules.parse("30 1 * * *", "America/New_York")
    moment = utc(2026, 11, 1, 6, minute)  # 01:xx EST, the second 01:xx of the day

    # A claim made late, during the repeated hour, must move next_due_at to the next day;
    # a past value would leave the occurrence it just served due again.
    assert daily.next_after(moment) == utc(2026, 11, 2, 6, 30)
    assert daily.next_due(utc(2026, 11, 1, 5, 30), now=moment) == utc(2026, 11, 2, 6, 30)


def test_a_clock_time_in_shanghai_is_due_at_the_matching_utc_time() -> None:
    nightly = schedules.parse("0 2 * * *", "Asia/Shanghai")

    assert nightly.next_after(utc(2026, 1, 1, 0, 0)) == utc(2026, 1, 1, 18, 0)
    assert nightly.upcoming(utc(2026, 1, 1, 18, 0), 2) == [
        utc(2026, 1, 2, 18, 0),
        utc(2026, 1, 3, 18, 0),
    ]


def test_a_cron_job_due_ahead_stays_due_then_moves_to_the_first_occurrence_after_now() -> None:
    hourly = schedules.parse("0 * * * *")
    due = utc(2026, 5, 1, 12, 0)

    assert hourly.next_due(due, now=utc(2026, 5, 1, 11, 30)) == due
    # Three hours late: missed occurrences coalesce into the next one after now.
    assert hourly.next_due(due, now=utc(2026, 5, 1, 15, 10)) == utc(2026, 5, 1, 16, 0)


# --- intervals keep their phase ---


def test_an_interval_moves_by_whole_intervals_to_the_first_time_after_now() -> None:
    hourly = Interval(3600)
    previous = utc(2026, 5, 1, 12, 7, 30)

    # Three hours and a bit late: one step to 16:07:30, never a burst of 12:07, 13:07, ...
    assert hourly.next_due(previous, now=utc(2026, 5, 1, 15, 20)) == utc(2026, 5, 1, 16, 7, 30)
    # Exactly on a due time: the next one, strictly after now.
    assert hourly.next_due(previous, now=utc(2026, 5, 1, 14, 7, 30)) == utc(2026, 5, 1, 15, 7, 30)
    assert hourly.next_due(previous, now=previous) == utc(2026, 5, 1, 13, 7, 30)


def test_an_interval_still_ahead_is_unchanged() -> None:
    every_10m = schedules.parse("every 10m")
    previous = utc(2026, 5, 1, 12, 7, 30)

    assert every_10m.next_due(previous, now=utc(2026, 5, 1, 12, 0)) == previous
    assert every_10m.next_due(previous, now=previous - timedelta(microseconds=1)) == previous


def test_an_interval_is_first_due_one_interval_from_now() -> None:
    now = utc(2026, 5, 1, 12, 0)

    assert schedules.parse("every 15m").first_due(now) == utc(2026, 5, 1, 12, 15)
    assert schedules.upcoming(Interval(900), now, 3) == [
        utc(2026, 5, 1, 12, 15),
        utc(2026, 5, 1, 12, 30),
        utc(2026, 5, 1, 12, 45),
    ]


# --- parsing ---


@pytest.mark.parametrize(
    ("text", "every_s", "canonical"),
    [
        ("every 30s", 30, "every 30s"),
        ("every 15m", 900, "every 15m"),
        ("every 6h", 21600, "every 6h"),
        ("every 1d", 86400, "every 1d"),
        ("every 90s", 90, "every 90s"),
        ("every 60m", 3600, "every 1h"),
        ("  every   24h ", 86400, "every 1d"),
    ],
)
def test_intervals_parse_to_seconds_and_a_canonical_text(
    text: str, every_s: int, canonical: str
) -> None:
    schedule = schedules.parse(text)

    assert schedule == Interval(every_s)
    assert schedule.text == canonical
    assert schedules.parse(schedule.text) == schedule


@pytest.mark.parametrize(
    ("text", "expression"),
    [
        ("*/5 * * * *", "*/5 * * * *"),
        ("0 2 * * 1-5", "0 2 * * 1-5"),
        ("0  2 *  * *", "0 2 * * *"),
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
    ],
)
def test_cron_expressions_and_macros_parse_in_the_given_zone(text: str, expression: str) -> None:
    schedule = schedules.parse(text, "Asia/Shanghai")

    assert schedule == Cron(expression, "Asia/Shanghai")
    assert schedule.text == f"cron {expression} Asia/Shanghai"


@pytest.mark.parametrize("zone_argument", ["UTC", "America/New_York", "Asia/Shanghai"])
def test_the_canonical_cron_text_round_trips_whatever_the_zone_argument(
    zone_argument: str,
) -> None:
    stored = Cron("30 2 * * 0", "Europe/Berlin")

    assert stored.text == "cron 30 2 * * 0 Europe/Berlin"
    assert schedules.parse(stored.text, zone_argument) == stored


@pytest.mark.parametrize(
    ("text", "zone", "says"),
    [
        ("every 0s", "UTC", "'every 0s'"),
        ("every 2x", "UTC", "'every 2x'"),
        ("every -5m", "UTC", "'every -5m'"),
        ("61 * * * *", "UTC", "bad cron expression '61 * * * *'"),
        ("0 25 * * *", "UTC", "bad cron expression '0 25 * * *'"),
        ("* * * *", "UTC", "5-field cron expression"),
        ("* * * * * *", "UTC", "5-field cron expression"),
        ("@yearly", "UTC", "'@yearly'"),
        ("", "UTC", "5-field cron expression"),
        ("0 2 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("cron 0 2 * * * Mars/Olympus", "UTC", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_schedules_raise_a_schedule_error_that_says_what_is_wrong(
    text: str, zone: str, says: str
) -> None:
    with pytest.raises(ScheduleError) as raised:
        schedules.parse(text, zone)

    assert says in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_an_interval_too_long_to_schedule_is_refused_when_parsed() -> None:
    with pytest.raises(ScheduleError):
        schedules.parse("every 9999999d").first_due(utc(2026, 1, 1))


def test_periods_in_seconds() -> None:
    assert schedules.parse("@daily").period_s == 86400
    assert schedules.parse("0 2 * * *", "Asia/Shanghai").period_s == 86400
    assert schedules.parse("@weekly").period_s == 604800
    assert schedules.parse("30 2 * * 0", "America/New_York").period_s >= 604800 - 3600
    assert schedules.parse("@hourly").period_s == 3600
    assert schedules.parse("every 10m").period_s == 600
    assert schedules.parse("every 1d").period_s == 86400


def test_schedules_describe_themselves_in_words() -> None:
    assert schedules.parse("every 10m").describe() == "every 10 minutes"
    assert schedules.parse("every 1h").describe() == "every hour"
    assert schedules.parse("every 90s").describe() == "every 90 seconds"
    # Lower case like the others, though cronsim writes a sentence.
    assert schedules.parse("0 2 * * *", "Asia/Shanghai").describe() == (
        "at 02:00 every day (Asia/Shanghai)"
    )
    assert schedules.parse("@weekly").describe() == "at 00:00 on Sunday (UTC)"
    assert schedules.parse("*/5 * * * *").describe() == "every fifth minute of every hour (UTC)"


def test_durations() -> None:
    assert [schedules.duration_seconds(t) for t in ("30s", "15m", "6h", "1d")] == [
        30,
        900,
        21600,
        86400,
    ]
    assert schedules.duration_text(3600) == "1h"
    assert schedules.duration_text(90) == "90s"
    with pytest.raises(ScheduleError, match="not a duration"):
        schedules.duration_seconds("0s")


def test_manual_is_never_due_and_round_trips() -> None:
    from worker.schedules import NEVER, Manual

    schedule = schedules.parse("manual")
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert schedule == Manual()
    assert schedule.first_due(now) == schedule.next_due(now, now) == NEVER
    assert schedules.parse(schedule.text) == schedule
    assert schedules.upcoming(schedule, now, 3) == []


def test_at_is_due_once_then_never_and_reads_its_zone() -> None:
    from worker.schedules import NEVER, Once

    schedule = schedules.parse("at 2026-12-24T02:00:00+08:00")
    at = datetime(2026, 12, 23, 18, 0, tzinfo=UTC)
    assert schedule == Once(at)
    assert schedule.text == "at 2026-12-23T18:00:00Z"
    assert schedules.parse(schedule.text) == schedule
    before = at - timedelta(hours=1)
    assert schedule.first_due(before) == at
    assert schedule.next_due(at, before) == at  # still ahead
    assert schedule.next_due(at, at + timedelta(seconds=1)) == NEVER  # it ran: never again
    # No offset: wall-clock time in the given zone.
    assert schedules.parse("at 2026-12-24T02:00:00", "Asia/Shanghai") == schedule
    with pytest.raises(schedules.ScheduleError, match="ISO 8601"):
        schedules.parse("at tomorrow")
