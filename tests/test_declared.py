"""Declared jobs as users run them: `python -m worker jobs` on a jobs file, real HTTP, real SQL.

Each test writes a jobs file the way an app would, starts the worker as a subprocess (`jobs
--once` for one run of each job, `jobs` for the daemon) with the fake app of tests/apps on
PYTHONPATH, and checks what a user would: the run rows, what the fake server received, the
log lines, exit codes and the processes left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from tests.support import jobruns
from tests.support.fakes import Reply, serving
from tests.support.jobruns import WAIT_S, runs_of, wait_until, write_jobs
from tests.support.processes import BASE_ENV, ROOT, WorkerProcess
from worker import db

Spawn = Callable[..., WorkerProcess]

APPS = ROOT / "tests" / "apps"  # the fake app's code, as the app's image would hold it
TOKEN = "etl-token-7Qm2xV9pL4cR"
HTTP_TOKEN = "dashboard-token-Zt81vQ"
REPLENISH_TOKEN = "replenish-token-Hd52nW"
DB_PASSWORD = "pg-password-Ka93sE"
GRACE_S = float(BASE_ENV["SHUTDOWN_GRACE_SECONDS"])
OUTPUT_MAX_BYTES = 64 * 1024


# --- helpers ---


def jobs_env(db_url: str, jobs_file: Path, **extra: str) -> dict[str, str]:
    """The shared environment, with the test apps' modules importable by python jobs."""
    return jobruns.jobs_env(db_url, jobs_file, PYTHONPATH=str(APPS), **extra)


def run_once(
    spawn: Spawn, env: dict[str, str], service: str = "jobs"
) -> tuple[WorkerProcess, int, str]:
    """`python -m worker SERVICE --once`: the process, its exit code and its stderr."""
    worker = spawn(service, "--once", env=env)
    code = worker.wait(WAIT_S)
    return worker, code, worker.stderr()


def only_run(conn: db.Conn, job: str, status: str) -> dict[str, Any]:
    """The job's single run row, checked to be one item that ended `status`."""
    rows = runs_of(conn, job)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["status"] == status, row
    ok = status == "success"
    assert (row["total"], row["succeeded"], row["failed"]) == (1, int(ok), int(not ok)), row
    return row


def finished(worker: WorkerProcess, job: str) -> dict[str, Any]:
    [event] = [e for e in worker.events("declared_job_finished") if e["job"] == job]
    return event


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat, or None when no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="latin-1") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by its new parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return process_state(pid) not in (None, "Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text(encoding="latin-1").rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def all_text(worker: WorkerProcess, stderr: str) -> str:
    return "".join(worker.raw) + stderr


# --- each kind, as a user writes it ---


def test_http_job_posts_json_with_its_bearer_token_and_keeps_the_answer(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    answer = {"loaded": 42, "status": "done"}
    with serving(lambda request: Reply(200, answer)) as server:
        jobs = write_jobs(
            tmp_path,
            f"""
[jobs.daily_etl]
schedule = "0 2 * * *"
timezone = "Asia/Shanghai"

[jobs.daily_etl.http]
url = "{server.url}/api/etl/trigger"
token_env = "ETL_TOKEN"
json = {{ since = "1d", tables = ["orders", "users"] }}
""",
        )
        worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs, ETL_TOKEN=TOKEN))

    assert code == 0, stderr
    [request] = server.received()
    assert (request.method, request.path) == ("POST", "/api/etl/trigger")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"since": "1d", "tables": ["orders", "users"]}
    run = only_run(conn, "daily_etl", "success")
    assert run["result"] == answer
    assert run["output"].startswith("HTTP 200\n")
    assert json.loads(run["output"].split("\n", 1)[1]) == answer
    assert run["error"] is None
    event = finished(worker, "daily_etl")
    assert (event["kind"], event["status"], event["status_code"]) == ("http", "success", 200)
    assert TOKEN not in all_text(worker, stderr)


