"""Benchmark the schedule ledger: what a run's lifecycle costs, and replicas contending for a job.

Both parts run against an embedded PostgreSQL that is already up (a Unix socket, so a
"connect" here is a local socket plus a backend fork, the cheapest a connection gets).

1. Ledger overhead. An in-process job whose pass does nothing (`JobSpec` "bench_empty"),
   registered once, then run 200 times through the real lifecycle with
   `Daemon.run_job(spec, Mode.MANUAL)`: peek, then claim and start (lease, abandon, insert:
   one statement), the lease keeper's thread, the empty pass, finish and release (one
   statement, on the run's connection) and the alert rules. Each run opens its own
   connection as production does. Interleaved with the runs, on the same
   settings (`worker.db.connect`): a bare `SELECT 1` on an open connection, a connect +
   `SELECT 1` + close, and a one-row UPDATE committed on an open connection (a WAL flush:
   the server runs with fsync on, and a run commits twice: claim, finish).
   Median and p99 (nearest rank: the 198th of 200) of each.
   "A round trip's worth" is the median connect + `SELECT 1` + close, since every run
   opens its own connections. Target: median run <= 5 x that. The ratio to the bare
   `SELECT 1` is printed beside it, without a target. The commit's figure shows how much
   of a run is the disk's flush latency, which neither baseline pays. LOG_LEVEL=WARNING
   and the log stream is /dev/null, so logging does not dominate the figure; 20 warm-up
   runs are not counted.
2. Ten replicas of one service. Ten `python -m worker quota` children started together
   against one database, with a jobs file `[jobs.quota] schedule = "every 2s"`,
   `on_start = false`, no keys in the table (a pass is instant) and TAVILY_USAGE_URL on a
   closed loopback port. Once all ten logged `scheduler_loop_started`, they contend for
   60 s; then SIGTERM to all. Targets: each exits 0; runs with trigger `schedule` whose
   `scheduled_for` lies in that 60 s window = the occurrences due in it (30) +-1; zero
   duplicates (a `scheduled_for` with more than one non-manual run, over the whole
   phase). Each replica's CPU over 30 s of contention is printed, without a target.
   Then idle: ten replicas started anew with the schedule at `every 1h` (nothing falls
   due), CPU time (utime + stime from /proc/<pid>/stat) of each over 30 s after all ten
   logged `scheduler_loop_started`. Target: every replica <= 30 ms (max and median printed).
   Each exits 0 on SIGTERM; no run happens.

Idle RSS and SIGTERM timings of one daemon are `scripts/bench_daemon.py`'s targets, not
repeated here.

Run: `uv run python scripts/bench_ledger.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import benchlib
from benchlib import Report, Row, log

from tests.support.processes import WorkerProcess
from worker import db, logs
from worker.daemon import Daemon
from worker.jobs.base import JobContext
from worker.registry import SERVICES, JobSpec
from worker.schedules import Interval
from worker.settings import Database, from_env
from worker.vocab import Mode

RUNS = 200
WARMUP_RUNS = 20
MAX_RUN_VS_CONNECT = 5.0
REPLICAS = 10
CONTEND_S = 60.0
EVERY_S = 2
MAX_RUN_DEVIATION = 1
IDLE_S = 30.0
MAX_IDLE_CPU_MS = 30.0
STOP_WAIT_S = 10.0
WAIT_S = 60.0  # give up on an expected event after this long
FLUSH_SQL = "UPDATE bench_flush SET n = n + 1 WHERE id = 1"  # autocommit: one WAL flush
JOBS_FILE = '[jobs.quota]\nschedule = "{schedule}"\non_start = false\n'


def main() -> int:
    report = Report("bench_ledger: the schedule ledger's overhead and ten contending replicas")
    with benchlib.embedded_server() as server_url:
        measure_overhead(benchlib.create_database(server_url, "bench_ledger"), report)
        measure_replicas(benchlib.create_database(server_url, "bench_replicas"), report)
    report.note(
        f"run overhead: {RUNS} runs after {WARMUP_RUNS} warm-up runs, each beside one sample "
        "of each baseline; logs at WARNING to /dev/null; p99 is the nearest rank."
    )
    report.note(
        f"CPU time is read in clock ticks of {1000 / benchlib.CLK_TCK:g} ms; the database "
        "server's own CPU is not counted."
    )
    report.note("idle RSS and SIGTERM timings: scripts/bench_daemon.py.")
    return report.finish()


# --- 1. the overhead of one run ----------------------------------------------------------


def empty_pass(ctx: JobContext) -> None:
    """The job whose cost is nothing but the lifecycle around it."""


EMPTY_JOB = JobSpec("bench_empty", "all", empty_pass, lambda s: Interval(3600))


def measure_overhead(url: str, report: Report) -> None:
    settings = from_env({"DATABASE_URL": url, "LOG_LEVEL": "WARNING", "LOG_FORMAT": "json"})
    with open(os.devnull, "w") as devnull:
        logs.configure(settings.log_level, settings.log_format, stream=devnull)
        daemon = Daemon(settings, SERVICES["all"], jobs=[EMPTY_JOB])
        try:
            log(f"{WARMUP_RUNS} + {RUNS} runs of an empty job, with their baselines")
            samples, outcomes = time_runs(daemon, settings.database)
        finally:
            daemon.http.close()
    run_ms, select_ms, connect_ms = samples["run"], samples["select"], samples["connect"]
    report.figure("bare `SELECT 1` on an open connection (median / p99)", spread(select_ms))
    report.figure("connect + `SELECT 1` + close (median / p99)", spread(connect_ms))
    report.figure("one-row UPDATE, committed (median / p99)", spread(samples["commit"]))
    report.figure(f"empty job through the lifecycle, {RUNS} runs (median / p99)", spread(run_ms))
    report.at_most(
        "median run / median (connect + `SELECT 1` + close)",
        statistics.median(run_ms) / statistics.median(connect_ms),
        MAX_RUN_VS_CONNECT,
        "x",
    )
    report.figure(
        "median run / median bare `SELECT 1`",
        f"{statistics.median(run_ms) / statistics.median(select_ms):.0f} x",
    )
    report.expect("runs that ended `success`", outcomes.get("success", 0), RUNS)
    report.expect("success rows recorded (manual)", count_rows(url), RUNS + WARMUP_RUNS)
    report.expect("lease still held after the runs", lease_owner(url, EMPTY_JOB.name), None)


def time_runs(daemon: Daemon, database: Database) -> tuple[dict[str, list[float]], Counter[str]]:
    """Time each run beside one sample of each baseline, so all see the same noise."""
    samples: dict[str, list[float]] = {"run": [], "select": [], "connect": [], "commit": []}
    outcomes: Counter[str] = Counter()
    with db.connect(database) as conn:
        conn.execute("CREATE TABLE bench_flush (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("INSERT INTO bench_flush VALUES (1, 0)")
        for i in range(WARMUP_RUNS + RUNS):
            select_ms, _ = benchlib.timed(lambda: conn.execute("SELECT 1").fetchone())
            connect_ms, _ = benchlib.timed(lambda: connect_select_close(database))
            commit_ms, _ = benchlib.timed(lambda: conn.execute(FLUSH_SQL))
            run_ms, outcome = benchlib.timed(lambda: daemon.run_job(EMPTY_JOB, Mode.MANUAL))
            if i < WARMUP_RUNS:
                continue
            samples["select"].append(select_ms)
            samples["connect"].append(connect_ms)
            samples["run"].append(run_ms)
            samples["commit"].append(commit_ms)
            outcomes[str(outcome)] += 1
    return samples, outcomes


def connect_select_close(database: Database) -> None:
    with db.connect(database) as conn:
        conn.execute("SELECT 1").fetchone()


def spread(values_ms: list[float]) -> str:
    ordered = sorted(values_ms)
    p99 = benchlib.nearest_rank(ordered, 0.99)
    return f"{statistics.median(ordered):.3f} / {p99:.3f} ms"


def count_rows(url: str) -> int:
    with benchlib.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM worker_job_runs"
            " WHERE job = %s AND status = 'success' AND trigger = 'manual'",
            (EMPTY_JOB.name,),
        ).fetchone()
    assert row is not None
    return int(row["n"])


def lease_owner(url: str, job: str) -> str | None:
    with benchlib.connect(url) as conn:
        row = conn.execute("SELECT lease_owner FROM worker_jobs WHERE job = %s", (job,)).fetchone()
    return None if row is None else row["lease_owner"]


# --- 2. ten replicas ---------------------------------------------------------------------


def measure_replicas(url: str, report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        jobs_file = Path(tmp) / "worker.toml"
        env = benchlib.worker_env(
            DATABASE_URL=url, TAVILY_USAGE_URL=closed_url(), WORKER_JOBS_FILE=str(jobs_file)
        )
        jobs_file.write_text(JOBS_FILE.format(schedule=f"every {EVERY_S}s"), encoding="utf-8")
        measure_contention(url, env, report)
        jobs_file.write_text(JOBS_FILE.format(schedule="every 1h"), encoding="utf-8")
        measure_idle(url, env, report)


def closed_url() -> str:
    """A loopback URL nothing listens on: a call would fail at once (none is expected)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/usage"


