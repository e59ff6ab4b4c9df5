"""The date and time forms a handler's `datetime`, `date` or `timedelta` parameter takes, as
pure functions: ISO text, or a relative form (`now`, `today`, `now-7d`, `today+1d`, `30m`)
evaluated at run time. A small regular grammar, never `eval`.

`resolve` turns a stored value into what the child receives (JSON: ISO text for a datetime
or date, seconds for a timedelta); `revive` turns that back into the object, in the child.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DATE_LIKES = ("datetime", "date", "timedelta")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RELATIVE = re.compile(r"^(now|today)\s*(?:([+-])\s*([0-9]{1,9})\s*([smhd]))?$", re.IGNORECASE)
_DURATION = re.compile(r"^([0-9]{1,9})\s*([smhd])$", re.IGNORECASE)
_FORMS = {
    "datetime": "ISO 8601 text, now, today, or now/today followed by +N or -N and s, m, h or d",
    "date": "an ISO date (2026-01-31), today, or today+Nd / today-Nd",
    "timedelta": "a number of seconds, or N followed by s, m, h or d (30m, 2h, 7d)",
}
# Validation at save time only checks that a form parses; any instant will do.
_ANY_NOW = datetime(2000, 1, 1, tzinfo=UTC)

JsonValue = str | int | float


def resolve(kind: str, value: Any, now: datetime, zone: str | tzinfo = "UTC") -> JsonValue:
    """`value` of a parameter of `kind` (`datetime`, `date`, `timedelta`) at `now`, as the
    child receives it: ISO text for a datetime (with its offset) or a date, seconds for a
    timedelta. `today` is midnight in `zone`; naive ISO text is UTC. ValueError says which
    forms are accepted."""
    if kind == "timedelta":
        return _seconds(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {_FORMS[kind]}, got {json_type(value)}")
    text = value.strip()
    if kind == "datetime":
        return _datetime(text, _aware(now), _zone(zone)).isoformat()
    if kind == "date":
        return _date(text, _aware(now), _zone(zone)).isoformat()
    raise ValueError(f"not a date-like kind: {kind!r}")


def check(kind: str, value: Any) -> None:
    """Raise ValueError unless `value` is a form `kind` takes (nothing is evaluated)."""
    resolve(kind, value, _ANY_NOW)


def revive(kind: str, value: Any) -> datetime | date | timedelta:
    """What `resolve` produced, back as the object a handler receives (in the child)."""
    if kind == "datetime" and isinstance(value, str):
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if kind == "date" and isinstance(value, str):
        return date.fromisoformat(value)
    if kind == "timedelta":
        return timedelta(seconds=_seconds(value))
    raise ValueError(f"expected {_FORMS.get(kind, kind)}, got {json_type(value)}")


def _datetime(text: str, now: datetime, zone: tzinfo) -> datetime:
    match = _RELATIVE.match(text)
    if match is None:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"expected {_FORMS['datetime']}, got {text!r}") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    anchor, sign, amount, unit = match.groups()
    base = now.astimezone(zone)
    if anchor.lower() == "today":
        base = datetime.combine(base.date(), time(0), tzinfo=zone)
    if amount is None:
        return base
    offset = timedelta(seconds=int(amount) * UNIT_S[unit.lower()])
    return base + offset if sign == "+" else base - offset


def _date(text: str, now: datetime, zone: tzinfo) -> date:
    match = _RELATIVE.match(text)
    if match is None:
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"expected {_FORMS['date']}, got {text!r}") from None
    anchor, sign, amount, unit = match.groups()
    if anchor.lower() != "today" or (unit is not None and unit.lower() != "d"):
        raise ValueError(f"expected {_FORMS['date']}, got {text!r}")
    today = now.astimezone(zone).date()
    if amount is None:
        return today
    days = timedelta(days=int(amount))
    return today + days if sign == "+" else today - days


def _seconds(value: Any) -> int | float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("expected a finite number of seconds")
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return int(match.group(1)) * UNIT_S[match.group(2).lower()]
        raise ValueError(f"expected {_FORMS['timedelta']}, got {value!r}")
    raise ValueError(f"expected {_FORMS['timedelta']}, got {json_type(value)}")


def _aware(now: datetime) -> datetime:
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def _zone(zone: str | tzinfo) -> tzinfo:
    if not isinstance(zone, str):
        return zone
    if zone.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone!r}") from None


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