def test_async_python_job_gets_its_kwargs_and_its_result_and_prints_are_kept(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.auto_scraping]
schedule = "0 0,6,12,18 * * *"
python = "demoapp.tasks:summarize"
kwargs = { limit = 50, label = "reddit" }
""",
    )
    worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 0, stderr
    run = only_run(conn, "auto_scraping", "success")
    assert run["result"] == {"label": "reddit", "limit": 50, "items": [0, 1, 2]}
    assert "summarizing reddit up to 50" in run["output"]  # print()
    assert "summary ready for reddit" in run["output"]  # logging
    assert run["error"] is None
    event = finished(worker, "auto_scraping")
    assert (event["kind"], event["status"], event["exit_code"]) == ("python", "success", 0)


def test_python_job_that_raises_fails_with_its_exception_and_traceback(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.sync_accounts]
schedule = "every 1h"
python = "demoapp.tasks:explode"
kwargs = { reason = "negative limit" }
""",
    )
    worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 1, stderr
    run = only_run(conn, "sync_accounts", "failed")
    assert run["error"] == "ValueError: bad input: negative limit"
    assert "about to check the input" in run["output"]
    assert "Traceback (most recent call last)" in run["output"]
    assert 'raise ValueError(f"bad input: {reason}")' in run["output"]
    assert run["result"] is None
    assert finished(worker, "sync_accounts")["status"] == "failed"


def test_command_job_keeps_what_it_prints_to_both_streams(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        f"""
[jobs.nightly_export]
schedule = "30 3 * * *"
command = ["sh", "-c", "echo exported $EXPORT_FORMAT; echo warning: 2 rows skipped >&2; pwd"]
env = {{ EXPORT_FORMAT = "parquet" }}
cwd = "{tmp_path}"
""",
    )
    worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 0, stderr
    run = only_run(conn, "nightly_export", "success")
    assert "exported parquet\n" in run["output"]
    assert "warning: 2 rows skipped\n" in run["output"]
    assert f"{tmp_path}\n" in run["output"]
    event = finished(worker, "nightly_export")
    assert (event["kind"], event["status"], event["exit_code"]) == ("command", "success", 0)


