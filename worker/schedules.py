"""Schedules as data: a cron expression in a time zone, or a fixed interval, each a pure function.

`next_due(previous_due, now)` is the one answer to "when is it due next" that the ledger,
`status` and `jobs-check` share (ARCHITECTURE.md, "The schedule ledger").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^every\s+([1-9][0-9]{0,6})\s*([smhd])$")
_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}
# How many upcoming occurrences a cron schedule's period is judged from: enough to see
# the longest gap of any weekly or monthly expression.
_PERIOD_SAMPLE = 6
MAX_INTERVAL_S = 366 * 86400


class ScheduleError(ValueError):
    """A schedule or time zone that cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class Policy:
    """What a job does with a late, an overlapping and an owed occurrence (ARCHITECTURE.md,
    "Owed occurrences"): the jobs file's `max_lateness`, `overlap` and `max_attempts`."""

    max_attempts: int = 3  # runs per occurrence; the last interrupted one raises an alert
    max_lateness_s: int | None = None  # an occurrence found later than this is skipped
    overlap: str = "queue"  # queue: one run right after the previous; skip: none

    def too_late(self, due: datetime, now: datetime) -> bool:
        """Whether an occurrence due at `due`, found at `now`, is skipped as late."""
        return self.max_lateness_s is not None and (now - due).total_seconds() > self.max_lateness_s


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Interval:
    """Every `every_s` seconds, keeping the phase of the first due time."""

    every_s: int

    @property
    def text(self) -> str:
        """The canonical text, as stored in `worker_jobs.schedule`."""
        return f"every {duration_text(self.every_s)}"

    @property
    def period_s(self) -> int:
        return self.every_s

    def first_due(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.every_s)

    def next_due(self, previous_due: datetime, now: datetime) -> datetime:
        """`previous_due` plus whole intervals: the first such time after `now`."""
        if previous_due > now:
            return previous_due
        missed = (now - previous_due) // timedelta(seconds=self.every_s)
        return previous_due + (missed + 1) * timedelta(seconds=self.every_s)

    def describe(self) -> str:
        return f"every {duration_words(self.every_s)}"


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression in a time zone, with Debian cron's DST rules.

    A wall-clock time that a spring-forward skips fires once right after the gap; a time
    that a fall-back repeats fires once (cronsim implements both).
    """

    expression: str
    timezone: str

    @property
    def text(self) -> str:
        return f"cron {self.expression} {self.timezone}"

    @property
    def period_s(self) -> int:
        """The longest gap between upcoming occurrences: a daily job's period is a day."""
        times = self.upcoming(datetime.now(UTC), _PERIOD_SAMPLE)
        gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
        return int(max(gaps))

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after `moment` (an aware datetime), in UTC."""
        return self.upcoming(moment, 1)[0]

    def first_due(self, now: datetime) -> datetime:
        return self.next_after(now)

    def next_due(self, previous_due: datetime, now: datetime) -> datetime:
        """`previous_due` while it is still ahead, else the first occurrence after `now`."""
        return previous_due if previous_due > now else self.next_after(now)

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` occurrences strictly after `after`, in UTC."""
        local = after.astimezone(ZoneInfo(self.timezone))
        # Inside a fall-back's repeated hour cronsim reads the local time without its fold
        # and can offer the hour's first pass, which is already in the past: skip it.
        times = (t.astimezone(UTC) for t in CronSim(self.expression, local))
        return list(islice((t for t in times if t > after), count))

    def describe(self) -> str:
        return f"{_explain(self.expression)} ({self.timezone})"


# The due time of a job no schedule makes due: a `manual` one, an `at` one that has run.
# (A real timestamp: `infinity` has no Python datetime.)
NEVER = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class Manual:
    """Never due: runs only when asked (`worker run`, the dashboard, the API)."""

    @property
    def text(self) -> str:
        return "manual"

    @property
    def period_s(self) -> None:
        return None  # no period: never stale, never overdue

    def first_due(self, now: datetime) -> datetime:
        return NEVER

    def next_due(self, previous_due: datetime, now: datetime) -> datetime:
        return NEVER

    def describe(self) -> str:
        return "manual: only when asked"


