"""Benchmark the daemon as users run it: start-up, idle cost, and stopping on SIGTERM.

`python -m worker quota` runs as a child process (LOG_FORMAT=json, QUOTA_CONCURRENCY=4)
against an embedded PostgreSQL that is already up, and a fake usage API on loopback.

1. Exec (Popen) to the first key requested at the fake API. Target <= 1.5 s.
2. After the start-up pass: idle RSS (target <= 50 MB) and CPU time (utime + stime from
   /proc/<pid>/stat) used over 30 s idle (target <= 30 ms: no busy polling).
3. SIGTERM while idle: time to exit (target <= 1 s) and exit code 0.
4. SIGTERM while the API hangs mid-pass (it answers the first keys, then hangs): time to exit
   (target <= 1 s), exit code 0, the run row `interrupted`, and no key half-written (every
   row has remaining_quota, plan_limit and updated_at all new, or all untouched).

Run: `uv run python scripts/bench_daemon.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import benchlib
from benchlib import Report, log

from tests.support.fakes import FakeServer, Reply, Request, serving, usage_body
from tests.support.processes import WorkerProcess

KEYS = 200
CONCURRENCY = 4
HANG_AFTER = 50  # the fake answers this many keys, then hangs
IDLE_S = 30.0
MAX_FIRST_KEY_S = 1.5
MAX_IDLE_RSS_MB = 50.0
MAX_IDLE_CPU_MS = 30.0
MAX_STOP_S = 1.0
WAIT_S = 60.0  # give up on an expected event after this long


def main() -> int:
    report = Report("bench_daemon: `python -m worker quota` as a subprocess")
    with benchlib.embedded_server() as server_url:
        url = benchlib.create_database(server_url, "bench_daemon")
        benchlib.seed_keys(url, KEYS)
        measure_idle_daemon(url, report)
        benchlib.reset_keys(url)
        measure_stop_mid_pass(url, report)
    report.note(
        f"{KEYS} keys; CPU time is read in clock ticks of {1000 / benchlib.CLK_TCK:g} ms; "
        "the database server was started before the daemon."
    )
    return report.finish()


def start_daemon(url: str, api_url: str) -> WorkerProcess:
    env = benchlib.worker_env(
        DATABASE_URL=url, TAVILY_USAGE_URL=api_url, QUOTA_CONCURRENCY=str(CONCURRENCY)
    )
    return benchlib.worker_process(env, "quota")


def answer_all(request: Request) -> Reply:
    return Reply(200, usage_body(benchlib.FAKE_PLAN_LIMIT, benchlib.FAKE_PLAN_USAGE))


def answer_then_hang(count: int) -> Callable[[Request], Reply]:
    """Answer the first `count` requests; hold every later one open, then drop it unanswered."""
    lock = threading.Lock()
    seen = 0

    def responder(request: Request) -> Reply:
        nonlocal seen
        with lock:
            seen += 1
            late = seen > count
        return Reply(hang=True, drop=True) if late else answer_all(request)

    return responder


def seconds_to_first_request(api: FakeServer, worker: WorkerProcess) -> float:
    deadline = time.monotonic() + WAIT_S
    while not api.received():
        if time.monotonic() > deadline or worker.proc.poll() is not None:
            raise RuntimeError("the daemon requested no key")
        time.sleep(0.005)  # only notices sooner: the fake stamps each request on arrival
    return api.received()[0].received_at - worker.started


def wait_requests(api: FakeServer, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(api.received()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the daemon made fewer than {count} requests")
        time.sleep(0.01)


# --- 1-3: start, idle, stop --------------------------------------------------------------


def measure_idle_daemon(url: str, report: Report) -> None:
    with serving(answer_all) as api:
        log("daemon start-up")
        worker = start_daemon(url, api.url)
        try:
            first_key_s = seconds_to_first_request(api, worker)
            worker.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
            rss_start_kb = benchlib.status_kb(worker.pid, "VmRSS") or 0
            log(f"idle for {IDLE_S:g} s")
            cpu_start_s = benchlib.cpu_seconds(worker.pid)
            time.sleep(IDLE_S)  # the quantity measured: what the daemon does while idle
            idle_cpu_ms = (benchlib.cpu_seconds(worker.pid) - cpu_start_s) * 1000
            rss_end_kb = benchlib.status_kb(worker.pid, "VmRSS") or 0
            stop_s, code = worker.terminate_timed()
        finally:
            worker.close()
    idle_rss_mb = benchlib.mb(max(rss_start_kb, rss_end_kb))
    report.at_most("exec → first key requested", first_key_s, MAX_FIRST_KEY_S, "s")
    report.expect("start-up run status", benchlib.latest_run_status(url), "success")
    report.at_most("idle RSS after the start-up pass", idle_rss_mb, MAX_IDLE_RSS_MB, "MB", 1)
    report.at_most(f"CPU time over {IDLE_S:g} s idle", idle_cpu_ms, MAX_IDLE_CPU_MS, "ms", 0)
    report.at_most("SIGTERM → exit, idle", stop_s, MAX_STOP_S, "s", 3)
    report.expect("exit code after SIGTERM, idle", code, 0)


# --- 4: stop while the API hangs ---------------------------------------------------------


def measure_stop_mid_pass(url: str, report: Report) -> None:
    with serving(answer_then_hang(HANG_AFTER)) as api:
        log(f"daemon start-up; the API hangs after {HANG_AFTER} keys")
        worker = start_daemon(url, api.url)
        try:
            first_key_s = seconds_to_first_request(api, worker)
            worker.wait_for("tavily_quota_updated", times=HANG_AFTER, timeout_s=WAIT_S)
            wait_requests(api, HANG_AFTER + CONCURRENCY)  # every slot is now on a hung call
            hung = len(api.received()) - HANG_AFTER
            stop_s, code = worker.terminate_timed()
        finally:
            worker.close()
    states = benchlib.count_key_states(url)
    report.at_most("exec → first key requested (second start)", first_key_s, MAX_FIRST_KEY_S, "s")
    report.figure("calls hanging at SIGTERM", str(hung))
    report.at_most("SIGTERM → exit, API hanging mid-pass", stop_s, MAX_STOP_S, "s", 3)
    report.expect("exit code after SIGTERM mid-pass", code, 0)
    report.expect("run row status", benchlib.latest_run_status(url), "interrupted")
    report.expect("key rows half-written", states.half_written, 0)
    report.expect("key rows fully updated (answered before the hang)", states.updated, HANG_AFTER)
    report.expect("key rows untouched", states.untouched, KEYS - HANG_AFTER)


if __name__ == "__main__":
    sys.exit(main())