def test_what_postgresql_cannot_hold_in_output_result_or_error_is_stored_in_a_form_it_can(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    # PostgreSQL's text and jsonb hold no NUL: the run is still recorded, nothing else lost.
    jobs = write_jobs(
        tmp_path,
        """
[jobs.dump_bytes]
schedule = "every 1h"
command = ["printf", "before\\\\000after"]

[jobs.read_binary]
schedule = "every 1h"
python = "demoapp.tasks:binary_noise"

[jobs.choke_on_binary]
schedule = "every 1h"
python = "demoapp.tasks:fail_with_binary_noise"

[jobs.divide_nothing]
schedule = "every 1h"
python = "demoapp.tasks:ratio_of_nothing"
""",
    )
    worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 1, stderr  # choke_on_binary failed, as it should
    assert only_run(conn, "dump_bytes", "success")["output"] == "before\ufffdafter"
    read = only_run(conn, "read_binary", "success")
    assert "header\ufffdtrailer\n" in read["output"]
    assert read["result"] == {"raw": "a\ufffdb", "keys": {"x\ufffd": 1}}
    # Nor a float JSON has no number for: its name instead, as Python's json writes it.
    divided = only_run(conn, "divide_nothing", "success")["result"]
    assert divided == {"ratio": "NaN", "ceiling": "Infinity", "floor": "-Infinity"}
    choked = only_run(conn, "choke_on_binary", "failed")
    assert "unexpected byte \ufffd in the input" in choked["error"]
    assert not worker.events("run_record_failed")


def test_command_job_exiting_3_fails_with_its_exit_code(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.backup]
schedule = "@daily"
command = ["sh", "-c", "echo disk full >&2; exit 3"]
""",
    )
    worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 1, stderr
    run = only_run(conn, "backup", "failed")
    assert run["error"] == "exit code 3"
    assert run["output"] == "disk full\n"
    assert finished(worker, "backup")["exit_code"] == 3


def test_command_past_its_timeout_is_killed_with_everything_it_started(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    script = "echo group=$$; sleep 60 & echo background=$!; sleep 60"
    jobs = write_jobs(
        tmp_path,
        f"""
[jobs.stuck]
schedule = "every 1h"
command = ["sh", "-c", "{script}"]
timeout = "2s"
""",
    )
    started = time.monotonic()
    _worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))
    took_s = time.monotonic() - started

    assert code == 1, stderr
    assert took_s < 15, f"a 2 s timeout took {took_s:.1f} s"
    run = only_run(conn, "stuck", "failed")
    assert run["error"] == "timeout"
    assert run["duration_ms"] < 8000
    group = int(re.search(r"group=(\d+)", run["output"]).group(1))  # type: ignore[union-attr]
    background = int(re.search(r"background=(\d+)", run["output"]).group(1))  # type: ignore[union-attr]
    wait_until(lambda: not alive(group) and not alive(background), timeout_s=5)
    assert group_members(group) == []


def test_sql_job_reports_its_rowcount_and_changes_the_rows(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    for key, remaining in (("demo-a-key-0001", 10), ("demo-b-key-0002", 20), ("other-key", 30)):
        conn.execute(
            "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota)"
            " VALUES (%s, 1000, %s)",
            (key, remaining),
        )
    jobs = write_jobs(
        tmp_path,
        """
[jobs.reset_demo_quota]
schedule = "every 15m"
sql = "UPDATE tavily_api_keys SET remaining_quota = 0 WHERE api_key LIKE 'demo-%'"
timeout = "30s"
""",
    )
    worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 0, stderr
    run = only_run(conn, "reset_demo_quota", "success")
    assert run["result"] == {"rowcount": 2}
    left = conn.execute(
        "SELECT api_key, remaining_quota FROM tavily_api_keys ORDER BY api_key"
    ).fetchall()
    assert [(r["api_key"], r["remaining_quota"]) for r in left] == [
        ("demo-a-key-0001", 0),
        ("demo-b-key-0002", 0),
        ("other-key", 30),
    ]
    event = finished(worker, "reset_demo_quota")
    assert (event["kind"], event["status"], event["rowcount"]) == ("sql", "success", 2)


@pytest.mark.parametrize(
    ("statement", "timeout", "error"),
    [
        ("UPDATE no_such_table SET x = 1", "30s", 'relation "no_such_table" does not exist'),
        ("SELECT pg_sleep(60)", "1s", "timeout"),
    ],
)
def test_sql_job_that_breaks_or_runs_past_its_timeout_fails(
    conn: db.Conn, spawn: Spawn, tmp_path: Path, statement: str, timeout: str, error: str
) -> None:
    jobs = write_jobs(
        tmp_path,
        f"""
[jobs.refresh_leaderboard]
schedule = "every 15m"
sql = "{statement}"
timeout = "{timeout}"
""",
    )
    started = time.monotonic()
    _worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 1, stderr
    assert time.monotonic() - started < 20
    run = only_run(conn, "refresh_leaderboard", "failed")
    assert error in run["error"]


@pytest.mark.parametrize(
    ("status", "retries", "requests"),
    [(500, 1, 2), (404, 1, 1), (503, 0, 1)],
)
def test_http_job_retries_server_errors_only(
    conn: db.Conn, spawn: Spawn, tmp_path: Path, status: int, retries: int, requests: int
) -> None:
    with serving(lambda request: Reply(status, {"error": "nope"})) as server:
        jobs = write_jobs(
            tmp_path,
            f"""
[jobs.monitoring_check]
schedule = "*/10 * * * *"
http = {{ url = "{server.url}/api/cron/monitor", method = "GET" }}
retries = {retries}
retry_delay = "1s"
""",
        )
        worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 1, stderr
    received = server.received("GET", "/api/cron/monitor")
    assert len(received) == requests
    if requests == 2:
        assert received[1].received_at - received[0].received_at >= 0.9  # retry_delay
    run = only_run(conn, "monitoring_check", "failed")
    assert run["error"] == f"http_{status}"
    event = finished(worker, "monitoring_check")
    assert (event["status"], event["status_code"]) == ("failed", status)


def test_a_failed_http_job_keeps_the_status_and_the_start_of_the_body_masked(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    # 5 KiB of error page, opening with the job's own token echoed back.
    page = f"upstream said no to {TOKEN}\n" + "x" * 5000
    with serving(lambda request: Reply(500, page)) as server:
        jobs = write_jobs(
            tmp_path,
            f"""
[jobs.failing_hook]
schedule = "every 1h"
http = {{ url = "{server.url}/hook", token_env = "ETL_TOKEN" }}
""",
        )
        _, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs, ETL_TOKEN=TOKEN))

    assert code == 1, stderr
    run = only_run(conn, "failing_hook", "failed")
    assert run["error"] == "http_500"
    head, _, body = run["output"].partition("\n")
    assert head == "HTTP 500"
    assert body.startswith("upstream said no to ***")  # masked like every output
    assert TOKEN not in run["output"]
    assert len(body.encode()) <= 2048 + 10  # the first 2 KiB of the body (masked)
    assert body.endswith("x" * 100)


def test_a_failed_http_jobs_body_is_read_no_further_than_the_body_limit(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    with serving(lambda request: Reply(404, "n" * 1500 + "TAIL")) as server:
        jobs = write_jobs(
            tmp_path,
            f"""
[jobs.missing_hook]
schedule = "every 1h"
http = {{ url = "{server.url}/hook" }}
""",
        )
        env = jobs_env(conn.info.dsn, jobs, HTTP_MAX_BODY_BYTES="1024")
        _, code, stderr = run_once(spawn, env)

    assert code == 1, stderr
    run = only_run(conn, "missing_hook", "failed")
    assert run["output"] == "HTTP 404\n" + "n" * 1024


def test_http_job_that_succeeds_on_its_retry_is_one_successful_run(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    replies = [Reply(503, "busy", headers={"Retry-After": "1"}), Reply(200, {"ok": True})]
    with serving(lambda request: replies.pop(0)) as server:
        jobs = write_jobs(
            tmp_path,
            f"""
[jobs.account_sync]
schedule = "every 1h"
http = {{ url = "{server.url}/sync", method = "PUT" }}
retries = 3
retry_delay = "1h"
""",
        )
        _, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 0, stderr
    first, second = server.received("PUT", "/sync")
    assert second.received_at - first.received_at >= 0.9  # Retry-After, not the 1h delay
    run = only_run(conn, "account_sync", "success")
    assert run["result"] == {"ok": True}


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (
            'command = ["no-such-program-7x"]',
            "cannot start no-such-program-7x: No such file or directory",
        ),
        (
            'command = ["pwd"]\ncwd = "/no/such/folder-7x"',
            "cannot start pwd: its cwd /no/such/folder-7x is not a directory",
        ),
        (
            'python = "demoapp.missing:run"',
            "ModuleNotFoundError: No module named 'demoapp.missing'",
        ),
        (
            'python = "demoapp.tasks:missing"',
            "AttributeError: module 'demoapp.tasks' has no attribute 'missing'",
        ),
    ],
    ids=["no program", "no cwd", "no module", "no function"],
)
def test_a_job_that_cannot_start_fails_saying_why(
    conn: db.Conn, spawn: Spawn, tmp_path: Path, action: str, error: str
) -> None:
    jobs = write_jobs(tmp_path, f'[jobs.broken]\nschedule = "every 1h"\n{action}\n')
    worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 1, stderr
    assert only_run(conn, "broken", "failed")["error"] == error
    event = finished(worker, "broken")  # a failure is an error line, saying why
    assert (event["level"], event["status"], event["error"]) == ("error", "failed", error)


# --- secrets and output ---


def test_secrets_are_masked_in_output_and_error_and_never_logged(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    db_url = make_conninfo(conn.info.dsn, password=DB_PASSWORD)
    secrets = [TOKEN, HTTP_TOKEN, REPLENISH_TOKEN, DB_PASSWORD]
    script = (
        "echo etl=$ETL_TOKEN http=$WORKER_HTTP_TOKEN replenish=$REPLENISH_API_TOKEN;"
        " echo db=$DATABASE_URL >&2"
    )
    with serving(lambda request: Reply(200, f"accepted {request.bearer}")) as server:
        jobs = write_jobs(
            tmp_path,
            f"""
[jobs.leaky_command]
schedule = "every 1h"
command = ["sh", "-c", "{script}"]

[jobs.leaky_python]
schedule = "every 1h"
python = "demoapp.tasks:reject_token"

[jobs.echoed_http]
schedule = "every 1h"
http = {{ url = "{server.url}/hook", token_env = "ETL_TOKEN" }}
""",
        )
        env = jobs_env(
            db_url,
            jobs,
            ETL_TOKEN=TOKEN,
            WORKER_HTTP_TOKEN=HTTP_TOKEN,
            REPLENISH_API_TOKEN=REPLENISH_TOKEN,
        )
        worker, code, stderr = run_once(spawn, env)

    assert code == 1, stderr  # leaky_python raises
    assert server.received()[0].bearer == TOKEN
    command = only_run(conn, "leaky_command", "success")
    assert "etl=*** http=*** replenish=***\n" in command["output"]
    assert "password=***" in command["output"]
    python = only_run(conn, "leaky_python", "failed")
    assert python["error"] == "PermissionError: token *** was rejected"
    assert "token *** was rejected" in python["output"]
    http = only_run(conn, "echoed_http", "success")
    assert http["output"] == "HTTP 200\naccepted ***"
    logged = all_text(worker, stderr)
    stored = json.dumps(runs_of(conn), default=str)
    alerts = json.dumps(conn.execute("SELECT * FROM worker_alerts").fetchall(), default=str)
    for secret in secrets:
        assert secret not in logged, f"{secret} reached the log"
        assert secret not in stored, f"{secret} reached a run row"
        assert secret not in alerts, f"{secret} reached an alert"


def test_a_secret_in_a_returned_result_never_reaches_the_run_row(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.show_config]
schedule = "every 1h"
python = "demoapp.tasks:current_config"

# Declares ETL_TOKEN a secret; runs in another service, so not in this pass.
[jobs.etl_elsewhere]
schedule = "every 1h"
service = "cleanup"
http = { url = "http://127.0.0.1:9/etl", token_env = "ETL_TOKEN" }
""",
    )
    _worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs, ETL_TOKEN=TOKEN))

    assert code == 0, stderr
    run = only_run(conn, "show_config", "success")
    assert run["result"]["region"] == "eu"
    assert TOKEN not in json.dumps(run["result"])


