"""Benchmark dispatch: runs start on time beside a long one, at scale, and what a run costs.

Every part runs `python -m worker jobs` children (the runtime dependency set) against an
embedded PostgreSQL that is already up.

1. Lateness. One `jobs` process (WORKER_CONCURRENCY at its default, 4) with ten `every 2s`
   jobs (`command = ["true"]`) beside a job that runs `sleep 40` every minute, for 3
   minutes. Lateness is a run's `started_at - scheduled_for` (both the database's clock).
   In the same run, side by side, the same workload on APScheduler 3.x's
   `BackgroundScheduler` with its defaults (`scripts/aps_reference.py`, on the `bench`
   dependency group; lateness there is a job's start minus the occurrence it serves).
   Targets: worker p99 <= 100 ms, max <= 250 ms, worker p99 <= APScheduler p99 + 100 ms,
   and the worker's runs = the occurrences due in the window.
2. Scale. 1,000 jobs `every 1m` (`sql = "SELECT 1"`), their phases spread over the minute
   (their ledger rows are written before the replicas start, as a long-lived deployment's
   are), three replicas, 5 minutes. Targets: runs = occurrences (+-3), 0 duplicates, p99
   lateness <= 1 s. Each replica's CPU time over the window is printed.
3. Cost per run. One `jobs` process with one `every 1s` job running `true` (no statement of
   its own), 30 s after its start-up: the commits (`pg_stat_database.xact_commit`) and the
   statements (the server's own log, `log_statement = all` for that database only) the
   worker made, divided by the runs in the window. Targets: <= 3 commits and <= 6
   statements per run (Quartz.NET's maintainers measured 5.9 commits and 26 statements per
   run on PostgreSQL, quartznet issue 3802). The benchmark's server runs with autovacuum
   off for this part: its workers' transactions in that database would count as commits.

Run: `uv run python scripts/bench_dispatch.py [lateness|scale|cost ...]` (all three when
none is named). Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Report, log

from tests.support.processes import WorkerProcess

SHORT_JOBS = 10
SHORT_EVERY_S = 2
LONG_S = 40
LONG_EVERY_S = 60
LATENESS_S = 180.0
MAX_P99_MS = 100.0
MAX_LATE_MS = 250.0
MAX_P99_OVER_APS_MS = 100.0

SCALE_JOBS = 1000
SCALE_REPLICAS = 3
SCALE_S = 300.0
SCALE_LEAD_S = 20.0  # the first occurrence falls this long after the rows are written
MAX_SCALE_DEVIATION = 3
MAX_SCALE_P99_S = 1.0

COST_S = 30.0
COST_SETTLE_S = 3.0  # after the loop starts: start-up's own statements are not counted
MAX_COMMITS_PER_RUN = 3.0
MAX_STATEMENTS_PER_RUN = 6.0
WAIT_S = 120.0
PARTS = ("lateness", "scale", "cost")


def main(argv: list[str]) -> int:
    parts = argv or list(PARTS)
    report = Report("bench_dispatch: on time beside a long run, at scale, and a run's cost")
    with benchlib.embedded_server_with_log() as (server_url, server_log):
        if "lateness" in parts:
            measure_lateness(benchlib.create_database(server_url, "bench_lateness"), report)
        if "scale" in parts:
            measure_scale(benchlib.create_database(server_url, "bench_scale"), report)
        if "cost" in parts:
            url = benchlib.create_database(server_url, "bench_cost")
            measure_cost(server_url, url, server_log, report)
    report.note("lateness: nearest-rank percentiles; both schedulers ran at the same time.")
    report.note(
        f"CPU time is read in clock ticks of {1000 / benchlib.CLK_TCK:g} ms; the database "
        "server's own CPU is not counted."
    )
    return report.finish()


# --- helpers -----------------------------------------------------------------------------


def jobs_file(folder: Path, text: str) -> Path:
    path = folder / "worker.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def jobs_daemons(url: str, jobs: Path, count: int = 1, **env: str) -> Iterator[list[WorkerProcess]]:
    """`count` `python -m worker jobs` children, started together; SIGTERMed on leaving."""
    child_env = benchlib.worker_env(
        DATABASE_URL=url, WORKER_JOBS_FILE=str(jobs), LOG_LEVEL="INFO", **env
    )
    daemons = [benchlib.worker_process(child_env, "jobs") for _ in range(count)]
    try:
        for daemon in daemons:
            daemon.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
        yield daemons
    finally:
        for daemon in daemons:
            daemon.close()


def database_now(url: str) -> datetime:
    with benchlib.connect(url) as conn:
        row = conn.execute("SELECT now() AS now").fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]


def window_runs(url: str, start: datetime, end: datetime, like: str) -> list[dict[str, Any]]:
    """Non-manual runs of jobs named LIKE `like` serving an occurrence in [start, end)."""
    with benchlib.connect(url) as conn:
        return conn.execute(
            "SELECT job, status, scheduled_for, pid,"
            "       extract(epoch FROM started_at - scheduled_for)::float8 AS late_s"
            "  FROM worker_job_runs"
            " WHERE job LIKE %(like)s AND scheduled_for >= %(start)s AND scheduled_for < %(end)s",
            {"like": like, "start": start, "end": end},
        ).fetchall()


def duplicates(url: str) -> int:
    with benchlib.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM (SELECT job, scheduled_for FROM worker_job_runs"
            " WHERE scheduled_for IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1) d"
        ).fetchone()
    assert row is not None
    return int(row["n"])


def percentiles_ms(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (
        benchlib.nearest_rank(ordered, 0.5) * 1000,
        benchlib.nearest_rank(ordered, 0.99) * 1000,
        ordered[-1] * 1000,
    )


def occurrences_between(anchor: datetime, every_s: float, start: datetime, end: datetime) -> int:
    """Instants anchor + k * every_s (any integer k) in [start, end)."""
    first = math.ceil((start - anchor).total_seconds() / every_s)
    last = math.ceil((end - anchor).total_seconds() / every_s)
    return last - first


# --- 1. lateness beside a long run ---------------------------------------------------------


def measure_lateness(url: str, report: Report) -> None:
    short = "".join(
        f'[jobs.short_{i}]\nschedule = "every {SHORT_EVERY_S}s"\non_start = "false"\n'
        'command = ["true"]\n\n'
        for i in range(SHORT_JOBS)
    )
    long = (
        f'[jobs.long]\nschedule = "every {LONG_EVERY_S}s"\non_start = "false"\n'
        f'command = ["sleep", "{LONG_S}"]\ntimeout = "5m"\n'
    )
    log(
        f"lateness: {SHORT_JOBS} jobs every {SHORT_EVERY_S}s beside a {LONG_S}s job, "
        f"{LATENESS_S:g}s, worker and APScheduler side by side"
    )
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        jobs = jobs_file(Path(folder), short + long)
        stack.enter_context(jobs_daemons(url, jobs))
        reference = start_reference()
        start = database_now(url) + timedelta(seconds=1)
        end = start + timedelta(seconds=LATENESS_S)
        time.sleep(LATENESS_S + 2)
        aps = json.loads(reference.communicate(timeout=WAIT_S)[0])
        time.sleep(max(0.0, (end - database_now(url)).total_seconds()) + 1)
    runs = window_runs(url, start, end, "short_%")
    anchor = runs[0]["scheduled_for"]
    occurrences = SHORT_JOBS * occurrences_between(anchor, SHORT_EVERY_S, start, end)
    worker_ms = percentiles_ms([r["late_s"] for r in runs])
    aps_ms = percentiles_ms(aps["lateness_s"])
    report.figure("worker: short runs' lateness p50 / p99 / max", spread(worker_ms))
    report.figure("APScheduler 3.x: the same, p50 / p99 / max", spread(aps_ms))
    report.at_most("worker p99 lateness", worker_ms[1], MAX_P99_MS, "ms", 1)
    report.at_most("worker max lateness", worker_ms[2], MAX_LATE_MS, "ms", 1)
    report.at_most(
        "worker p99 - APScheduler p99", worker_ms[1] - aps_ms[1], MAX_P99_OVER_APS_MS, "ms", 1
    )
    report.expect("worker: short runs (success) in the window", successes(runs), occurrences)
    report.figure(
        "APScheduler: short runs / occurrences", f"{len(aps['lateness_s'])} / {aps['occurrences']}"
    )


def start_reference() -> subprocess.Popen[str]:
    args = [SHORT_JOBS, SHORT_EVERY_S, LONG_S, LONG_EVERY_S, LATENESS_S]
    return subprocess.Popen(
        [benchlib.bench_python(), str(benchlib.ROOT / "scripts" / "aps_reference.py")]
        + [str(arg) for arg in args],
        stdout=subprocess.PIPE,
        text=True,
    )


def successes(runs: list[dict[str, Any]]) -> int:
    return sum(1 for run in runs if run["status"] == "success")


def spread(figures: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.1f}" for value in figures) + " ms"


# --- 2. scale ----------------------------------------------------------------------------


def measure_scale(url: str, report: Report) -> None:
    jobs_text = "".join(
        f'[jobs.scale_{i:04d}]\nschedule = "every 1m"\non_start = "false"\nsql = "SELECT 1"\n\n'
        for i in range(SCALE_JOBS)
    )
    with benchlib.connect(url) as conn:
        conn.execute(
            "INSERT INTO worker_jobs (job, service, schedule, next_due_at)"
            " SELECT 'scale_' || lpad(i::text, 4, '0'), 'jobs', 'every 1m',"
            "        date_trunc('second', now()) + make_interval(secs => %(lead)s + i * 0.06)"
            "   FROM generate_series(0, %(n)s - 1) AS i",
            {"lead": SCALE_LEAD_S, "n": SCALE_JOBS},
        )
        row = conn.execute("SELECT min(next_due_at) AS first FROM worker_jobs").fetchone()
    assert row is not None
    start: datetime = row["first"]
    end = start + timedelta(seconds=SCALE_S)
    log(f"scale: {SCALE_JOBS} jobs every 1m, {SCALE_REPLICAS} replicas, {SCALE_S:g}s")
    with tempfile.TemporaryDirectory() as folder:
        jobs = jobs_file(Path(folder), jobs_text)
        with jobs_daemons(url, jobs, SCALE_REPLICAS) as replicas:
            time.sleep(max(0.0, (start - database_now(url)).total_seconds()))
            cpu = [benchlib.cpu_seconds(r.pid) for r in replicas]
            time.sleep(SCALE_S)
            cpu = [
                benchlib.cpu_seconds(r.pid) - before
                for r, before in zip(replicas, cpu, strict=True)
            ]
            time.sleep(3)  # the window's last runs end
    runs = window_runs(url, start, end, "scale_%")
    occurrences = SCALE_JOBS * int(SCALE_S // 60)
    late_s = sorted(r["late_s"] for r in runs)
    p99_s = benchlib.nearest_rank(late_s, 0.99)
    report.figure(
        f"scale: runs / occurrences ({SCALE_JOBS} jobs, {SCALE_S:g} s)",
        f"{successes(runs)} / {occurrences}",
    )
    report.at_most(
        "scale: |runs - occurrences|",
        abs(successes(runs) - occurrences),
        MAX_SCALE_DEVIATION,
        digits=0,
    )
    report.expect("scale: duplicate occurrences", duplicates(url), 0)
    report.at_most("scale: p99 lateness", p99_s, MAX_SCALE_P99_S, "s", 3)
    report.figure("scale: max lateness", f"{late_s[-1]:.3f} s")
    report.figure(
        "scale: runs per replica", " / ".join(str(n) for n in per_replica(runs, replicas))
    )
    report.figure(
        f"scale: CPU per replica over {SCALE_S:g} s", " / ".join(f"{c:.2f} s" for c in cpu)
    )


def per_replica(runs: list[dict[str, Any]], replicas: list[WorkerProcess]) -> list[int]:
    return [sum(1 for run in runs if run["pid"] == replica.pid) for replica in replicas]


# --- 3. cost per run ---------------------------------------------------------------------


def measure_cost(server_url: str, url: str, server_log: Path, report: Report) -> None:
    name = "bench_cost"
    with benchlib.connect(server_url) as admin:
        admin.execute(f"ALTER DATABASE {name} SET log_statement = 'all'")
        admin.execute("ALTER SYSTEM SET log_line_prefix = '%d '")
        admin.execute("ALTER SYSTEM SET log_connections = 'on'")
        # autovacuum's own transactions in that database would count as commits.
        admin.execute("ALTER SYSTEM SET autovacuum = off")
        admin.execute("SELECT pg_reload_conf()")
    log(f"cost: one `every 1s` job, {COST_S:g} s")
    with tempfile.TemporaryDirectory() as folder:
        jobs = jobs_file(
            Path(folder),
            '[jobs.empty]\nschedule = "every 1s"\non_start = "false"\ncommand = ["true"]\n',
        )
        with jobs_daemons(url, jobs):
            time.sleep(COST_SETTLE_S)
            # The clock is read on another database: this benchmark's own reads add nothing.
            commits, lines = commit_count(server_url, name), log_size(server_log)
            start = database_now(server_url)
            time.sleep(COST_S)
            end = database_now(server_url)
            commits = commit_count(server_url, name) - commits
            statements = count_lines(server_log, lines, name, ("LOG:  statement:", "LOG:  execute"))
            connects = count_lines(server_log, lines, name, ("connection authorized",))
    with benchlib.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM worker_job_runs WHERE started_at >= %s AND started_at < %s",
            (start, end),
        ).fetchone()
    assert row is not None
    runs = int(row["n"])
    report.figure(f"cost: runs in {COST_S:g} s", str(runs))
    report.at_most("cost: commits per run", commits / runs, MAX_COMMITS_PER_RUN, digits=2)
    report.at_most("cost: statements per run", statements / runs, MAX_STATEMENTS_PER_RUN, digits=2)
    report.figure("cost: connections opened in the window", str(connects))


def commit_count(server_url: str, name: str) -> int:
    with benchlib.connect(server_url) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None
    return int(row["xact_commit"])


def log_size(server_log: Path) -> int:
    return server_log.stat().st_size


def count_lines(server_log: Path, offset: int, name: str, marks: tuple[str, ...]) -> int:
    """Lines the server logged for database `name` after byte `offset`, holding a mark."""
    with server_log.open("rb") as logfile:
        logfile.seek(offset)
        text = logfile.read().decode("utf-8", "replace")
    prefix = f"{name} "
    return sum(
        1
        for line in text.splitlines()
        if line.startswith(prefix) and any(mark in line for mark in marks)
    )


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
