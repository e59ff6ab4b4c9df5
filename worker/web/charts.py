"""The job page's charts as geometry: which rectangle goes where, in which fill, with which
title and axis labels, and what each links to. Pure functions from the rows
`store/charts.py` reads to coordinates; `templates/_charts.html` only draws them. The job
list's sparklines (`web/sparklines.py`) share the fills.

Horizontal positions are percentages of the chart's width (the SVG is as wide as the page,
its text stays at the page's size, legible on a phone); vertical ones are pixels. A status
is told by its colour (the Okabe-Ito palette, told apart with the common colour-vision
deficiencies) and, for all but success and running, by a pattern too; the sparkline tells
it by position as well: successes rise above the midline, failures hang below.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from .. import status as status_words
from ..db import Conn
from ..store import charts as chart_store

LAST_RUNS = 100  # bars of the job page's duration chart
HOURS = 7 * 24  # columns of its runs-per-hour chart

PLOT_TOP = 16  # px above the plot: the top gridline's label
PLOT_HEIGHT = 120
AXIS_HEIGHT = 18  # px below the plot: the time labels
CHART_HEIGHT = PLOT_TOP + PLOT_HEIGHT + AXIS_HEIGHT
MIN_BAR_PX = 2.0  # a run of no measurable duration still shows
MIN_SLOTS = 20  # a short history gets bars of a twentieth of the width, not wider
GAP = 0.2  # of a slot, between two bars
MIN_DAY_LABEL_HOURS = 10  # a day cut shorter than this by the window's edge goes unlabelled

# Nice tops for the duration axis, in ms; past a day, whole days.
DURATION_STEPS_MS = tuple(
    int(seconds * 1000)
    for seconds in (
        *(0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30),
        *(60 * m for m in (1, 2, 5, 10, 15, 30)),
        *(3600 * h for h in (1, 2, 3, 6, 12, 24)),
    )
)
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Style:
    """How a status is drawn: its colour, and a pattern over it as a second cue."""

    colour: str
    pattern: str | None  # "stripes", "cross", "dots" (templates/_charts.html draws them)


STYLES = {  # the order is the stacking order, bottom first, and the legend's
    "success": Style("#009E73", None),
    "partial": Style("#E69F00", "stripes"),
    "failed": Style("#D55E00", "cross"),
    "running": Style("#56B4E9", None),
    "interrupted": Style("#CC79A7", "dots"),
    "cancelled": Style("#A0A0A0", "dots"),
    "abandoned": Style("#6E6E6E", "dots"),
}
OTHER = Style("#6E6E6E", "dots")  # a status this module does not know yet


@dataclass(frozen=True)
class Pattern:
    id: str
    colour: str
    kind: str


PATTERNS = tuple(
    Pattern(f"chart-{name}", style.colour, style.pattern)
    for name, style in STYLES.items()
    if style.pattern
)


def fill(status: str, *, patterned: bool = True) -> str:
    """The SVG fill of a status: its pattern's reference, or its plain colour."""
    style = STYLES.get(status, OTHER)
    if patterned and style.pattern and status in STYLES:
        return f"url(#chart-{status})"
    return style.colour


@dataclass(frozen=True)
class Rect:
    """A rectangle: x and width in the chart's horizontal unit (percent of the width; the
    sparkline's viewBox units), y and height in pixels from the top."""

    x: float
    width: float
    y: float
    height: float
    fill: str
    status: str


@dataclass(frozen=True)
class Column:
    """One mark of a chart: a run's bar, or an hour's stack; its tooltip, its link."""

    segments: tuple[Rect, ...]
    title: str
    href: str | None = None


@dataclass(frozen=True)
class Gridline:
    y: float
    label: str


@dataclass(frozen=True)
class Label:
    x: float  # percent
    text: str
    anchor: str  # SVG text-anchor: start, middle, end


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    summary: str  # the chart in words (its SVG <desc>, and the text when it is empty)
    columns: tuple[Column, ...]
    gridlines: tuple[Gridline, ...]
    labels: tuple[Label, ...]
    ticks: tuple[float, ...] = ()  # vertical lines (percent): the hourly chart's midnights
    height: int = CHART_HEIGHT
    plot_top: int = PLOT_TOP
    plot_bottom: int = PLOT_TOP + PLOT_HEIGHT

    @property
    def empty(self) -> bool:
        return not any(column.segments for column in self.columns)


@dataclass(frozen=True)
class LegendEntry:
    status: str
    fill: str


@dataclass(frozen=True)
class JobCharts:
    durations: Chart
    hourly: Chart
    legend: tuple[LegendEntry, ...]
    patterns: tuple[Pattern, ...] = PATTERNS


# --- reading -----------------------------------------------------------------------------