def test_output_over_64_kib_keeps_the_tail_marked_as_cut(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    lines = 2000
    line = "x" * 99 + "\n"  # 100 bytes a line
    total = len("HEAD-MARKER\n") + lines * len(line) + len("TAIL-MARKER\n")
    program = (
        f"print('HEAD-MARKER'); [print({line[:-1]!r}) for _ in range({lines})];"
        " print('TAIL-MARKER')"
    )
    jobs = write_jobs(
        tmp_path,
        f"""
[jobs.verbose]
schedule = "every 1h"
command = ["{sys.executable}", "-c", "{program}"]
""",
    )
    _worker, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 0, stderr
    output = only_run(conn, "verbose", "success")["output"]
    marker, kept = output.split("\n", 1)
    assert marker == f"[output cut: {total - OUTPUT_MAX_BYTES} earlier bytes not kept]"
    assert len(kept.encode()) == OUTPUT_MAX_BYTES
    assert kept.endswith(line + "TAIL-MARKER\n")
    assert "HEAD-MARKER" not in output


# --- start-up, overrides, heartbeats, shutdown ---


def test_on_start_missed_runs_a_missed_occurrence_once_at_start(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.daily_etl]
schedule = "0 2 * * *"
on_start = "missed"
command = ["echo", "etl done"]
""",
    )
    env = jobs_env(conn.info.dsn, jobs)
    first = spawn("jobs", env=env)  # registers the job; nothing was missed yet
    first.wait_for("scheduler_loop_started", timeout_s=WAIT_S)
    first.signal(signal.SIGTERM)
    assert first.wait(WAIT_S) == 0
    assert runs_of(conn) == []
    missed = conn.execute(
        "UPDATE worker_jobs SET next_due_at = next_due_at - interval '1 day'"
        " WHERE job = 'daily_etl' RETURNING next_due_at"
    ).fetchone()
    assert missed is not None

    second = spawn("jobs", env=env)
    second.wait_for("declared_job_finished", timeout_s=WAIT_S, job="daily_etl")
    wait_until(lambda: runs_of(conn)[0]["status"] != "running")  # recorded, lease released
    ledger = conn.execute(
        "SELECT next_due_at > now() AS future, lease_owner FROM worker_jobs WHERE job = 'daily_etl'"
    ).fetchone()
    second.signal(signal.SIGTERM)
    assert second.wait(WAIT_S) == 0

    run = only_run(conn, "daily_etl", "success")
    assert run["trigger"] == "schedule"
    assert run["scheduled_for"] == missed["next_due_at"]
    assert run["output"] == "etl done\n"
    assert ledger == {"future": True, "lease_owner": None}  # nothing else is due
    assert second.events("running_initial_update") == []  # no start request: it was due


def test_a_builtin_override_changes_the_schedule_in_the_ledger(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(tmp_path, '[jobs.quota]\nschedule = "*/30 * * * *"\n')
    env = jobs_env(conn.info.dsn, jobs, TAVILY_USAGE_URL="http://127.0.0.1:9/usage")
    worker, code, stderr = run_once(spawn, env, service="quota")

    assert code == 0, stderr
    row = conn.execute(
        "SELECT schedule, next_due_at, now() AS now FROM worker_jobs WHERE job = 'quota'"
    ).fetchone()
    assert row is not None
    assert row["schedule"] == "cron */30 * * * * UTC"
    assert row["next_due_at"].minute in (0, 30)
    assert [(r["job"], r["status"]) for r in runs_of(conn)] == [("quota", "success")]
    scheduled = [e for e in worker.events("job_scheduled") if e["job"] == "quota"]
    assert scheduled[0]["schedule"] == "cron */30 * * * * UTC"


def test_each_job_pings_its_own_heartbeat_else_heartbeat_url(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    with serving(lambda request: Reply(200, "OK")) as server:
        jobs = write_jobs(
            tmp_path,
            f"""
[jobs.export_ok]
schedule = "every 1h"
command = ["true"]
heartbeat_url = "{server.url}/ping/export-ok"

[jobs.export_broken]
schedule = "every 1h"
command = ["false"]
heartbeat_url = "{server.url}/ping/export-broken/"

[jobs.plain]
schedule = "every 1h"
command = ["true"]
""",
        )
        env = jobs_env(conn.info.dsn, jobs, HEARTBEAT_URL=f"{server.url}/ping/default")
        _worker, code, stderr = run_once(spawn, env)
        pings = sorted((r.method, r.path) for r in server.received())

    assert code == 1, stderr
    assert pings == [
        ("GET", "/ping/default"),
        ("GET", "/ping/export-broken/fail"),
        ("GET", "/ping/export-ok"),
    ]
    only_run(conn, "export_ok", "success")
    only_run(conn, "export_broken", "failed")
    only_run(conn, "plain", "success")


def test_sigterm_while_a_command_runs_stops_it_and_records_interrupted(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    ready = tmp_path / "trap-installed"
    jobs = write_jobs(
        tmp_path,
        f"""
[jobs.long_export]
schedule = "every 1h"
command = ["sh", "-c", "trap 'echo got-term; exit 143' TERM; touch \\"$READY\\"; sleep 60 & wait"]
env = {{ READY = "{ready}" }}
""",
    )
    worker = spawn("jobs", env=jobs_env(conn.info.dsn, jobs))
    wait_until(lambda: [r["status"] for r in runs_of(conn)] == ["running"])
    wait_until(ready.exists)
    sent = worker.signal(signal.SIGTERM)
    code = worker.wait(WAIT_S)
    took_s = time.monotonic() - sent

    assert code == 0, worker.stderr()
    assert took_s < GRACE_S, f"stopping took {took_s:.2f} s"
    run = only_run(conn, "long_export", "interrupted")
    assert "got-term" in run["output"]
    assert worker.events("received_shutdown_signal")[0]["signal"] == "SIGTERM"
    assert finished(worker, "long_export")["status"] == "interrupted"
    lease = conn.execute("SELECT lease_owner FROM worker_jobs WHERE job = 'long_export'")
    assert lease.fetchone() == {"lease_owner": None}


def test_a_python_job_killed_at_its_timeout_keeps_what_it_printed(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.hanging_sync]
schedule = "every 1h"
python = "demoapp.tasks:report_pid_then_hang"
timeout = "2s"
""",
    )
    # As `python -m worker jobs` runs outside the Docker image (which sets it): unset.
    env = jobs_env(conn.info.dsn, jobs, PYTHONUNBUFFERED="")
    _worker, code, stderr = run_once(spawn, env)

    assert code == 1, stderr
    run = only_run(conn, "hanging_sync", "failed")
    assert run["error"] == "timeout"
    assert "working on batch 1" in run["output"]  # stderr: line-buffered, kept
    assert "started in pid" in run["output"]  # stdout: lost in the child's buffer


