"""Benchmark the quota pass against its limit and against the naive design it replaces.

Measured in one run, on an embedded PostgreSQL with a fake usage API in its own process:

1. 2,000 keys, the API answering after 50 ms, QUOTA_CONCURRENCY=8:
   - the worker's pass (`worker.jobs.quota.run_once`, timed alone, in this process);
   - the ideal, keys x latency / concurrency = 12.5 s (computed);
   - the naive design (one key at a time: GET, then UPDATE and commit), measured for real
     on a sample of the same keys and scaled linearly to 2,000.
   Targets: worker <= 1.25 x ideal and <= 0.2 x naive; all 2,000 rows updated (checked).
2. 10,000 keys, the API answering at once: `python -m worker quota --once` as a child
   process; its wall time per key and its peak RSS (VmHWM, and ru_maxrss from wait4).
   Target: peak RSS <= 80 MB (keys are streamed, not all held).

Run: `uv run python scripts/bench_quota.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import benchlib
import httpx
import psycopg
from benchlib import Report, log

KEYS = 2000
LATENCY_MS = 50.0
CONCURRENCY = 8
NAIVE_SAMPLE = 200
BIG_KEYS = 10_000
MAX_VS_IDEAL = 1.25
MAX_VS_NAIVE = 0.2
MAX_PEAK_RSS_MB = 80.0
CHILD_TIMEOUT_S = 600.0


def main() -> int:
    report = Report(
        f"bench_quota: {KEYS} keys at {LATENCY_MS:g} ms, QUOTA_CONCURRENCY={CONCURRENCY}"
    )
    with benchlib.embedded_server() as server_url:
        url = benchlib.create_database(server_url, "bench_quota")
        measure_throughput(url, report)
        measure_memory(url, report)
    return report.finish()


# --- 1. throughput -----------------------------------------------------------------------


def measure_throughput(url: str, report: Report) -> None:
    benchlib.seed_keys(url, KEYS)
    with benchlib.fake_usage_process(LATENCY_MS) as api:
        log(f"naive loop on {NAIVE_SAMPLE} keys")
        naive_sample_s = time_naive(url, api, NAIVE_SAMPLE)
        benchlib.reset_keys(url)
        log(f"worker pass on {KEYS} keys")
        worker_s, succeeded = time_worker_pass(url, api)
    states = benchlib.count_key_states(url)
    naive_s = naive_sample_s * KEYS / NAIVE_SAMPLE
    ideal_s = KEYS * LATENCY_MS / 1000 / CONCURRENCY
    report.figure("worker pass", f"{worker_s:.2f} s ({KEYS / worker_s:.0f} keys/s)")
    report.figure("ideal (keys x latency / concurrency)", f"{ideal_s:.2f} s")
    report.figure(
        "naive (sequential GET + UPDATE + commit)",
        f"{naive_s:.2f} s (measured {naive_sample_s:.2f} s on {NAIVE_SAMPLE} keys, x "
        f"{KEYS / NAIVE_SAMPLE:g})",
    )
    report.at_most("worker / ideal", worker_s / ideal_s, MAX_VS_IDEAL)
    report.at_most("worker / naive", worker_s / naive_s, MAX_VS_NAIVE, digits=3)
    report.expect("keys the pass reported succeeded", succeeded, KEYS)
    report.expect("key rows fully updated (checked in the table)", states.updated, KEYS)
    report.expect("key rows half-written", states.half_written, 0)
    report.note(
        f"the naive design was measured on the first {NAIVE_SAMPLE} of the same {KEYS} keys "
        "against the same fake API, then scaled linearly; the keys were reset before the "
        "worker's pass."
    )


def time_naive(url: str, api: str, sample: int) -> float:
    """The design the worker replaces: one key at a time, GET then UPDATE and commit."""
    with httpx.Client(timeout=30.0) as http, psycopg.connect(url) as conn:
        keys = conn.execute(
            "SELECT id, api_key FROM tavily_api_keys ORDER BY id LIMIT %s", (sample,)
        ).fetchall()
        conn.commit()
        started = time.monotonic()
        for key_id, api_key in keys:
            account = http.get(api, headers={"Authorization": f"Bearer {api_key}"}).json()[
                "account"
            ]
            limit, usage = account["plan_limit"], account["plan_usage"]
            conn.execute(
                "UPDATE tavily_api_keys SET remaining_quota = %s, plan_limit = %s,"
                " updated_at = now() WHERE id = %s",
                (max(limit - usage, 0), limit, key_id),
            )
            conn.commit()
        return time.monotonic() - started


def time_worker_pass(url: str, api: str) -> tuple[float, int]:
    """The worker's quota pass, in this process, with its JSON logs written to /dev/null."""
    from worker import db, http_client, logs
    from worker.jobs import quota
    from worker.jobs.base import JobContext, JobResult
    from worker.settings import from_env

    settings = from_env(
        {"DATABASE_URL": url, "TAVILY_USAGE_URL": api, "QUOTA_CONCURRENCY": str(CONCURRENCY)}
    )
    with open(os.devnull, "w") as devnull, db.connect(settings.database) as conn:
        logs.configure("INFO", "json", stream=devnull)
        ctx = JobContext(
            job=quota.NAME,
            conn=conn,
            settings=settings,
            http=http_client.build_http(settings.http_timeout_s),
            log=logs.get_logger(job=quota.NAME),
            result=JobResult(),
            should_stop=lambda: False,
            sleep=time.sleep,
            alert=lambda **alert: None,
        )
        with ctx.http:
            started = time.monotonic()
            quota.run_once(ctx)
            result = ctx.result
            elapsed_s = time.monotonic() - started
    return elapsed_s, result.succeeded


