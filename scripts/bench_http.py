"""Benchmark the HTTP endpoint on a long history: latency, memory, and what it costs the jobs.

`python -m worker quota` runs as a child process with WORKER_HTTP_PORT set, against an
embedded PostgreSQL holding 20 jobs in the ledger and 1,000,000 rows in worker_job_runs
(spread over 30 days), and a fake usage API (its own process) answering after 10 ms.

1. 200 sequential requests (keep-alive) to each of `/`, `/api/jobs`, `/jobs/quota` and
   `/metrics`: p50 and p99. Target p99 <= 100 ms (indexed reads, no full scans). The same
   for the charts: `/?after=-:-` (the dashboard with its sparklines, read afresh every time:
   a cursor before the first job) and the page of a job that stopped running 20 days ago
   (`/jobs/bench_job_10`: its last 100 runs lie weeks back, behind every other job's); and
   for the searched history: `/runs`, `/runs?status=failed`, one job's runs of one status,
   a status and a trigger no run has (the walk that finds nothing), alone and beside a
   common status or a job, `/api/runs` over a day's range ten days back, a later page
   (`before`, half-way through the history), and `/alerts`.
2. Idle RSS of the daemon with the listener on, after its start-up pass and before any
   request (target <= 55 MB); for comparison the same without the listener, and with it
   after the requests above (figures).
3. A quota pass (200 keys, QUOTA_CONCURRENCY=4) requested through the API, timed from its
   run row: the median of 3 passes alone, then of 3 passes while 20 dashboard clients each
   load `/` once a second (ten times the page's own refresh rate). Target: with clients
   <= 1.1 x without.

4. Runtime jobs: 10,000 more jobs created at run time (handler `scripts:noop`), served by
   `python -m worker jobs` with WORKER_HANDLERS and the listener on: p99 of `/` (the first
   page of the job list), `/api/jobs?limit=100`, a runtime job's page and
   `/api/handlers` (target <= 100 ms); idle RSS with the catalogue loaded (<= 55 MB); and
   from `POST /api/jobs` (an `at` job due at once) to its run's start and its end (figures,
   medians of 5).

Run: `uv run python scripts/bench_http.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib
import httpx
from benchlib import Report, log

from tests.support.processes import WorkerProcess

JOBS = 20
RUNS = 1_000_000
REQUESTS = 200
STOPPED_JOB = "bench_job_10"  # no run for 20 days: the charts' worst case
PATHS = ("/", "/?after=-:-", "/api/jobs", "/jobs/quota", f"/jobs/{STOPPED_JOB}", "/metrics")
KEYS = 200
LATENCY_MS = 10.0
PASSES = 3
CLIENTS = 20
POLL_INTERVAL_S = 1.0
MAX_P99_MS = 100.0
MAX_IDLE_RSS_MB = 55.0
MAX_PASS_RATIO = 1.1
WAIT_S = 120.0
RUNTIME_JOBS = 10_000
RUNTIME_PATHS = ("/", "/?after=-:-", "/api/jobs?limit=100", "/jobs/rt_05000", "/api/handlers")
CREATES = 5
NOOP = "def run(n: int = 1) -> dict:\n    return {'n': n}\n"


def main() -> int:
    report = Report(f"bench_http: {RUNS:,} runs of {JOBS} jobs, the endpoint of `worker quota`")
    with benchlib.embedded_server() as server_url:
        url = benchlib.create_database(server_url, "bench_http")
        benchlib.seed_keys(url, KEYS)
        seed_history(url)
        with benchlib.fake_usage_process(LATENCY_MS) as api_url:
            measure_idle_without_listener(url, api_url, report)
            port = free_port()
            daemon = start_daemon(url, api_url, port)
            try:
                measure(daemon, url, f"http://127.0.0.1:{port}", report)
            finally:
                daemon.close()
            measure_runtime(url, report)
    report.note(
        f"{KEYS} keys at {LATENCY_MS:g} ms per call; passes are medians of {PASSES}; "
        f"{CLIENTS} clients each load / every {POLL_INTERVAL_S:g} s during the loaded passes."
    )
    report.note(
        "/ reads its data at most once a second (worker.web.app.DASHBOARD_FRESH_S), so most of "
        "its 200 requests render a snapshot; /?after=-:- (the same page), /api/jobs and "
        "/jobs/JOB read the database every time."
    )
    return report.finish()


def measure_idle_without_listener(url: str, api_url: str, report: Report) -> None:
    """The same daemon without WORKER_HTTP_PORT, for comparison."""
    daemon = start_daemon(url, api_url, None)
    try:
        idle_kb = idle_rss_kb(daemon, url)
    finally:
        daemon.close()
    with benchlib.connect(url) as conn:
        # Back-date its start-up run, so the next daemon's start requests one too (replicas
        # starting within 30 s of a start-up run make none).
        conn.execute(
            "UPDATE worker_job_runs SET started_at = started_at - interval '1 minute'"
            " WHERE host <> 'bench'"
        )
    report.figure("idle RSS, listener off (for comparison)", f"{benchlib.mb(idle_kb):.1f} MB")


def idle_rss_kb(daemon: WorkerProcess, url: str) -> int:
    """VmRSS once the daemon's start-up pass has ended and it has settled."""
    done = count_runs(url)
    daemon.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    wait_for_runs(url, done + 1)  # the start-up pass
    time.sleep(2.0)  # settle: the figure is the idle process, not the end of its pass
    return benchlib.status_kb(daemon.pid, "VmRSS") or 0