def job_charts(conn: Conn, job: str, zone: str) -> JobCharts:
    """The job page's two charts: its last LAST_RUNS runs, and its runs per hour over the
    last HOURS hours of `zone`'s clock."""
    runs = chart_store.last_runs(conn, job, LAST_RUNS)
    since, hours = chart_store.runs_per_hour(conn, job, zone, HOURS)
    statuses = [run["status"] for run in runs] + [row["status"] for row in hours]
    return JobCharts(
        durations=durations_chart(runs, zone),
        hourly=hourly_chart(hours, since, zone, job=job),
        legend=legend(statuses),
    )


# --- the duration chart ------------------------------------------------------------------


def durations_chart(runs: Sequence[Mapping[str, Any]], zone: str) -> Chart:
    """A bar per run, oldest left and newest at the right edge: its height the run's
    duration (a running run's time so far), its fill its status, its link the run's page."""
    ordered = sorted(runs, key=lambda run: (run["started_at"], run["id"]))
    spans = [_span_ms(run) for run in ordered]
    top = nice_duration_ms(max(spans, default=0))
    slot = 100 / max(len(ordered), MIN_SLOTS)
    first = 100 - slot * len(ordered)
    columns = tuple(
        Column(
            segments=(_bar(first + index * slot, slot, span, top, run["status"]),),
            title=_run_title(run, zone),
            href=f"/runs/{run['id']}",
        )
        for index, (run, span) in enumerate(zip(ordered, spans, strict=True))
    )
    gridlines = (
        Gridline(_y(top, top), short_duration(top)),
        Gridline(_y(top / 2, top), short_duration(top / 2)),
        Gridline(_y(0, top), ""),
    )
    labels: list[Label] = []
    if ordered:
        labels.append(Label(100, _short_moment(ordered[-1]["started_at"], zone), "end"))
    if len(ordered) >= MIN_SLOTS:
        labels.insert(0, Label(0, _short_moment(ordered[0]["started_at"], zone), "start"))
    count = len(ordered)
    summary = (
        f"the last {count} run{'s' if count != 1 else ''}, oldest first: bar height is the"
        f" run's duration (top of the scale {short_duration(top)}), colour its status"
        if ordered
        else "no runs yet"
    )
    title = f"Last {count} runs" if count > 1 else "Last runs"
    return Chart("durations", title, summary, columns, gridlines, tuple(labels))


def _span_ms(run: Mapping[str, Any]) -> float:
    measured = run.get("duration_ms")
    return max(float(run.get("elapsed_ms") or 0 if measured is None else measured), 0.0)


def _bar(x: float, slot: float, span_ms: float, top_ms: float, status: str) -> Rect:
    height = max(span_ms / top_ms * PLOT_HEIGHT, MIN_BAR_PX)
    return _rect(x, slot, PLOT_TOP + PLOT_HEIGHT - height, height, status)


def _rect(x: float, slot: float, y: float, height: float, status: str) -> Rect:
    """A slot's mark, a gap's width narrower than the slot and centred in it."""
    left, width = round(x + slot * GAP / 2, 3), round(slot * (1 - GAP), 3)
    return Rect(left, width, round(y, 2), round(height, 2), fill(status), status)


def _y(value: float, top: float) -> float:
    return round(PLOT_TOP + PLOT_HEIGHT - value / top * PLOT_HEIGHT, 2)


def _run_title(run: Mapping[str, Any], zone: str) -> str:
    if run["status"] == "running":
        took = f"running for {status_words.duration(run.get('elapsed_ms'))}"
    else:
        took = status_words.duration(run.get("duration_ms"))
    started = _moment(run["started_at"], zone)
    return f"run {run['id']} · {run['status']} · {took} · started {started}"