def measure_contention(url: str, env: dict[str, str], report: Report) -> None:
    log(f"{REPLICAS} replicas, `every {EVERY_S}s`, for {CONTEND_S:g} s")
    replicas = start_replicas(env)
    try:
        window_start = db_now(url)
        started = time.monotonic()
        cpu_ms = cpu_over(replicas, IDLE_S)  # the first 30 s of the window
        time.sleep(max(started + CONTEND_S - time.monotonic(), 0.0))  # the contention itself
        window_end = db_now(url)
        codes = terminate_all(replicas)
    finally:
        for replica in replicas:
            replica.close()
    runs = schedule_runs(url, window_start, window_end)
    due = occurrences(runs.phase, window_start, window_end)
    report.expect(f"replicas exiting 0 on SIGTERM (of {REPLICAS})", codes.count(0), REPLICAS)
    report.rows.append(
        Row(
            f"`schedule` runs for the occurrences due in the {CONTEND_S:g} s window",
            f"{runs.in_window} for {due}",
            f"{due} ± {MAX_RUN_DEVIATION}",
            abs(runs.in_window - due) <= MAX_RUN_DEVIATION,
        )
    )
    report.expect("occurrences run more than once", runs.duplicates, 0)
    report.figure("`schedule` runs in the whole phase, by status", runs.statuses)
    report.figure("replicas that ran at least one occurrence", str(runs.replicas))
    report.figure(
        f"CPU per replica over {IDLE_S:g} s contending (max / median)",
        f"{max(cpu_ms):.0f} / {statistics.median(cpu_ms):.0f} ms",
    )
    report.expect("lease held after SIGTERM", lease_owner(url, "quota"), None)