def measure(daemon: WorkerProcess, url: str, base: str, report: Report) -> None:
    idle_kb = idle_rss_kb(daemon, url)
    report.at_most("idle RSS, listener on", benchlib.mb(idle_kb), MAX_IDLE_RSS_MB, "MB", 1)
    with httpx.Client(base_url=base, timeout=30) as http:
        for path in PATHS:
            measure_latency(http, path, report)
        for path in history_paths(url):
            measure_latency(http, path, report)
    report.figure(
        "RSS after the requests",
        f"{benchlib.mb(benchlib.status_kb(daemon.pid, 'VmRSS') or 0):.1f} MB",
    )
    alone = timed_passes(url, base)
    with Pollers(base):
        loaded = timed_passes(url, base)
    report.figure("quota pass alone (median)", f"{alone:.3f} s")
    report.figure(f"quota pass, {CLIENTS} clients polling (median)", f"{loaded:.3f} s")
    report.at_most("pass with clients / pass alone", loaded / alone, MAX_PASS_RATIO, "", 3)


def measure_runtime(url: str, report: Report) -> None:
    """Phase 4: the endpoint of a `jobs` service with RUNTIME_JOBS runtime jobs."""
    seed_runtime_jobs(url)
    with tempfile.TemporaryDirectory(prefix="bench-handlers-") as folder:
        (Path(folder) / "noop.py").write_text(NOOP, encoding="utf-8")
        port = free_port()
        env = benchlib.worker_env(DATABASE_URL=url, WORKER_HANDLERS=folder)
        env.pop("PORT", None)
        env.update(WORKER_HTTP_PORT=str(port), WORKER_JOBS_FILE=str(Path(folder) / "none.toml"))
        (Path(folder) / "none.toml").write_text("", encoding="utf-8")
        log("jobs daemon start-up, with the handler catalogue")
        daemon = benchlib.worker_process(env, "jobs")
        try:
            daemon.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
            base = f"http://127.0.0.1:{port}"
            # Without a token, a loopback POST must name its own origin (CSRF).
            with httpx.Client(base_url=base, timeout=30, headers={"Origin": base}) as http:
                http.get("/api/handlers").raise_for_status()  # the catalogue, loaded
                time.sleep(2.0)
                rss = benchlib.mb(benchlib.status_kb(daemon.pid, "VmRSS") or 0)
                report.at_most(
                    "jobs service idle RSS, listener and catalogue", rss, MAX_IDLE_RSS_MB, "MB", 1
                )
                for path in RUNTIME_PATHS:
                    measure_latency(http, path, report)
                started, ended = create_to_run(http, url)
            report.figure("POST /api/jobs -> its run starts (median)", f"{started * 1000:.0f} ms")
            report.figure("POST /api/jobs -> its run ends (median)", f"{ended * 1000:.0f} ms")
        finally:
            daemon.close()


