"""Benchmark declared jobs: what the worker adds to a run of the app's own code, and idle RSS.

Both parts run against an embedded PostgreSQL that is already up, with a temporary jobs file
read by `worker.registry.resolve` exactly as a service reads it; the fake app's code is
tests/apps/demoapp, put on PYTHONPATH.

1. Per-run cost. A `command` job (`command = ["true"]`) and a `python` job (`python =
   "demoapp.tasks:nothing"`, a function that does nothing), each run 50 times through the
   real lifecycle in this process with `Daemon.run_job(spec, Mode.MANUAL)`: claim, run row,
   lease keeper, the child started in its own process group, its output captured, the run
   recorded and the lease released (each run opens its own connections, as production
   does). Interleaved with the runs, the bare child: `subprocess.run(["true"])`, and for the
   python job the same child the worker starts, `python -m worker.call
   demoapp.tasks:nothing` with its kwargs on stdin. Median and p90 (nearest rank) of each;
   5 warm-up runs of each are not counted. LOG_LEVEL=INFO (the default) to /dev/null.
   Target, per kind: median worker run <= 1.5 x median bare run + 20 ms. Beside them, an
   in-process job with an empty pass through the same lifecycle (scripts/bench_ledger.py's
   "bench_empty"), printed without a target: the floor that the lifecycle alone costs here.
2. Idle RSS. `python -m worker jobs` as a child process with ten declared jobs (three
   command, three python, two sql, two http; `every 1h`, `on_start = false`: nothing runs),
   VmRSS from /proc/<pid>/status 5 s after it logs `scheduler_loop_started`.
   Target <= 50 MB.

Run: `uv run python scripts/bench_declared.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import benchlib
from benchlib import Report, log

from worker import logs, registry
from worker.daemon import Daemon
from worker.jobs.base import JobContext
from worker.registry import SERVICES, JobSpec
from worker.schedules import Interval
from worker.settings import from_env
from worker.vocab import Mode

APPS = benchlib.ROOT / "tests" / "apps"
RUNS = 50
WARMUP_RUNS = 5
MAX_RATIO = 1.5
MAX_EXTRA_MS = 20.0
IDLE_JOBS = 10
SETTLE_S = 5.0
MAX_IDLE_RSS_MB = 50.0
WAIT_S = 60.0  # give up on an expected event after this long
PYTHON_TARGET = "demoapp.tasks:nothing"

RUN_JOBS = f"""
[jobs.bench_command]
schedule = "every 1h"
command = ["true"]