def measure_idle(url: str, env: dict[str, str], report: Report) -> None:
    log(f"{REPLICAS} replicas, `every 1h`, idle for {IDLE_S:g} s")
    before = db_now(url)
    replicas = start_replicas(env)
    try:
        cpu_ms = cpu_over(replicas, IDLE_S)  # the quantity measured: CPU while nothing runs
        codes = terminate_all(replicas)
    finally:
        for replica in replicas:
            replica.close()
    report.at_most(
        f"idle CPU over {IDLE_S:g} s, the busiest of {REPLICAS} replicas",
        max(cpu_ms),
        MAX_IDLE_CPU_MS,
        "ms",
        0,
    )
    median_ms = statistics.median(cpu_ms)
    report.figure(f"idle CPU over {IDLE_S:g} s, median replica", f"{median_ms:.0f} ms")
    report.expect(f"idle replicas exiting 0 on SIGTERM (of {REPLICAS})", codes.count(0), REPLICAS)
    report.expect("runs while idle", runs_since(url, before), 0)


def start_replicas(env: dict[str, str]) -> list[WorkerProcess]:
    """Start every replica at once; return when each has entered its loop."""
    replicas: list[WorkerProcess] = []
    try:
        for _ in range(REPLICAS):
            replicas.append(benchlib.worker_process(env, "quota"))
        for replica in replicas:
            try:
                replica.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
            except RuntimeError as exc:
                last = replica.lines[-1] if replica.lines else None
                raise RuntimeError(
                    f"replica {replica.pid}: {exc} (exit code {replica.proc.poll()}, "
                    f"last line {last})"
                ) from None
    except BaseException:
        for replica in replicas:
            replica.close()
        raise
    return replicas