def seed_runtime_jobs(url: str) -> None:
    log(f"seeding {RUNTIME_JOBS:,} runtime jobs")
    with benchlib.connect(url) as conn:
        conn.execute(
            "INSERT INTO worker_jobs (job, service, schedule, next_due_at, source, definition)"
            " SELECT format('rt_%%s', lpad(i::text, 5, '0')), 'jobs', 'manual',"
            "   '9999-12-31T00:00:00Z', 'runtime',"
            "   jsonb_build_object('handler', 'scripts:noop', 'kwargs', jsonb_build_object('n', i),"
            "     'schedule', 'manual', 'timezone', 'UTC', 'timeout', 60, 'max_attempts', 3,"
            "     'description', NULL)"
            " FROM generate_series(1, %s) AS i",
            (RUNTIME_JOBS,),
        )
        conn.execute("VACUUM ANALYZE worker_jobs")


def create_to_run(http: httpx.Client, url: str) -> tuple[float, float]:
    """Medians of CREATES creates of an `at` job due now: to its run's start, and end."""
    starts, ends = [], []
    for n in range(CREATES):
        name = f"bench_created_{n}"
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        sent = time.time()
        answer = http.post("/api/jobs", json={"name": name, "handler": "scripts:noop", "at": at})
        answer.raise_for_status()
        deadline = time.monotonic() + WAIT_S
        while True:
            with benchlib.connect(url) as conn:
                row = conn.execute(
                    "SELECT extract(epoch FROM started_at) AS s,"
                    "       extract(epoch FROM finished_at) AS f"
                    "  FROM worker_job_runs WHERE job = %s AND status <> 'running'",
                    (name,),
                ).fetchone()
            if row is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} never ran")
            time.sleep(0.05)
        starts.append(float(row["s"]) - sent)
        ends.append(float(row["f"]) - sent)
    return statistics.median(starts), statistics.median(ends)


# --- data --------------------------------------------------------------------------------


def seed_history(url: str) -> None:
    """20 jobs in the ledger (quota and 19 others) and RUNS runs spread over 30 days.

    Statuses vary run by run, except for one job that has failed every time: the worst case
    for "its last success", which then lies beyond its whole history. Another, STOPPED_JOB,
    stopped 20 days ago (its later runs went to its neighbour): the worst case for its last
    runs, behind everyone else's.
    """
    log(f"seeding {RUNS:,} runs of {JOBS} jobs")
    names = ["quota", *(f"bench_job_{i:02d}" for i in range(1, JOBS))]
    with benchlib.connect(url) as conn:
        conn.execute(
            "INSERT INTO worker_jobs (job, service, schedule, next_due_at)"
            " SELECT name, 'jobs', 'every 1h', now() + interval '1 hour'"
            " FROM unnest(%s::text[]) AS name WHERE name <> 'quota'",
            (names,),
        )
        conn.execute(
            "INSERT INTO worker_job_runs (job, trigger, status, started_at, finished_at,"
            " duration_ms, total, succeeded, failed, error, host, pid, scheduled_for)"
            " SELECT (%(names)s::text[])[1 + i %% %(jobs)s], 'schedule',"
            "   CASE WHEN i %% %(jobs)s = %(jobs)s - 1 THEN 'failed'"  # one job always fails
            "   ELSE (ARRAY['success','success','success','partial','failed'])[1 + i / 20 %% 5]"
            "   END,"
            "   now() - make_interval(secs => i * 2.6),"
            "   now() - make_interval(secs => i * 2.6 - 1.5), 1500, 10, 9, 1,"
            "   NULL, 'bench', 1, now() - make_interval(secs => i * 2.6 + 0.05)"  # 50 ms late
            " FROM generate_series(%(runs)s, 1, -1) AS i",
            {"names": names, "jobs": JOBS, "runs": RUNS},
        )
        conn.execute(
            "UPDATE worker_job_runs SET job = 'bench_job_11'"
            " WHERE job = %s AND started_at > now() - interval '20 days'",
            (STOPPED_JOB,),
        )
        conn.execute("VACUUM ANALYZE worker_job_runs")
        conn.execute("VACUUM ANALYZE worker_jobs")


