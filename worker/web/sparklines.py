"""The job list's sparklines: each job's last SPARK_RUNS outcomes as marks above, on or
below a midline, coloured as the job page's charts (`web/charts.py`); drawn by
`templates/_sparkline.html`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..db import Conn
from ..store import charts as chart_store
from .charts import Rect, fill, stacking_order

SPARK_RUNS = 20  # marks of a sparkline in the job list
SPARK_SLOT = 5  # px per run in the sparkline's viewBox
SPARK_HEIGHT = 22
SPARK_MID = SPARK_HEIGHT // 2


@dataclass(frozen=True)
class Sparkline:
    marks: tuple[Rect, ...]
    title: str
    width: int = SPARK_RUNS * SPARK_SLOT
    height: int = SPARK_HEIGHT
    mid: int = SPARK_MID

    @property
    def paths(self) -> tuple[tuple[str, str], ...]:
        """The marks as one SVG path per fill, `(fill, d)`: a page of 100 sparklines is
        tens of kilobytes, not a hundred and fifty."""
        by_fill: dict[str, list[str]] = {}
        for m in self.marks:
            rect = f"M{m.x:g} {m.y:g}h{m.width:g}v{m.height:g}h-{m.width:g}z"
            by_fill.setdefault(m.fill, []).append(rect)
        return tuple((fill, "".join(rects)) for fill, rects in by_fill.items())


def sparklines(conn: Conn, jobs: Sequence[str]) -> dict[str, Sparkline]:
    """Each job's last SPARK_RUNS outcomes (a job without runs has none), in one statement."""
    by_job = chart_store.recent_outcomes(conn, jobs, SPARK_RUNS)
    return {job: sparkline(runs) for job, runs in by_job.items()}


# Where a status's mark sits in the sparkline: (top, height) in px of the viewBox.
SPARK_MARKS = {
    "success": (1, SPARK_MID - 1),  # rises from the midline
    "partial": (SPARK_MID - 6, 6),  # rises, less high
    "failed": (SPARK_MID, SPARK_MID - 1),  # hangs below it
    "running": (SPARK_MID - 4, 4),
}
SPARK_OTHER = (SPARK_MID - 2, 4)  # interrupted, cancelled, abandoned: on the midline


def sparkline(runs: Sequence[Mapping[str, Any]]) -> Sparkline:
    """A job's recent outcomes, oldest left and newest at the right edge: one mark per run,
    its colour and its place (above, on or below the midline) its status."""
    ordered = sorted(runs, key=lambda run: (run["started_at"], run["id"]))[-SPARK_RUNS:]
    first = (SPARK_RUNS - len(ordered)) * SPARK_SLOT
    marks = []
    for index, run in enumerate(ordered):
        top, height = SPARK_MARKS.get(run["status"], SPARK_OTHER)
        marks.append(
            Rect(
                x=first + index * SPARK_SLOT + 0.5,
                width=SPARK_SLOT - 1,
                y=top,
                height=height,
                fill=fill(run["status"], patterned=False),
                status=run["status"],
            )
        )
    counts = Counter(run["status"] for run in ordered)
    parts = ", ".join(f"{counts[status]} {status}" for status in stacking_order(counts))
    latest = f"; latest {ordered[-1]['status']}" if ordered else ""
    title = f"last {len(ordered)} runs, newest on the right: {parts}{latest}"
    return Sparkline(tuple(marks), title)