def cpu_over(replicas: list[WorkerProcess], seconds: float) -> list[float]:
    """Each replica's CPU milliseconds over the next `seconds`."""
    before = [benchlib.cpu_seconds(replica.pid) for replica in replicas]
    time.sleep(seconds)
    after = [benchlib.cpu_seconds(replica.pid) for replica in replicas]
    return [(end - start) * 1000 for start, end in zip(before, after, strict=True)]


def terminate_all(replicas: list[WorkerProcess]) -> list[int | None]:
    """SIGTERM to every replica at once, then each one's exit code (None: still running)."""
    for replica in replicas:
        replica.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    codes: list[int | None] = []
    for replica in replicas:
        try:
            codes.append(replica.proc.wait(max(deadline - time.monotonic(), 0.01)))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


def db_now(url: str) -> datetime:
    with benchlib.connect(url) as conn:
        row = conn.execute("SELECT now() AS now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ScheduleRuns:
    """The non-manual runs of quota, as the ledger recorded them."""

    in_window: int  # trigger `schedule`, `scheduled_for` within the window
    duplicates: int  # runs beyond the first for one `scheduled_for`
    replicas: int  # distinct pids that ran one
    phase: datetime | None  # one occurrence, to count the others from
    statuses: str


def schedule_runs(url: str, start: datetime, end: datetime) -> ScheduleRuns:
    with benchlib.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE scheduled_for >= %(start)s"
            "   AND scheduled_for < %(end)s) AS in_window,"
            " count(DISTINCT pid) AS replicas, min(scheduled_for) AS phase"
            " FROM worker_job_runs WHERE job = 'quota' AND trigger = 'schedule'",
            {"start": start, "end": end},
        ).fetchone()
        duplicates = conn.execute(
            "SELECT coalesce(sum(n - 1), 0) AS n FROM (SELECT count(*) AS n"
            " FROM worker_job_runs WHERE job = 'quota' AND trigger <> 'manual'"
            " GROUP BY scheduled_for HAVING count(*) > 1) AS repeated"
        ).fetchone()
        statuses = conn.execute(
            "SELECT status, count(*) AS n FROM worker_job_runs"
            " WHERE job = 'quota' AND trigger = 'schedule' GROUP BY status ORDER BY status"
        ).fetchall()
    assert row is not None and duplicates is not None
    return ScheduleRuns(
        in_window=int(row["in_window"]),
        duplicates=int(duplicates["n"]),
        replicas=int(row["replicas"]),
        phase=row["phase"],
        statuses=", ".join(f"{s['n']} {s['status']}" for s in statuses) or "none",
    )


def occurrences(phase: datetime | None, start: datetime, end: datetime) -> int:
    """How many occurrences of the interval (through `phase`) fall in [start, end)."""
    if phase is None:
        return round((end - start).total_seconds() / EVERY_S)

    def index(moment: datetime) -> int:
        return math.ceil((moment - phase).total_seconds() / EVERY_S)

    return index(end) - index(start)


def runs_since(url: str, since: datetime) -> int:
    with benchlib.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM worker_job_runs WHERE started_at >= %s", (since,)
        ).fetchone()
    assert row is not None
    return int(row["n"])


if __name__ == "__main__":
    sys.exit(main())
