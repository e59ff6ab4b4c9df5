"""The rules of handlers' kwargs that need no child: the annotation grammar and rendering
(worker.signatures) and the date and time forms (worker.timeforms). No PostgreSQL."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any, Optional

import pytest

from worker import timeforms
from worker.signatures import ANY, Kind, annotation_kind, render

NOW = datetime(2026, 5, 1, 12, 30, tzinfo=UTC)  # a Friday, 12:30 UTC


# --- the annotation grammar and the rendering of annotations -----------------------------


@pytest.mark.parametrize(
    ("text", "types", "nullable"),
    [
        ("int", {"int"}, False),
        ("datetime | None", {"datetime"}, True),
        ("None | datetime.datetime", {"datetime"}, True),
        ("Optional[int]", {"int"}, True),
        ("typing.Optional[list[str]]", {"list"}, True),
        ("Union[int, str, None]", {"int", "str"}, True),
        ("List[int]", {"list"}, False),
        ("typing.Dict[str, list[int | None]]", {"dict"}, False),
        ("dict[str, int] | list[int]", {"dict", "list"}, False),
        ("'timedelta'", {"timedelta"}, False),
        ("datetime.date", {"date"}, False),
        ("bool", {"bool"}, False),
    ],
)
def test_annotation_kinds(text: str, types: set[str], nullable: bool) -> None:
    assert annotation_kind(text) == Kind(frozenset(types), nullable)


@pytest.mark.parametrize(
    "text", [None, "", "Any", "typing.Any", "Config", "int | Config", "Literal['a', 'b']", "list["]
)
def test_what_the_grammar_does_not_know_accepts_anything(text: str | None) -> None:
    assert annotation_kind(text) == ANY
    assert ANY.problem(None) is None and ANY.problem({"x": 1}) is None


def test_date_like_only_when_unambiguous() -> None:
    assert annotation_kind("datetime | None").date_like == "datetime"
    assert annotation_kind("timedelta").date_like == "timedelta"
    assert annotation_kind("datetime | str").date_like is None
    assert annotation_kind("date | datetime").date_like is None


class Config:
    pass


@pytest.mark.parametrize(
    ("annotation", "text"),
    [
        (int, "int"),
        (datetime | None, "datetime | None"),
        (Optional[int], "Optional[int]"),  # noqa: UP045 (the typing form is the point)
        (typing.Union[int, str], "Union[int, str]"),  # noqa: UP007
        (list[str], "list[str]"),
        (typing.Dict[str, int], "Dict[str, int]"),  # noqa: UP006
        (dict[str, list[int]] | None, "dict[str, list[int]] | None"),
        (typing.Any, "Any"),
        (typing.Literal["a", "b"], "Literal['a', 'b']"),
        (Config, "Config"),
        ("datetime | None", "datetime | None"),
    ],
)
def test_annotations_render_as_written(annotation: Any, text: str) -> None:
    assert render(annotation) == text


# --- the date and time forms at a fixed now ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("now", "2026-05-01T12:30:00+00:00"),
        ("NOW", "2026-05-01T12:30:00+00:00"),
        ("today", "2026-05-01T00:00:00+00:00"),
        ("now-7d", "2026-04-24T12:30:00+00:00"),
        ("now + 30m", "2026-05-01T13:00:00+00:00"),
        ("now-90s", "2026-05-01T12:28:30+00:00"),
        ("today+1d", "2026-05-02T00:00:00+00:00"),
        ("today-2h", "2026-04-30T22:00:00+00:00"),
        ("2026-01-31T08:00:00+08:00", "2026-01-31T08:00:00+08:00"),
        ("2026-01-31T08:00:00Z", "2026-01-31T08:00:00+00:00"),
        ("2026-01-31T08:00:00", "2026-01-31T08:00:00+00:00"),  # naive: UTC
        ("2026-01-31", "2026-01-31T00:00:00+00:00"),
    ],
)
def test_datetime_forms(value: str, expected: str) -> None:
    assert timeforms.resolve("datetime", value, NOW) == expected


def test_today_is_midnight_in_the_zone_given() -> None:
    assert timeforms.resolve("datetime", "today", NOW, "Asia/Shanghai") == (
        "2026-05-01T00:00:00+08:00"
    )
    assert timeforms.resolve("datetime", "now", NOW, "Asia/Shanghai") == (
        "2026-05-01T20:30:00+08:00"
    )
    naive_now = datetime(2026, 5, 1, 12, 30)  # taken as UTC
    assert timeforms.resolve("datetime", "now", naive_now) == "2026-05-01T12:30:00+00:00"


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("date", "today", "2026-05-01"),
        ("date", "today-1d", "2026-04-30"),
        ("date", "today+10d", "2026-05-11"),
        ("date", "2026-02-28", "2026-02-28"),
        ("timedelta", "30m", 1800),
        ("timedelta", "2h", 7200),
        ("timedelta", "7d", 604800),
        ("timedelta", "90s", 90),
        ("timedelta", 45, 45),
        ("timedelta", 1.5, 1.5),
        ("timedelta", 60.0, 60),
    ],
)
def test_date_and_timedelta_forms(kind: str, value: Any, expected: Any) -> None:
    assert timeforms.resolve(kind, value, NOW) == expected


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("datetime", "yesterday"),
        ("datetime", "now-7"),
        ("datetime", "now*2"),
        ("datetime", "__import__('os')"),
        ("datetime", "now-7y"),
        ("datetime", 1714560000),
        ("date", "now"),
        ("date", "today-2h"),
        ("date", "2026-05-01T00:00"),
        ("timedelta", "1h30m"),
        ("timedelta", "-5m"),
        ("timedelta", True),
        ("timedelta", float("inf")),
        ("timedelta", "PT30M"),
    ],
)
def test_unknown_forms_are_refused(kind: str, value: Any) -> None:
    with pytest.raises(ValueError, match="expected"):
        timeforms.resolve(kind, value, NOW)