def nice_duration_ms(longest_ms: float) -> float:
    """The top of the duration scale: the first nice step at or above the longest run."""
    for step in DURATION_STEPS_MS:
        if longest_ms <= step:
            return float(step)
    return float(-(-longest_ms // DAY_MS) * DAY_MS)


def short_duration(ms: float) -> str:
    """A span for an axis or an age, in its largest fitting unit: `500 ms`, `7.5 s`, `15
    min`, `2 h`, `3 d`."""
    seconds = max(ms, 0) / 1000
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{max(ms, 0):.0f} ms"


# --- the runs-per-hour chart -------------------------------------------------------------


def hourly_chart(
    rows: Iterable[Mapping[str, Any]],
    since: datetime,
    zone: str,
    hours: int = HOURS,
    job: str | None = None,
) -> Chart:
    """A column per hour from `since` (an hour's start on `zone`'s clock), its runs stacked
    by status, linking to that hour's runs of `job`; hours without runs are empty columns.
    Midnights are ticks, days labelled."""
    counts = bucket_counts(rows, since, hours)
    top = nice_count(max((sum(hour.values()) for hour in counts), default=0))
    slot = 100 / hours
    tz = ZoneInfo(zone)
    starts = [(since + timedelta(hours=index)).astimezone(tz) for index in range(hours)]
    columns = tuple(
        Column(
            _stack(index * slot, slot, hour, top),
            _hour_title(start, hour, zone),
            _hour_runs(job, start) if job and hour else None,
        )
        for index, (start, hour) in enumerate(zip(starts, counts, strict=True))
    )
    gridlines = [Gridline(_y(top, top), f"{top} per hour"), Gridline(_y(0, top), "")]
    if top % 2 == 0:
        gridlines.insert(1, Gridline(_y(top / 2, top), str(top // 2)))
    midnights = [index for index, start in enumerate(starts) if start.hour == 0]
    total = sum(sum(hour.values()) for hour in counts)
    days = hours // 24
    return Chart(
        id="hourly",
        title=f"Runs per hour, last {days} days ({zone})",
        summary=f"{total} runs in the last {days} days, per hour of {zone}, stacked by status",
        columns=columns,
        gridlines=tuple(gridlines),
        labels=_day_labels(starts, midnights, slot),
        ticks=tuple(round(index * slot, 3) for index in midnights if index),
    )


def bucket_counts(
    rows: Iterable[Mapping[str, Any]], since: datetime, hours: int
) -> list[dict[str, int]]:
    """Runs by status for each hour from `since`: a row's `hour` (the start the database
    truncated it to) picks its bucket; rows outside the window are left out."""
    counts: list[dict[str, int]] = [{} for _ in range(hours)]
    for row in rows:
        index = int((row["hour"] - since).total_seconds() // 3600)
        if 0 <= index < hours:
            bucket = counts[index]
            bucket[row["status"]] = bucket.get(row["status"], 0) + int(row["runs"])
    return counts


def nice_count(most: int) -> int:
    """The top of a count scale: 1, 2 or 5 times a power of ten, at or above `most`."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            if most <= step * scale:
                return step * scale
        scale *= 10


def _stack(x: float, slot: float, hour: Mapping[str, int], top: int) -> tuple[Rect, ...]:
    segments, base = [], float(PLOT_TOP + PLOT_HEIGHT)
    for status in stacking_order(hour):
        height = hour[status] / top * PLOT_HEIGHT
        base -= height
        segments.append(_rect(x, slot, base, height, status))
    return tuple(segments)


_RANK = {status: rank for rank, status in enumerate(STYLES)}


def stacking_order(statuses: Iterable[str]) -> list[str]:
    return sorted(statuses, key=lambda s: (_RANK.get(s, len(_RANK)), s))


def _hour_runs(job: str, start: datetime) -> str:
    """The runs page of `job` filtered to the hour from `start` (its offset written out)."""
    until = start + timedelta(hours=1)
    moments = {"since": start.isoformat("T", "minutes"), "until": until.isoformat("T", "minutes")}
    return "/runs?" + urlencode({"job": job, **moments})


def _hour_title(start: datetime, hour: Mapping[str, int], zone: str) -> str:
    end = start + timedelta(hours=1)
    span = f"{start:%a %Y-%m-%d %H:%M}-{end:%H:%M} {zone}"
    if not hour:
        return f"{span}: no runs"
    parts = ", ".join(f"{hour[status]} {status}" for status in stacking_order(hour))
    total = sum(hour.values())
    return f"{span}: {total} run{'s' if total != 1 else ''} ({parts})"


def _day_labels(
    starts: Sequence[datetime], midnights: Sequence[int], slot: float
) -> tuple[Label, ...]:
    """A label in the middle of each day's part of the window, if that part is long enough
    to hold it."""
    edges = [0, *[index for index in midnights if index], len(starts)]
    labels = []
    for begin, end in itertools.pairwise(edges):
        if end - begin >= MIN_DAY_LABEL_HOURS:
            day = starts[begin]
            labels.append(
                Label(round((begin + end) / 2 * slot, 3), f"{day:%a} {day.day}", "middle")
            )
    return tuple(labels)


# --- the legend and the sparkline --------------------------------------------------------


def legend(statuses: Iterable[str]) -> tuple[LegendEntry, ...]:
    """The statuses the charts show, in stacking order, each with its fill."""
    return tuple(LegendEntry(status, fill(status)) for status in stacking_order(set(statuses)))


# --- time for people ---------------------------------------------------------------------


def _moment(moment: datetime, zone: str) -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime(f"%Y-%m-%d %H:%M:%S {zone}")


def _short_moment(moment: datetime, zone: str) -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M")