# --- 2. memory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildRun:
    exit_code: int
    wall_s: float
    peak_rss_kb: int  # ru_maxrss of the child, from wait4
    hwm_kb: int  # the last VmHWM polled from /proc before it exited
    pass_s: float | None  # elapsed_seconds of tavily_quota_update_completed
    total_keys: int | None


def measure_memory(url: str, report: Report) -> None:
    benchlib.seed_keys(url, BIG_KEYS)
    with benchlib.fake_usage_process(0) as api:
        log(f"`python -m worker quota --once` on {BIG_KEYS} keys at 0 ms")
        child = run_worker_once(url, api)
    states = benchlib.count_key_states(url)
    report.expect(
        f"`worker quota --once` on {BIG_KEYS} keys at 0 ms: exit code", child.exit_code, 0
    )
    if child.pass_s is not None:
        report.figure("wall time per key (the pass)", f"{child.pass_s / BIG_KEYS * 1000:.2f} ms")
    report.figure(
        "wall time per key (the whole process)", f"{child.wall_s / BIG_KEYS * 1000:.2f} ms"
    )
    report.at_most(
        "peak RSS of the worker process", benchlib.mb(child.peak_rss_kb), MAX_PEAK_RSS_MB, "MB", 1
    )
    report.figure("VmHWM last polled", f"{benchlib.mb(child.hwm_kb):.1f} MB")
    report.expect(f"key rows fully updated of {BIG_KEYS}", states.updated, BIG_KEYS)


def run_worker_once(url: str, api: str) -> ChildRun:
    env = benchlib.worker_env(
        DATABASE_URL=url, TAVILY_USAGE_URL=api, QUOTA_CONCURRENCY=str(CONCURRENCY)
    )
    with tempfile.TemporaryFile("w+") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            benchlib.worker_command("quota", "--once"),
            cwd=benchlib.ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        try:
            status, rusage, hwm_kb = _wait_polling_hwm(proc)
        finally:
            benchlib.stop_process(proc)
        wall_s = time.monotonic() - started
        out.seek(0)
        completed = _last_event(out.read(), "tavily_quota_update_completed")
    return ChildRun(
        exit_code=os.waitstatus_to_exitcode(status),
        wall_s=wall_s,
        peak_rss_kb=rusage.ru_maxrss,
        hwm_kb=hwm_kb,
        pass_s=completed.get("elapsed_seconds") if completed else None,
        total_keys=completed.get("total_keys") if completed else None,
    )


def _wait_polling_hwm(proc: subprocess.Popen[Any]) -> tuple[int, Any, int]:
    """Reap the child with wait4 (its own rusage), polling its VmHWM meanwhile."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    hwm_kb = 0
    while time.monotonic() < deadline:
        hwm_kb = max(hwm_kb, benchlib.status_kb(proc.pid, "VmHWM") or 0)
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, rusage, hwm_kb
        time.sleep(0.05)
    raise RuntimeError(f"the worker did not finish within {CHILD_TIMEOUT_S:g} s")


def _last_event(text: str, event: str) -> dict[str, Any] | None:
    found = None
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found = record
    return found


if __name__ == "__main__":
    sys.exit(main())