def test_sigterm_while_a_declared_http_call_hangs_abandons_it(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    with serving(lambda request: Reply(hang=True)) as server:
        jobs = write_jobs(
            tmp_path,
            f"""
[jobs.daily_etl]
schedule = "every 1h"
http = {{ url = "{server.url}/api/etl/trigger" }}
timeout = "15m"
""",
        )
        worker = spawn("jobs", env=jobs_env(conn.info.dsn, jobs))
        wait_until(server.received)
        sent = worker.signal(signal.SIGTERM)
        code = worker.wait(WAIT_S)
        took_s = time.monotonic() - sent

    assert code == 0, worker.stderr()
    assert took_s < GRACE_S, f"stopping took {took_s:.2f} s"
    only_run(conn, "daily_etl", "interrupted")
    lease = conn.execute("SELECT lease_owner FROM worker_jobs WHERE job = 'daily_etl'")
    assert lease.fetchone() == {"lease_owner": None}


def test_a_command_that_leaves_a_process_behind_ends_it_with_the_run(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path,
        """
[jobs.spawner]
schedule = "every 1h"
command = ["sh", "-c", "sleep 60 & echo background=$!"]
""",
    )
    _, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))

    assert code == 0, stderr
    run = only_run(conn, "spawner", "success")
    background = int(run["output"].removeprefix("background="))
    still_running = alive(background)
    if still_running:
        os.kill(background, signal.SIGKILL)  # leave nothing behind, whatever the outcome
    assert run["duration_ms"] < 3000
    assert not still_running