def history_paths(url: str) -> list[str]:
    """The searched history's pages: the cursor is a run half-way through the history."""
    with benchlib.connect(url) as conn:
        row = conn.execute(
            "SELECT id FROM worker_job_runs WHERE host = 'bench' ORDER BY id OFFSET %s LIMIT 1",
            (RUNS // 2,),
        ).fetchone()
    assert row is not None
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 10 * 86400))
    return [
        "/runs",
        "/runs?status=failed",
        "/runs?job=bench_job_05&status=partial",
        "/api/runs?status=cancelled&limit=50",
        "/api/runs?trigger=retry&limit=50",
        "/api/runs?status=failed&trigger=manual&limit=50",
        "/api/runs?job=bench_job_05&trigger=manual&limit=50",
        f"/api/runs?since={day}&until={day}&limit=50",
        f"/runs?status=failed&before={row['id']}",
        f"/api/runs?job=bench_job_05&limit=50&before={row['id']}",
        "/alerts",
    ]


def count_runs(url: str) -> int:
    """Finished quota runs made by a daemon (not the seeded history)."""
    with benchlib.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM worker_job_runs"
            " WHERE job = 'quota' AND host <> 'bench' AND status <> 'running'"
        ).fetchone()
    return int(row["n"]) if row else 0


def wait_for_runs(url: str, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while count_runs(url) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {count} quota runs finished")
        time.sleep(0.1)


# --- measurements ------------------------------------------------------------------------


def measure_latency(http: httpx.Client, path: str, report: Report) -> None:
    http.get(path).raise_for_status()  # warm: the handler thread's connection, templates
    times_ms = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        http.get(path).raise_for_status()
        times_ms.append((time.perf_counter() - started) * 1000)
    times_ms.sort()
    p50 = statistics.median(times_ms)
    p99 = times_ms[int(len(times_ms) * 0.99) - 1]
    report.figure(f"{path} p50", f"{p50:.1f} ms")
    report.at_most(f"{path} p99", p99, MAX_P99_MS, "ms", 1)


def timed_passes(url: str, base: str) -> float:
    """Request PASSES quota runs one after the other; the median of their durations (s)."""
    durations = []
    with httpx.Client(base_url=base, timeout=30, headers={"Origin": base}) as http:
        for _ in range(PASSES):
            before = last_run_id(url)
            http.post("/api/jobs/quota/run").raise_for_status()
            durations.append(wait_for_duration(url, before))
    return statistics.median(durations)


def last_run_id(url: str) -> int:
    with benchlib.connect(url) as conn:
        row = conn.execute("SELECT max(id) AS id FROM worker_job_runs").fetchone()
    return int(row["id"]) if row and row["id"] else 0


def wait_for_duration(url: str, after_id: int) -> float:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with benchlib.connect(url) as conn:
            row = conn.execute(
                "SELECT status, duration_ms FROM worker_job_runs"
                " WHERE job = 'quota' AND id > %s AND status <> 'running'",
                (after_id,),
            ).fetchone()
        if row is not None:
            if row["status"] != "success":
                raise RuntimeError(f"the quota pass ended {row['status']}")
            return float(row["duration_ms"]) / 1000
        time.sleep(0.05)
    raise RuntimeError("the requested quota pass did not finish")


class Pollers:
    """CLIENTS threads, each loading the dashboard every POLL_INTERVAL_S until left."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> None:
        for thread in self.threads:
            thread.start()
        time.sleep(POLL_INTERVAL_S)  # every client is polling before the first pass

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _poll(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while not self.stop.is_set():
                http.get("/").raise_for_status()
                self.stop.wait(POLL_INTERVAL_S)


# --- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_daemon(url: str, api_url: str, port: int | None) -> WorkerProcess:
    env = benchlib.worker_env(DATABASE_URL=url, TAVILY_USAGE_URL=api_url, QUOTA_CONCURRENCY="4")
    env.pop("PORT", None)
    if port is not None:
        env["WORKER_HTTP_PORT"] = str(port)
    log("daemon start-up")
    return benchlib.worker_process(env, "quota")


if __name__ == "__main__":
    sys.exit(main())