[jobs.bench_python]
schedule = "every 1h"
python = "{PYTHON_TARGET}"
"""


def main() -> int:
    report = Report("bench_declared: declared jobs through the lifecycle, and an idle `jobs`")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(APPS), os.environ.get("PYTHONPATH", "")) if p
    )
    with benchlib.embedded_server() as server_url, tempfile.TemporaryDirectory() as tmp:
        url = benchlib.create_database(server_url, "bench_declared")
        measure_runs(url, Path(tmp), report)
        measure_idle(benchlib.create_database(server_url, "bench_declared_idle"), tmp, report)
    report.note(
        f"{RUNS} runs of each kind after {WARMUP_RUNS} warm-up runs, each beside one bare run "
        "of the same child; p90 is the nearest rank; logs at INFO to /dev/null."
    )
    return report.finish()


# --- 1. the cost of a run ----------------------------------------------------------------


def empty_pass(ctx: JobContext) -> None:
    """An in-process job whose cost is nothing but the lifecycle around it: the floor."""


EMPTY_JOB = JobSpec("bench_empty", "jobs", empty_pass, lambda s: Interval(3600))


def measure_runs(url: str, tmp: Path, report: Report) -> None:
    jobs_file = tmp / "worker.toml"
    jobs_file.write_text(RUN_JOBS, encoding="utf-8")
    settings = from_env(
        {"DATABASE_URL": url, "WORKER_JOBS_FILE": str(jobs_file), "LOG_FORMAT": "json"}
    )
    specs = registry.resolve(settings)
    bare: dict[str, Callable[[], object]] = {
        "bench_command": lambda: subprocess.run(["true"], check=True),
        "bench_python": lambda: bare_python(tmp / "result.json"),
    }
    outcomes: Counter[str] = Counter()
    empty_ms: list[float] = []
    with open(os.devnull, "w") as devnull:
        logs.configure(settings.log_level, settings.log_format, stream=devnull)
        daemon = Daemon(settings, SERVICES["jobs"], jobs=registry.select(specs, "jobs"))
        try:
            for name, kind in (("bench_command", "command"), ("bench_python", "python")):
                log(f"{WARMUP_RUNS} + {RUNS} runs of the {kind} job, each beside a bare run")
                samples = time_runs(daemon, specs[name], bare[name], outcomes)
                judge(report, kind, samples["worker"], samples["bare"])
                empty_ms += samples["empty"]
        finally:
            daemon.http.close()
    report.figure("empty in-process job, same lifecycle (median / p90)", spread(empty_ms))
    report.expect("worker runs that ended `success`", outcomes.get("success", 0), 2 * RUNS)
    report.expect("success rows recorded, one item each", count_rows(url), 2 * (RUNS + WARMUP_RUNS))


def time_runs(
    daemon: Daemon, spec: JobSpec, bare: Callable[[], object], outcomes: Counter[str]
) -> dict[str, list[float]]:
    """Each worker run beside one bare run and one empty job, so all see the same noise."""
    samples: dict[str, list[float]] = {"worker": [], "bare": [], "empty": []}
    for i in range(WARMUP_RUNS + RUNS):
        bare_ms, _ = benchlib.timed(bare)
        empty_ms, _ = benchlib.timed(lambda: daemon.run_job(EMPTY_JOB, Mode.MANUAL))
        run_ms, outcome = benchlib.timed(lambda: daemon.run_job(spec, Mode.MANUAL))
        if i < WARMUP_RUNS:
            continue
        samples["bare"].append(bare_ms)
        samples["empty"].append(empty_ms)
        samples["worker"].append(run_ms)
        outcomes[str(outcome)] += 1
    return samples


def bare_python(result_path: Path) -> None:
    """The child the worker starts for a python job, started by hand."""
    subprocess.run(
        [sys.executable, "-m", "worker.call", PYTHON_TARGET],
        input=json.dumps({}).encode(),
        env={**os.environ, "WORKER_CALL_RESULT": str(result_path)},
        capture_output=True,
        check=True,
    )


def judge(report: Report, kind: str, worker_ms: list[float], bare_ms: list[float]) -> None:
    bare_median = statistics.median(bare_ms)
    report.figure(f"{kind}: bare child (median / p90)", spread(bare_ms))
    report.figure(f"{kind}: worker run (median / p90)", spread(worker_ms))
    report.at_most(
        f"{kind}: median worker run (target 1.5 x bare + 20 ms)",
        statistics.median(worker_ms),
        math.floor((MAX_RATIO * bare_median + MAX_EXTRA_MS) * 10) / 10,  # shown to 0.1 ms
        "ms",
        1,
    )


def spread(values_ms: list[float]) -> str:
    ordered = sorted(values_ms)
    p90 = benchlib.nearest_rank(ordered, 0.9)
    return f"{statistics.median(ordered):.1f} / {p90:.1f} ms"


def count_rows(url: str) -> int:
    with benchlib.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM worker_job_runs WHERE job <> %s AND status = 'success'"
            " AND total = 1 AND succeeded = 1 AND trigger = 'manual'",
            (EMPTY_JOB.name,),
        ).fetchone()
    assert row is not None
    return int(row["n"])


# --- 2. an idle `jobs` service -----------------------------------------------------------


def idle_jobs_file() -> str:
    """Ten declared jobs of the four kinds, hourly, none run at start."""
    actions = [
        'command = ["true"]',
        'command = ["sh", "-c", "echo export"]',
        'command = ["python", "-m", "app.export"]',
        f'python = "{PYTHON_TARGET}"',
        'python = "demoapp.tasks:summarize"\nkwargs = { limit = 5, label = "x" }',
        'python = "app.services.scraping:run_active_configs"',
        'sql = "SELECT 1"',
        'sql = "REFRESH MATERIALIZED VIEW CONCURRENTLY leaderboard"',
        'http = { url = "http://127.0.0.1:9/api/etl", method = "POST" }',
        'http = { url = "http://127.0.0.1:9/api/monitor", method = "GET" }',
    ]
    assert len(actions) == IDLE_JOBS
    return "\n".join(
        f'[jobs.idle_{i}]\nschedule = "every 1h"\non_start = false\n{action}\n'
        for i, action in enumerate(actions)
    )


def measure_idle(url: str, tmp: str, report: Report) -> None:
    jobs_file = Path(tmp) / "idle.toml"
    jobs_file.write_text(idle_jobs_file(), encoding="utf-8")
    env = benchlib.worker_env(DATABASE_URL=url, WORKER_JOBS_FILE=str(jobs_file))
    log(f"`python -m worker jobs` with {IDLE_JOBS} declared jobs, idle")
    worker = benchlib.worker_process(env, "jobs")
    try:
        worker.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
        time.sleep(SETTLE_S)  # the quantity measured: the daemon after it settles
        rss_kb = benchlib.status_kb(worker.pid, "VmRSS") or 0
        started = worker.count("job_started")
        stop_s, code = worker.terminate_timed()
    finally:
        worker.close()
    report.at_most(
        f"idle RSS of `jobs` with {IDLE_JOBS} declared jobs",
        benchlib.mb(rss_kb),
        MAX_IDLE_RSS_MB,
        "MB",
        1,
    )
    report.expect("runs while idle", started, 0)
    report.expect("exit code after SIGTERM, idle", code, 0)
    report.figure("SIGTERM → exit, idle", f"{stop_s:.3f} s")


if __name__ == "__main__":
    sys.exit(main())
