"""Prometheus metrics for /metrics, read from the ledger and the run history on each scrape.

The gauges come from the ledger, so any replica reports every job. The counters and the
histogram count the runs that ended since this process's first scrape, whichever replica
ran them: each scrape reads only the runs that ended since the previous one (ARCHITECTURE.md,
"The HTTP endpoint").
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import db, status
from .store import reads

DURATION_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)
# A run's finish is a short transaction; one that commits this long after a scrape read past
# its finished_at is still counted by the next scrape (the ids already counted are skipped).
OVERLAP_S = 300


@dataclass
class _Durations:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(DURATION_BUCKETS_S, seconds)] += 1
        self.sum_s += seconds

    def buckets(self) -> list[tuple[str, float]]:
        bounds = [*(str(b) for b in DURATION_BUCKETS_S), "+Inf"]
        cumulative, total = [], 0
        for bound, count in zip(bounds, self.counts, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        return cumulative


@dataclass
class _Totals:
    """What the counters have seen so far, and where the next scrape reads from."""

    since: datetime | None = None
    counted: set[int] = field(default_factory=set)  # ids counted within the overlap
    runs: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    items: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    durations: dict[str, _Durations] = field(default_factory=lambda: defaultdict(_Durations))

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["id"] in self.counted:
                continue
            self.runs[(row["job"], row["status"])] += 1
            self.items[(row["job"], "ok")] += row["succeeded"]
            self.items[(row["job"], "failed")] += row["failed"]
            if row["duration_ms"] is not None:
                self.durations[row["job"]].observe(row["duration_ms"] / 1000)
        self.counted = {row["id"] for row in rows}


class LedgerCollector(Collector):
    """A prometheus_client collector that reads the database on every `collect()`."""

    def __init__(self, connection: Callable[[], Any]) -> None:
        self._connection = connection  # a context manager giving a db.Conn
        self._lock = threading.Lock()
        self._totals = _Totals()

    def collect(self) -> Iterator[Metric]:
        with self._connection() as conn:
            report = status.gather(conn)
            with self._lock:
                self._read_finished_runs(conn)
                yield from self._counters()
        yield from _ledger_gauges(report)

    def _read_finished_runs(self, conn: db.Conn) -> None:
        totals = self._totals
        rows = reads.finished_runs(conn, totals.since, OVERLAP_S)
        if totals.since is None:
            # The first scrape only marks where counting starts.
            totals.counted = {row["id"] for row in rows}
            totals.since = db.now(conn)
            return
        totals.add(rows)
        totals.since = max([totals.since, *(row["finished_at"] for row in rows)])

    def _counters(self) -> Iterator[Metric]:
        totals = self._totals
        runs = CounterMetricFamily(
            "worker_job_runs", "Runs that ended, by job and status.", labels=["job", "status"]
        )
        for (job, run_status), count in sorted(totals.runs.items()):
            runs.add_metric([job, run_status], count)
        items = CounterMetricFamily(
            "worker_job_items", "Items processed by runs, by outcome.", labels=["job", "outcome"]
        )
        for (job, outcome), count in sorted(totals.items.items()):
            items.add_metric([job, outcome], count)
        durations = HistogramMetricFamily(
            "worker_job_run_duration_seconds", "How long runs took.", labels=["job"]
        )
        for job, observed in sorted(totals.durations.items()):
            durations.add_metric([job], observed.buckets(), observed.sum_s)
        yield from (runs, items, durations)


def _ledger_gauges(report: status.Report) -> Iterator[Metric]:
    last_success = GaugeMetricFamily(
        "worker_job_last_success_timestamp_seconds",
        "When the job's last success or partial run finished (Unix time).",
        labels=["job"],
    )
    next_due = GaugeMetricFamily(
        "worker_job_next_due_timestamp_seconds",
        "The job's next due time in the ledger (Unix time).",
        labels=["job"],
    )
    paused = GaugeMetricFamily("worker_job_paused", "1 while the job is paused.", labels=["job"])
    for job in report.jobs:
        if job.last_success_at is not None:
            last_success.add_metric([job.job], job.last_success_at.timestamp())
        if job.next_due_at is not None:
            next_due.add_metric([job.job], job.next_due_at.timestamp())
        paused.add_metric([job.job], 1.0 if job.paused else 0.0)
    yield from (last_success, next_due, paused)
