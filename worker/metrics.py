"""Prometheus metrics for /metrics, read from the ledger and the run history on each scrape.

The gauges come from the ledger and the processes table, so any replica reports every job
and every service. The counters and the histograms count the runs that ended (or started)
since this process's first scrape, whichever replica ran them: each scrape reads only the
runs that ended (started) since the previous one (ARCHITECTURE.md, "The HTTP endpoint").

Every per-job series is labelled `job_name`: Prometheus sets `job` itself (the scrape job's
name) and would move an exporter's own `job` to `exported_job`.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import db, status
from .store import processes, reads
from .vocab import RunStatus

JOB_LABEL = "job_name"
# The outcomes of a run that did its work or said why not: each job has these from the start.
OUTCOMES = (RunStatus.SUCCESS, RunStatus.PARTIAL, RunStatus.FAILED)
DURATION_BUCKETS_S = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)
# Wake-ups are sub-second: the low buckets tell an on-time start from a slot's wait.
LATENESS_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# A run's start and its finish are short transactions; one that commits this long after a
# scrape read past its time is still counted by the next scrape (the ids already counted
# are skipped).
OVERLAP_S = 300


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    sum_s: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum_s += seconds

    def buckets(self) -> list[tuple[str, float]]:
        labels = [*(str(b) for b in self.bounds), "+Inf"]
        cumulative, total = [], 0
        for bound, count in zip(labels, self.counts, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        return cumulative


@dataclass
class _Window:
    """Where the next read of the run history starts (`at`: the time column it walks), and
    the ids of the last read, each of which is counted once."""

    at: str
    since: datetime | None = None
    counted: set[int] = field(default_factory=set)

    def fresh(
        self, rows: list[dict[str, Any]], now: Callable[[], datetime]
    ) -> list[dict[str, Any]]:
        """The rows of this read not counted before. The first read counts none: it only
        marks where counting starts (`now()`)."""
        ids = {row["id"] for row in rows}
        if self.since is None:
            self.counted, self.since = ids, now()
            return []
        new = [row for row in rows if row["id"] not in self.counted]
        self.counted = ids
        self.since = max([self.since, *(row[self.at] for row in rows)])
        return new


@dataclass
class _Totals:
    """What the counters and histograms have seen so far."""

    finished: _Window = field(default_factory=lambda: _Window("finished_at"))
    started: _Window = field(default_factory=lambda: _Window("started_at"))
    runs: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    items: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    durations: dict[str, _Histogram] = field(
        default_factory=lambda: defaultdict(lambda: _Histogram(DURATION_BUCKETS_S))
    )
    lateness: dict[str, _Histogram] = field(
        default_factory=lambda: defaultdict(lambda: _Histogram(LATENESS_BUCKETS_S))
    )

    def add_finished(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.runs[(row["job"], row["status"])] += 1
            self.items[(row["job"], "ok")] += row["succeeded"]
            self.items[(row["job"], "failed")] += row["failed"]
            if row["duration_ms"] is not None:
                self.durations[row["job"]].observe(row["duration_ms"] / 1000)

    def add_started(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.lateness[row["job"]].observe(row["lateness_s"])


class LedgerCollector(Collector):
    """A prometheus_client collector that reads the database on every `collect()`."""

    def __init__(self, connection: Callable[[], Any]) -> None:
        self._connection = connection  # a context manager giving a db.Conn
        self._lock = threading.Lock()
        self._totals = _Totals()

    def collect(self) -> Iterator[Metric]:
        with self._connection() as conn:
            report = status.gather(conn)
            running = reads.running_runs(conn)
            live = reads.live_processes(conn, processes.DEAD_AFTER_S)
            with self._lock:
                self._read_history(conn)
                yield from self._counters([job.job for job in report.jobs])
        yield from _ledger_gauges(report, running)
        yield _process_gauge(live)

    def _read_history(self, conn: db.Conn) -> None:
        totals, now = self._totals, partial(db.now, conn)
        finished = reads.finished_runs(conn, totals.finished.since, OVERLAP_S)
        totals.add_finished(totals.finished.fresh(finished, now))
        started = reads.started_runs(conn, totals.started.since, OVERLAP_S)
        totals.add_started(totals.started.fresh(started, now))

    def _counters(self, jobs: list[str]) -> Iterator[Metric]:
        totals = self._totals
        runs = CounterMetricFamily(
            "worker_job_runs", "Runs that ended, by job and status.", labels=[JOB_LABEL, "status"]
        )
        # Every job's outcomes are there from the first scrape, at 0: a rate or an increase
        # over a series that appeared with its first failure would miss that failure.
        counts: dict[tuple[str, str], int] = {(j, str(o)): 0 for j in jobs for o in OUTCOMES}
        counts.update(totals.runs)
        for (job, run_status), count in sorted(counts.items()):
            runs.add_metric([job, run_status], count)
        items = CounterMetricFamily(
            "worker_job_items",
            "Items processed by runs, by outcome.",
            labels=[JOB_LABEL, "outcome"],
        )
        for (job, outcome), count in sorted(totals.items.items()):
            items.add_metric([job, outcome], count)
        yield from (runs, items)
        yield _histogram("worker_job_run_duration_seconds", "How long runs took.", totals.durations)
        yield _histogram(
            "worker_job_start_lateness_seconds",
            "How long after its occurrence's due time a run started (manual runs serve none).",
            totals.lateness,
        )


def _histogram(name: str, documentation: str, observed: dict[str, _Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=[JOB_LABEL])
    for job, histogram in sorted(observed.items()):
        family.add_metric([job], histogram.buckets(), histogram.sum_s)
    return family


def _ledger_gauges(report: status.Report, running: dict[str, int]) -> Iterator[Metric]:
    last_success = GaugeMetricFamily(
        "worker_job_last_success_timestamp_seconds",
        "When the job's last success or partial run finished (Unix time).",
        labels=[JOB_LABEL],
    )
    next_due = GaugeMetricFamily(
        "worker_job_next_due_timestamp_seconds",
        "The job's next due time in the ledger (Unix time).",
        labels=[JOB_LABEL],
    )
    paused = GaugeMetricFamily(
        "worker_job_paused", "1 while the job is paused.", labels=[JOB_LABEL]
    )
    in_progress = GaugeMetricFamily(
        "worker_job_running", "The job's runs in progress, on any process.", labels=[JOB_LABEL]
    )
    for job in report.jobs:
        if job.last_success_at is not None:
            last_success.add_metric([job.job], job.last_success_at.timestamp())
        if job.next_due_at is not None:
            next_due.add_metric([job.job], job.next_due_at.timestamp())
        paused.add_metric([job.job], 1.0 if job.paused else 0.0)
    for job_name in sorted({job.job for job in report.jobs} | set(running)):
        in_progress.add_metric([job_name], float(running.get(job_name, 0)))
    yield from (last_success, next_due, paused, in_progress)


def _process_gauge(live: dict[str, int]) -> Metric:
    gauge = GaugeMetricFamily(
        "worker_processes_live",
        "Live worker processes of the service (an `all` process runs every service).",
        labels=["service"],
    )
    for service, count in sorted(live.items()):
        gauge.add_metric([service], float(count))
    return gauge