def sleeping_backends(conn: db.Conn) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE query = 'SELECT pg_sleep(30)' AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row["n"]) if row else 0


def test_sigterm_while_a_declared_sql_statement_runs_cancels_it(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs = write_jobs(
        tmp_path, '[jobs.slow_refresh]\nschedule = "every 1h"\nsql = "SELECT pg_sleep(30)"\n'
    )
    worker = spawn("jobs", env=jobs_env(conn.info.dsn, jobs))
    try:
        wait_until(lambda: sleeping_backends(conn) == 1)
        sent = worker.signal(signal.SIGTERM)
        code = worker.wait(WAIT_S)
        took_s = time.monotonic() - sent
        left_running = sleeping_backends(conn)
    finally:
        conn.execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
            " WHERE query = 'SELECT pg_sleep(30)' AND pid <> pg_backend_pid()"
        )

    assert code == 0, worker.stderr()
    assert took_s < GRACE_S, f"stopping took {took_s:.2f} s"
    only_run(conn, "slow_refresh", "interrupted")
    assert left_running == 0


def test_a_kind_without_a_runner_is_refused_not_run_as_another() -> None:
    from dataclasses import replace

    from worker.jobfile import Declared, SqlStatement
    from worker.jobs import declared

    job = Declared("odd", SqlStatement("SELECT 1"), "every 1h")
    odd = type("Odd", (), {})()
    with pytest.raises(ValueError, match="no runner for the job kind"):
        declared._attempt(None, replace(job, action=odd), None)  # type: ignore[arg-type]
