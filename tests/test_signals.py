"""Stop signals reach the loop safely, whatever the main thread is doing when they land.

The v1 handler called `threading.Event.set()` inside the signal handler; if the signal
arrived while the main thread held that event's lock inside `Event.wait()`, the handler
waited for a lock its own thread held, and the process hung. A tracer makes the main thread
spend longer in Python code inside `Event.wait()`, widening that window.

The daemon itself enters `Event.wait()` once per idle period, so its window is microseconds
per few seconds: the traced daemon test checks the stop end to end (exit 0 within 1 s), and
the event-waiter test, whose main thread never leaves `Event.wait()`, is the one that tells
a handler taking the lock (the v1 handler hangs in most of its attempts)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg

from tests.support.fakes import Reply, serving
from tests.support.processes import ROOT, WorkerProcess
from tests.test_daemon import add_keys, key_states, quota_env, wait_until
from worker import db

Spawn = Callable[..., WorkerProcess]

# `python -m worker quota`, with every line of every thread traced.
TRACED_LAUNCHER = """
import runpy, sys, threading

def trace(frame, event, arg):
    return trace

sys.settrace(trace)
threading.settrace(trace)
sys.argv = ["worker", "quota"]
runpy.run_module("worker", run_name="__main__", alter_sys=True)
"""

# The same handlers around a main thread that is always inside `Event.wait()` (the loop's
# wait, at its tightest): a handler that took the event's lock would hang here most times.
EVENT_WAIT_LAUNCHER = """
import sys, threading
from worker import signals

def trace(frame, event, arg):
    return trace

sys.settrace(trace)
threading.settrace(trace)
stop = threading.Event()
with signals.on_stop(lambda name: stop.set()):
    print("waiting", flush=True)
    while not stop.wait(0):
        pass
print("stopped", flush=True)
"""

ATTEMPTS = 24
EVENT_WAIT_ATTEMPTS = 12
PARALLEL = 3  # two busy cores: a few at a time keeps the total near half a minute
MAX_DELAY_S = 0.3
IDLE_STOP_S = 1.0  # README "How it works": exit within a second when idle
START_TIMEOUT_S = 60.0  # a traced start-up is slow


class TracedWorker(WorkerProcess):
    """The daemon started through TRACED_LAUNCHER; otherwise as `spawn` runs it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(["quota"], env, launcher=[sys.executable, "-c", TRACED_LAUNCHER])


@dataclass(frozen=True)
class Attempt:
    delay_s: float
    code: int | None  # None: still running long after the signal (a deadlock)
    exit_s: float
    stopped: bool


def stop_traced_daemon(db_url: str, delay_s: float) -> Attempt:
    worker = TracedWorker({"DATABASE_URL": db_url, "RUN_ON_START": "false"})
    try:
        worker.wait_for("scheduler_loop_started", timeout_s=START_TIMEOUT_S)
        time.sleep(delay_s)  # the varying instant the signal lands: the experiment itself
        sent = worker.signal(signal.SIGTERM)
        try:
            code: int | None = worker.wait(IDLE_STOP_S * 5)
        except subprocess.TimeoutExpired:
            code = None
        exit_s = time.monotonic() - sent
        return Attempt(delay_s, code, exit_s, bool(worker.events("tavily_quota_updater_stopped")))
    finally:
        worker.kill()


def test_sigterm_stops_a_traced_idle_daemon_within_a_second_whenever_it_lands(
    db_url: str,
) -> None:
    delays = [MAX_DELAY_S * i / (ATTEMPTS - 1) for i in range(ATTEMPTS)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        attempts = list(pool.map(lambda d: stop_traced_daemon(db_url, d), delays))

    hung = [a for a in attempts if a.code is None]
    assert not hung, f"no exit {IDLE_STOP_S * 5:.0f}s after SIGTERM: {hung}"
    assert [a.code for a in attempts] == [0] * ATTEMPTS, attempts
    slow = [a for a in attempts if a.exit_s > IDLE_STOP_S]
    assert not slow, slow
    assert all(a.stopped for a in attempts), attempts


def stop_event_waiter(delay_s: float) -> Attempt:
    proc = subprocess.Popen(
        [sys.executable, "-c", EVENT_WAIT_LAUNCHER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "waiting\n", proc.stderr.read() if proc.stderr else ""
        time.sleep(delay_s)  # the varying instant the signal lands: the experiment itself
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=IDLE_STOP_S * 5)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            out, code = "", None
        return Attempt(delay_s, code, time.monotonic() - sent, out == "stopped\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_the_stop_callback_never_runs_inside_the_signal_handler() -> None:
    delays = [MAX_DELAY_S * i / (EVENT_WAIT_ATTEMPTS - 1) for i in range(EVENT_WAIT_ATTEMPTS)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        attempts = list(pool.map(stop_event_waiter, delays))

    hung = [a for a in attempts if a.code is None]
    assert not hung, f"deadlocked in Event.wait(): {hung}"
    assert all(a.code == 0 and a.stopped for a in attempts), attempts
    assert max(a.exit_s for a in attempts) <= IDLE_STOP_S, attempts


def test_a_second_sigterm_while_a_run_is_busy_exits_at_once_with_1(
    db_url: str, conn: db.Conn, spawn: Spawn
) -> None:
    keys = add_keys(conn, 2)
    with (
        serving(lambda r: Reply(hang=True)) as server,
        psycopg.connect(db_url) as blocker,
    ):
        worker = spawn("quota", env=quota_env(db_url, server, SHUTDOWN_GRACE_SECONDS="30"))
        wait_until(lambda: len(server.requests) >= 1)
        # Hold the run's row, so the graceful stop (recording the run `interrupted`) stays
        # busy: the second signal must not have to wait for it.
        blocker.execute("SELECT 1 FROM worker_job_runs WHERE status = 'running' FOR UPDATE")
        worker.signal(signal.SIGTERM)
        worker.wait_for("received_shutdown_signal")
        wait_until(lambda: recording_blocked(conn))
        second = worker.signal(signal.SIGTERM)
        code = worker.wait()
        exit_s = time.monotonic() - second
        blocker.rollback()

    assert code == 1  # forced, not graceful
    assert exit_s < 0.5, f"the second signal took {exit_s:.2f}s"
    assert worker.events("received_shutdown_signal")[0]["signal"] == "SIGTERM"
    assert not worker.events("tavily_quota_updater_stopped")
    # Whatever the stop had sent may still land once the row is free ('interrupted'),
    # else the row waits for the next claim to mark it abandoned; it never claims success.
    [run] = conn.execute("SELECT status, succeeded FROM worker_job_runs").fetchall()
    assert run["status"] in {"running", "interrupted"} and not run["succeeded"], run
    assert key_states(conn) == {key: (0, False) for key in keys}  # no call was answered


def recording_blocked(conn: db.Conn) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'worker:%'"
        " AND wait_event_type = 'Lock'"
    ).fetchone()
    return row is not None