@dataclass(frozen=True)
class Once:
    """Due once, at `at` (an aware datetime); then never again."""

    at: datetime

    @property
    def text(self) -> str:
        return f"at {self.at.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"

    @property
    def period_s(self) -> None:
        return None

    def first_due(self, now: datetime) -> datetime:
        return self.at

    def next_due(self, previous_due: datetime, now: datetime) -> datetime:
        """`at` while it is ahead; once it has passed (its run claimed), never."""
        return previous_due if previous_due > now else NEVER

    def describe(self) -> str:
        return f"once, at {self.at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}"


Schedule = Interval | Cron | Manual | Once


def parse(text: str, timezone: str = "UTC") -> Schedule:
    """`every N{s,m,h,d}`, a 5-field cron expression, `@hourly|@daily|@weekly|@monthly`,
    `manual`, or `at ISO-8601` (with an offset, or `Z`; one without is in `timezone`).

    A stored canonical text (`cron EXPR ZONE`, `at ...Z`) parses back to the same
    schedule, whatever `timezone` says.
    """
    value = " ".join(text.split())
    if value == "manual":
        return Manual()
    if value.startswith("at "):
        return Once(parse_at(value.removeprefix("at "), timezone))
    interval = _INTERVAL.match(value)
    if interval:
        return _interval(int(interval.group(1)) * UNIT_S[interval.group(2)])
    if value.startswith("cron "):
        fields = value.removeprefix("cron ").split(" ")
        if len(fields) == 6:  # the stored form: five fields and a time zone
            return _cron(" ".join(fields[:5]), fields[5])
        return _cron(" ".join(fields), timezone)
    return _cron(_MACROS.get(value, value), timezone)


def parse_at(text: str, timezone: str = "UTC") -> datetime:
    """An ISO 8601 date and time; one without an offset is wall-clock time in `timezone`."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(
            f"{text!r} is not an ISO 8601 time such as 2026-12-24T02:00:00+08:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(check_timezone(timezone)))
    return moment.astimezone(UTC)


def upcoming(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next `count` due times after `after` for a schedule first due then."""
    if isinstance(schedule, Cron):
        return schedule.upcoming(after, count)
    if isinstance(schedule, Manual):
        return []
    if isinstance(schedule, Once):
        return [schedule.at] if schedule.at > after else []
    step = timedelta(seconds=schedule.every_s)
    return [after + step * (i + 1) for i in range(count)]


def duration_seconds(text: str) -> int:
    """`30s`, `15m`, `6h`, `1d` as seconds."""
    match = re.fullmatch(r"([1-9][0-9]{0,6})([smhd])", text.strip())
    if not match:
        raise ScheduleError(f"{text!r} is not a duration such as 30s, 15m, 6h or 1d")
    return int(match.group(1)) * UNIT_S[match.group(2)]


def duration_text(seconds: int) -> str:
    """The shortest whole-unit form of `seconds`: 3600 → `1h`, 90 → `90s`."""
    for unit in ("d", "h", "m"):
        if seconds % UNIT_S[unit] == 0:
            return f"{seconds // UNIT_S[unit]}{unit}"
    return f"{seconds}s"


def duration_words(seconds: int) -> str:
    names = {"d": "day", "h": "hour", "m": "minute", "s": "second"}
    text = duration_text(seconds)
    count, unit = int(text[:-1]), names[text[-1]]
    return unit if count == 1 else f"{count} {unit}s"


def check_timezone(name: str) -> str:
    """`name` if it is a known IANA time zone, else ScheduleError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r} (e.g. UTC, Asia/Shanghai)") from None
    return name


def _interval(every_s: int) -> Interval:
    if every_s > MAX_INTERVAL_S:
        raise ScheduleError(
            f"every {duration_text(every_s)} is longer than {MAX_INTERVAL_S // 86400} days; "
            "use a cron expression for rare jobs"
        )
    return Interval(every_s)


def _cron(expression: str, timezone: str) -> Cron:
    check_timezone(timezone)
    fields = expression.split(" ")
    if len(fields) != 5:
        raise ScheduleError(
            f"{expression!r} is neither `every N<s|m|h|d>` nor a 5-field cron expression"
        )
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ScheduleError(f"bad cron expression {expression!r}: {exc}") from None
    return Cron(expression, timezone)


def _explain(expression: str) -> str:
    try:
        words = str(CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC)).explain())
    except Exception:  # explaining is cosmetic: an odd expression still schedules
        return f"cron {expression}"
    # cronsim writes a sentence ("At 02:00 every day"); every other schedule's words are
    # lower case ("every hour", "manual: only when asked"), and so are these.
    return words[:1].lower() + words[1:]
