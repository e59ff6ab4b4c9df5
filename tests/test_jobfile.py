"""The jobs file: parsing and validation (`worker.jobfile.load`), and how the CLI reports it.

A good file loads into exactly what it says; a broken entry is refused with one line naming
the file and `jobs.NAME.KEY` (or the line of broken TOML), by `jobs-check` and by the
services that run it, before anything touches the database, and blocks nothing else; a
python job's target is imported in a child, never called.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import make_settings
from tests.support.processes import BASE_ENV, ROOT, WorkerProcess
from worker import db, registry
from worker.jobfile import (
    Command,
    Declared,
    HttpCall,
    JobsFile,
    JobsFileError,
    Override,
    PythonCall,
    SqlStatement,
    load,
)
from worker.registry import JOBS

Spawn = Callable[..., WorkerProcess]
BUILTINS = tuple(JOBS)
EXAMPLE = ROOT / "worker.example.toml"
WAIT_S = 30.0


def load_text(tmp_path: Path, text: str) -> JobsFile:
    path = tmp_path / "worker.toml"
    path.write_text(text, encoding="utf-8")
    return load(path, BUILTINS)


def load_error(tmp_path: Path, text: str) -> str:
    """The one error of a file: the whole file's (raised), or its one broken entry's."""
    try:
        loaded = load_text(tmp_path, text)
    except JobsFileError as exc:
        return str(exc)
    [broken] = loaded.broken
    assert loaded.declared == loaded.overrides == ()
    return broken.error


def declared_by_name(jobs: JobsFile) -> dict[str, Declared]:
    return {job.name: job for job in jobs.declared}


# --- a good file ---


def test_every_kind_loads_with_the_defaults_applied(tmp_path: Path) -> None:
    jobs = load_text(
        tmp_path,
        """
[defaults]
timezone = "Asia/Shanghai"
timeout = "10m"
retries = 1

[jobs.daily_etl]
schedule = "0 2 * * *"
on_start = "missed"
http = { url = "https://app.example.com/api/etl", token_env = "ETL_TOKEN", json = { since = "1d" } }
timeout = "15m"
retries = 2
retry_delay = "1m"
heartbeat_url = "https://hc-ping.com/abc"
description = "warehouse load"

[jobs.auto_scraping]
schedule = "every 6h"
python = "app.services.scraping:run_active_configs"
kwargs = { limit = 50, dry_run = false }
on_start = false

[jobs.nightly_export]
schedule = "30 3 * * *"
command = ["python", "-m", "app.export", "--since", "1d"]
cwd = "/srv/app"
env = { EXPORT_FORMAT = "parquet" }
timezone = "UTC"
service = "cleanup"

[jobs.refresh_leaderboard]
schedule = "@hourly"
sql = "REFRESH MATERIALIZED VIEW CONCURRENTLY leaderboard"

[jobs.quota]
schedule = "*/30 * * * *"
on_start = true
""",
    )
    declared = declared_by_name(jobs)

    assert list(declared) == [
        "daily_etl",
        "auto_scraping",
        "nightly_export",
        "refresh_leaderboard",
    ]
    etl = declared["daily_etl"]
    assert etl.kind == "http"
    assert etl.action == HttpCall(
        "https://app.example.com/api/etl", "POST", {}, {"since": "1d"}, "ETL_TOKEN"
    )
    assert (etl.schedule, etl.timezone, etl.on_start, etl.service) == (
        "0 2 * * *",
        "Asia/Shanghai",
        "missed",
        "jobs",
    )
    assert (etl.timeout_s, etl.retries, etl.retry_delay_s) == (900, 2, 60)
    assert (etl.heartbeat_url, etl.description) == ("https://hc-ping.com/abc", "warehouse load")
    scraping = declared["auto_scraping"]
    assert scraping.action == PythonCall(
        "app.services.scraping:run_active_configs", {"limit": 50, "dry_run": False}
    )
    assert (scraping.on_start, scraping.timeout_s, scraping.retries) == ("false", 600, 1)
    assert scraping.retry_delay_s == 30  # the built-in default
    export = declared["nightly_export"]
    assert export.action == Command(
        ("python", "-m", "app.export", "--since", "1d"), "/srv/app", {"EXPORT_FORMAT": "parquet"}
    )
    assert (export.timezone, export.service, export.kind) == ("UTC", "cleanup", "command")
    leaderboard = declared["refresh_leaderboard"]
    assert leaderboard.action == SqlStatement("REFRESH MATERIALIZED VIEW CONCURRENTLY leaderboard")
    assert (leaderboard.kind, leaderboard.on_start) == ("sql", None)
    assert jobs.overrides == (Override("quota", schedule="*/30 * * * *", on_start="true"),)


def test_a_file_without_defaults_gets_the_documented_ones(tmp_path: Path) -> None:
    jobs = load_text(tmp_path, '[jobs.ping]\nschedule = "every 1m"\nhttp = { url = "http://h/" }\n')

    [ping] = jobs.declared
    assert ping.action == HttpCall("http://h/")  # POST, no headers, no body, no token
    assert (ping.timezone, ping.service, ping.on_start) == (None, "jobs", None)
    assert (ping.timeout_s, ping.retries, ping.retry_delay_s) == (3600, 0, 30)


def test_an_empty_file_declares_nothing(tmp_path: Path) -> None:
    assert load_text(tmp_path, "# nothing yet\n") == JobsFile()


def test_the_example_file_loads() -> None:
    jobs = load(EXAMPLE, BUILTINS)

    kinds = {job.name: job.kind for job in jobs.declared}
    assert kinds == {
        "daily_etl": "http",
        "auto_scraping": "python",
        "sync_accounts": "python",
        "monitoring_check": "http",
        "nightly_export": "command",
        "refresh_leaderboard": "sql",
    }
    assert all(job.timezone == "Asia/Shanghai" for job in jobs.declared)
    assert [o.job for o in jobs.overrides] == ["quota"]


def test_a_name_of_63_characters_is_the_longest_allowed(tmp_path: Path) -> None:
    name = "a" + "b_1" * 20 + "cd"
    assert len(name) == 63
    jobs = load_text(tmp_path, f'[jobs.{name}]\nschedule = "every 1h"\nsql = "SELECT 1"\n')
    assert [job.name for job in jobs.declared] == [name]
    text = f'[jobs.{name}x]\nschedule = "every 1h"\nsql = "SELECT 1"\n'
    assert re.match(rf"^jobs\.{name}x: ", load_error(tmp_path, text))


# --- a broken file: the error names the entry and the key ---

JOB = '[jobs.etl]\nschedule = "every 1h"\n'

BROKEN = [
    ("unknown key", JOB + 'command = ["true"]\nretry = 2\n', "jobs.etl.retry"),
    ("bad cron", '[jobs.etl]\nschedule = "61 * * * *"\nsql = "SELECT 1"\n', "jobs.etl.schedule"),
    (
        "four cron fields",
        '[jobs.etl]\nschedule = "* * * *"\nsql = "SELECT 1"\n',
        "jobs.etl.schedule",
    ),
    ("zero interval", '[jobs.etl]\nschedule = "every 0m"\nsql = "SELECT 1"\n', "jobs.etl.schedule"),
    ("two kinds", JOB + 'command = ["true"]\nsql = "SELECT 1"\n', "jobs.etl.sql"),
    ("no kind", JOB + 'description = "nothing to do"\n', "jobs.etl"),
    ("bad name", '[jobs.Daily-ETL]\nschedule = "every 1h"\nsql = "SELECT 1"\n', "jobs.Daily-ETL"),
    ("name from a digit", '[jobs.2fa]\nschedule = "every 1h"\nsql = "SELECT 1"\n', "jobs.2fa"),
    ("no schedule", '[jobs.etl]\nsql = "SELECT 1"\n', "jobs.etl.schedule"),
    ("bad time zone", JOB + 'sql = "SELECT 1"\ntimezone = "Mars/Olympus"\n', "jobs.etl.timezone"),
    ("bad on_start", JOB + 'sql = "SELECT 1"\non_start = "sometimes"\n', "jobs.etl.on_start"),
    ("bad service", JOB + 'sql = "SELECT 1"\nservice = "etl"\n', "jobs.etl.service"),
    ("bad timeout", JOB + 'sql = "SELECT 1"\ntimeout = "10 minutes"\n', "jobs.etl.timeout"),
    ("number timeout", JOB + 'sql = "SELECT 1"\ntimeout = 600\n', "jobs.etl.timeout"),
    ("bad retry_delay", JOB + 'sql = "SELECT 1"\nretry_delay = "0s"\n', "jobs.etl.retry_delay"),
    ("negative retries", JOB + 'sql = "SELECT 1"\nretries = -1\n', "jobs.etl.retries"),
    ("boolean retries", JOB + 'sql = "SELECT 1"\nretries = true\n', "jobs.etl.retries"),
    (
        "ftp heartbeat",
        JOB + 'sql = "SELECT 1"\nheartbeat_url = "ftp://h/x"\n',
        "jobs.etl.heartbeat_url",
    ),
    ("http without url", JOB + 'http = { method = "POST" }\n', "jobs.etl.http.url"),
    ("http bad url", JOB + 'http = { url = "app.example.com/etl" }\n', "jobs.etl.http.url"),
    (
        "http bad method",
        JOB + 'http = { url = "http://h/", method = "FETCH" }\n',
        "jobs.etl.http.method",
    ),
    ("http unknown key", JOB + 'http = { url = "http://h/", body = "x" }\n', "jobs.etl.http.body"),
    (
        "http token in file",
        JOB + 'http = { url = "http://h/", token_env = "s3cr3t!" }\n',
        "jobs.etl.http.token_env",
    ),
    (
        "http header number",
        JOB + 'http = { url = "http://h/", headers = { X-Try = 1 } }\n',
        "jobs.etl.http.headers.X-Try",
    ),
    ("http not a table", JOB + 'http = "http://h/"\n', "jobs.etl.http"),
    ("command a string", JOB + 'command = "make export"\n', "jobs.etl.command"),
    ("command empty", JOB + "command = []\n", "jobs.etl.command"),
    (
        "command env number",
        JOB + 'command = ["true"]\nenv = { RETRIES = 3 }\n',
        "jobs.etl.env.RETRIES",
    ),
    ("command kwargs", JOB + 'command = ["true"]\nkwargs = { a = 1 }\n', "jobs.etl.kwargs"),
    ("python no colon", JOB + 'python = "app.tasks.sync"\n', "jobs.etl.python"),
    ("python cwd", JOB + 'python = "app.tasks:sync"\ncwd = "/srv"\n', "jobs.etl.cwd"),
    ("python kwargs list", JOB + 'python = "app.tasks:sync"\nkwargs = [1]\n', "jobs.etl.kwargs"),
    ("sql empty", JOB + 'sql = "  "\n', "jobs.etl.sql"),
    ("override command", '[jobs.quota]\ncommand = ["true"]\n', "jobs.quota.command"),
    ("override timeout", '[jobs.quota]\ntimeout = "5m"\n', "jobs.quota.timeout"),
    (
        "override to jobs",
        '[jobs.cleanup_tokens]\nservice = "jobs"\n',
        "jobs.cleanup_tokens.service",
    ),
    (
        "override bad cron",
        '[jobs.replenish]\nschedule = "every 5 minutes"\n',
        "jobs.replenish.schedule",
    ),
    ("defaults schedule", '[defaults]\nschedule = "every 1h"\n', "defaults.schedule"),
    ("defaults bad zone", '[defaults]\ntimezone = "Nowhere"\n', "defaults.timezone"),
    ("top-level typo", '[job.etl]\nschedule = "every 1h"\n', "job"),
    ("job not a table", "[jobs]\netl = 3\n", "jobs.etl"),
]


@pytest.mark.parametrize(
    ("text", "named"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_a_broken_entry_is_refused_naming_it(tmp_path: Path, text: str, named: str) -> None:
    message = load_error(tmp_path, text)

    assert message.startswith(f"{named}: "), message
    assert "\n" not in message


def test_a_broken_entry_leaves_the_others_loaded_and_keeps_the_service_it_names(
    tmp_path: Path,
) -> None:
    loaded = load_text(
        tmp_path,
        '[defaults]\nservice = "cleanup"\n'
        + '[jobs.etl]\nschedule = "0 25 * * *"\nsql = "SELECT 1"\n'
        + '[jobs.ping]\nschedule = "every 1m"\nsql = "SELECT 1"\nservice = "quota"\n'
        + '[jobs.typo]\nschedule = "every 1m"\nsql = "SELECT 1"\nservice = "qouta"\n'
        + '[jobs.quota]\nschedule = "every 5 minutes"\n',
    )

    assert [job.name for job in loaded.declared] == ["ping"]
    broken = {entry.name: (entry.service, entry.error.split(":")[0]) for entry in loaded.broken}
    assert broken == {
        "etl": ("cleanup", "jobs.etl.schedule"),  # from [defaults]
        "typo": ("qouta", "jobs.typo.service"),  # as written: which one it meant is unknown
        "quota": (None, "jobs.quota.schedule"),  # a built-in's own service
    }


NO_DATABASE = "postgresql://u@127.0.0.1:9/x"  # settings need one; nothing connects


def test_a_broken_entry_blocks_the_services_that_would_run_its_job(tmp_path: Path) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(
        '[defaults]\nservice = "cleanup"\n'
        '[jobs.etl]\nschedule = "0 25 * * *"\nsql = "SELECT 1"\n'
        '[jobs.lease_recovery]\nschedule = "every 5 minutes"\nservice = "quota"\n',
        encoding="utf-8",
    )
    loaded = registry.load(
        make_settings("postgresql://u@127.0.0.1:9/x", WORKER_JOBS_FILE=str(jobs_file))
    )

    blocked = {s: [p.job for p in loaded.blocking(s)] for s in registry.SERVICES}
    assert blocked == {
        "quota": ["lease_recovery"],  # where the entry moves it
        "cleanup": ["etl"],  # [defaults]'s service
        "replenish": ["lease_recovery"],  # the built-in's own
        "jobs": [],
        "all": ["etl", "lease_recovery"],
    }
    assert loaded.problem_of("etl") is not None and loaded.problem_of("quota") is None
    assert "etl" not in loaded.jobs and "lease_recovery" in loaded.jobs  # as built in

    jobs_file.write_text('[jobs.etl]\nschedule = "every 1h"\nsql = "SELECT 1"\nservice = "etl"\n')
    loaded = registry.load(
        make_settings("postgresql://u@127.0.0.1:9/x", WORKER_JOBS_FILE=str(jobs_file))
    )
    assert all(loaded.blocking(s) for s in registry.SERVICES)  # which one it meant: unknown


def test_invalid_toml_is_refused_naming_the_line(tmp_path: Path) -> None:
    with pytest.raises(JobsFileError, match=r"not valid TOML: .*line 2, column 12"):
        load_text(tmp_path, "[jobs.etl]\nschedule = every 1h\n")


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JobsFileError, match="cannot be read"):
        load(tmp_path / "missing.toml", BUILTINS)


def test_a_misspelt_kind_is_named_as_the_unknown_key(tmp_path: Path) -> None:
    error = load_error(tmp_path, JOB + 'comand = ["make", "export"]\n')
    assert re.match(r"^jobs\.etl\.comand: unknown key", error), error


# --- the same through the CLI ---

CLI_BROKEN = [
    ("unknown key", JOB + 'command = ["true"]\nretry = 2\n', "jobs.etl.retry"),
    ("bad cron", '[jobs.etl]\nschedule = "0 25 * * *"\nsql = "SELECT 1"\n', "jobs.etl.schedule"),
    ("two kinds", JOB + 'command = ["true"]\npython = "app:run"\n', "jobs.etl.python"),
    ("no kind", JOB + 'timeout = "1m"\n', "jobs.etl: no kind"),
    ("bad name", '[jobs.etl-daily]\nschedule = "every 1h"\nsql = "SELECT 1"\n', "jobs.etl-daily"),
    ("invalid TOML", '[jobs.etl]\nschedule = "every 1h"\nsql = SELECT 1\n', "line 3"),
    ("override command", '[jobs.quota]\ncommand = ["true"]\n', "jobs.quota.command"),
]


def nothing_written(conn: db.Conn) -> bool:
    jobs = conn.execute("SELECT count(*) AS n FROM worker_jobs").fetchone()
    runs = conn.execute("SELECT count(*) AS n FROM worker_job_runs").fetchone()
    return jobs == runs == {"n": 0}


@pytest.mark.parametrize("command", ["jobs-check", "the service that runs it"])
@pytest.mark.parametrize(
    ("text", "named"), [case[1:] for case in CLI_BROKEN], ids=[case[0] for case in CLI_BROKEN]
)
def test_the_cli_exits_2_with_one_line_naming_the_file_and_the_entry_and_runs_nothing(
    conn: db.Conn, spawn: Spawn, tmp_path: Path, command: str, text: str, named: str
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(text, encoding="utf-8")
    env = {"DATABASE_URL": conn.info.dsn, "WORKER_JOBS_FILE": str(jobs_file)}
    service = "quota" if "quota" in named else "jobs"

    worker = spawn(command if command == "jobs-check" else service, env=env)
    code = worker.wait(WAIT_S)
    stderr = worker.stderr()

    assert code == 2, stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"worker: error: {jobs_file}: "), line
    assert named in line
    if command == "jobs-check":  # the valid jobs are listed; the broken one is not
        assert not any(x.startswith("etl  ") for x in "".join(worker.raw).splitlines())
    else:
        assert worker.raw == []  # not one log line: it stopped before starting anything
    assert nothing_written(conn)


def worker_in(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m worker ARGS` started in `folder` (its own default worker.toml)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
    for name in ("DATABASE_URL", "WORKER_JOBS_FILE", "SERVICE_TYPE"):
        inherited.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=folder,
        env={**inherited, **BASE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_error_names_the_default_file_that_was_read_not_the_variable(
    tmp_path: Path,
) -> None:
    (tmp_path / "worker.toml").write_text(
        '[jobs.etl]\nschedule = "0 25 * * *"\nsql = "SELECT 1"\n', encoding="utf-8"
    )

    done = worker_in(tmp_path, "jobs", "--once", DATABASE_URL="postgresql://u@127.0.0.1:9/x")

    assert done.returncode == 2
    assert done.stderr.startswith("worker: error: worker.toml: jobs.etl.schedule: "), done.stderr
    assert "WORKER_JOBS_FILE" not in done.stderr


def worker_run(spawn: Spawn, env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run a command to its end: its exit code and what it printed on stderr."""
    worker = spawn(*args, env=env)
    code = worker.wait(WAIT_S)
    return code, worker.stderr()


def test_a_broken_entry_stops_only_the_services_and_runs_of_its_job(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(
        '[jobs.etl]\nschedule = "0 25 * * *"\nsql = "SELECT 1"\n'
        '[jobs.tidy]\nschedule = "every 1h"\nsql = "SELECT 1"\n',
        encoding="utf-8",
    )
    env = {
        "DATABASE_URL": conn.info.dsn,
        "WORKER_JOBS_FILE": str(jobs_file),
        "TAVILY_USAGE_URL": "http://127.0.0.1:9/usage",  # no keys: never called
    }
    refusal = f"worker: error: {jobs_file}: jobs.etl.schedule: "

    for args in (("jobs", "--once"), ("all", "--once"), ("run", "etl")):
        code, stderr = worker_run(spawn, env, *args)
        assert code == 2 and stderr.startswith(refusal), (args, stderr)
    assert nothing_written(conn)
    for args in (("quota", "--once"), ("run", "quota"), ("pause", "quota"), ("resume", "quota")):
        code, stderr = worker_run(spawn, env, *args)
        assert code == 0 and "worker: error" not in stderr, (args, stderr)
    code, stderr = worker_run(spawn, env, "status")
    assert code == 0, stderr
    assert [r["job"] for r in conn.execute("SELECT job FROM worker_jobs")] == ["quota"]


def test_a_missing_token_variable_fails_that_jobs_runs_and_blocks_nothing_else(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(
        '[jobs.ping_app]\nschedule = "every 1m"\n'
        'http = { url = "http://127.0.0.1:9/ping", token_env = "APP_TOKEN_UNSET" }\n'
        '[jobs.tidy]\nschedule = "every 1h"\nsql = "SELECT 1"\n',
        encoding="utf-8",
    )
    env = {"DATABASE_URL": conn.info.dsn, "WORKER_JOBS_FILE": str(jobs_file)}
    named = f"{jobs_file}: jobs.ping_app.http.token_env: the variable APP_TOKEN_UNSET is not set"

    checked = spawn("jobs-check", env=env)
    assert checked.wait(WAIT_S) == 2
    assert checked.stderr() == f"worker: error: {named}\n"
    assert "all valid" not in "".join(checked.raw)

    service = spawn("jobs", "--once", env=env)
    assert service.wait(WAIT_S) == 1  # it ran, and that job's run failed
    assert service.stderr().startswith(f"worker: error: {named}: the job's runs fail")
    [event] = service.events("job_misconfigured")
    assert event["job"] == "ping_app" and named in event["error"]
    runs = {
        row["job"]: (row["status"], row["error"])
        for row in conn.execute("SELECT job, status, error FROM worker_job_runs")
    }
    assert runs["tidy"] == ("success", None)
    assert runs["ping_app"][0] == "failed" and "APP_TOKEN_UNSET" in runs["ping_app"][1]

    for args in (("pause", "tidy"), ("resume", "tidy"), ("run", "tidy")):
        code, stderr = worker_run(spawn, env, *args)
        assert code == 0 and "worker: error" not in stderr, (args, stderr)
    code, stderr = worker_run(spawn, env, "status")
    assert code == 1, stderr  # unhealthy (ping_app failed), never 2: the database answered


def test_a_jobs_file_that_does_not_exist_stops_what_runs_jobs_not_status(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": conn.info.dsn, "WORKER_JOBS_FILE": str(tmp_path / "nope.toml")}
    for args in (("jobs-check",), ("quota", "--once")):
        code, stderr = worker_run(spawn, env, *args)
        [line] = stderr.strip().splitlines()
        assert code == 2 and line.startswith(f"worker: error: {tmp_path / 'nope.toml'}: "), line
        assert "No such file" in line
    assert worker_run(spawn, env, "status") == (0, "")


# --- python targets: imported in a child, never called ---

PYTHON_JOBS = (
    '[jobs.fine]\nschedule = "every 1h"\npython = "demoapp.tasks:nothing"\n'
    '[jobs.module_typo]\nschedule = "every 1h"\npython = "demoapp.taskz:nothing"\n'
    '[jobs.function_typo]\nschedule = "every 1h"\npython = "demoapp.tasks:nothin"\n'
)
ELSEWHERE = '[jobs.elsewhere]\nschedule = "every 1h"\npython = "not_here_app.tasks:sync"\n'


def python_env(tmp_path: Path, text: str, conn: db.Conn | None = None) -> dict[str, str]:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(text, encoding="utf-8")
    env = {"WORKER_JOBS_FILE": str(jobs_file), "PYTHONPATH": str(ROOT / "tests" / "apps")}
    return {**env, **({"DATABASE_URL": conn.info.dsn} if conn is not None else {})}


def test_jobs_check_imports_each_python_target_and_names_a_missing_module_or_function(
    spawn: Spawn, tmp_path: Path
) -> None:
    env = python_env(tmp_path, PYTHON_JOBS + ELSEWHERE)

    code, stderr = worker_run(spawn, env, "jobs-check")
    assert code == 2
    errors = sorted(stderr.strip().splitlines())
    assert len(errors) == 2, errors
    assert "jobs.function_typo.python: demoapp.tasks:nothin: " in errors[0]
    assert "demoapp.tasks has no attribute nothin" in errors[0]
    assert "jobs.module_typo.python: demoapp.taskz:nothing: " in errors[1]
    assert "No module named 'demoapp.taskz'" in errors[1]

    code, stderr = worker_run(spawn, env, "jobs-check", "--import")
    assert code == 2
    assert len(stderr.strip().splitlines()) == 3  # the app not importable here: an error too
    assert "jobs.elsewhere.python: not_here_app.tasks:sync: " in stderr


def test_jobs_check_notes_a_python_job_whose_app_is_not_importable_here(
    spawn: Spawn, tmp_path: Path
) -> None:
    env = python_env(tmp_path, ELSEWHERE)

    worker = spawn("jobs-check", env=env)
    assert worker.wait(WAIT_S) == 0, worker.stderr()
    out = "".join(worker.raw)
    assert "not imported (their package is not importable from " in out
    assert "): elsewhere; jobs-check --import makes that an error" in out


def test_a_dry_run_imports_a_python_target_and_fails_a_missing_one(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    env = python_env(tmp_path, PYTHON_JOBS, conn)

    worker = spawn("jobs", "--once", "--dry-run", env=env)
    assert worker.wait(WAIT_S) == 1
    finished = {e["job"]: e for e in worker.events("job_finished")}
    assert {job: e["status"] for job, e in finished.items()} == {
        "fine": "success",
        "module_typo": "failed",
        "function_typo": "failed",
    }
    errors = {e["job"]: e["error"] for e in worker.events("declared_job_finished")}
    assert errors == {
        "module_typo": "ModuleNotFoundError: No module named 'demoapp.taskz'",
        "function_typo": "demoapp.tasks has no attribute nothin",
    }
    assert conn.execute("SELECT count(*) AS n FROM worker_job_runs").fetchone() == {"n": 0}


def test_descriptions_are_shown_by_jobs_check_and_status_json(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(
        '[jobs.tidy]\nschedule = "every 1h"\nsql = "SELECT 1"\ndescription = "tidy the app"\n',
        encoding="utf-8",
    )
    env = {"DATABASE_URL": conn.info.dsn, "WORKER_JOBS_FILE": str(jobs_file)}

    checked = spawn("jobs-check", env=env)
    assert checked.wait(WAIT_S) == 0
    lines = "".join(checked.raw).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("tidy  [sql]"))
    assert lines[at + 1] == "    tidy the app"
    assert worker_run(spawn, env, "jobs", "--once")[0] == 0
    status = spawn("status", "--json", env=env)
    assert status.wait(WAIT_S) == 0
    status.stderr()
    [job] = json.loads("".join(status.raw))["jobs"]
    assert (job["job"], job["description"]) == ("tidy", "tidy the app")


DUE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d [A-Z+\-0-9]+")


@pytest.mark.parametrize(
    "database",
    [{}, {"DATABASE_URL": "postgresql://app:secret-pw@127.0.0.1:9/appdb"}],
    ids=["no database", "unreachable database"],
)
def test_jobs_check_prints_each_job_and_touches_no_database(
    spawn: Spawn, database: dict[str, str]
) -> None:
    env = {
        "ENVIRONMENT": "production",
        "WORKER_JOBS_FILE": str(EXAMPLE),
        "ETL_TOKEN": "t0ken-for-the-check",
        **database,
    }
    worker = spawn("jobs-check", env=env)
    code = worker.wait(WAIT_S)
    stderr = worker.stderr()
    out = "".join(worker.raw)

    assert code == 0, stderr
    assert stderr == ""
    lines = out.splitlines()
    expected = {
        "daily_etl": "http",
        "auto_scraping": "python",
        "sync_accounts": "python",
        "monitoring_check": "http",
        "nightly_export": "command",
        "refresh_leaderboard": "sql",
        **{name: "builtin" for name in BUILTINS},
    }
    for name, kind in expected.items():
        [at] = [i for i, line in enumerate(lines) if line.startswith(f"{name}  [{kind}]")]
        at += 1 if lines[at + 1].strip().startswith("next: ") else 2  # after a description
        assert lines[at].strip().startswith("next: "), lines[at]
        due = DUE.findall(lines[at])
        assert len(due) == 3, lines[at + 1]
        moments = [datetime.strptime(d.rsplit(" ", 1)[0], "%Y-%m-%d %H:%M") for d in due]
        assert moments == sorted(set(moments)), due
    etl = lines[lines.index(next(x for x in lines if x.startswith("daily_etl  ")))]
    assert "on_start=missed" in etl and "Asia/Shanghai" in etl
    assert lines[lines.index(etl) + 1] == "    Load yesterday's orders into the warehouse"
    assert DUE.findall(lines[lines.index(etl) + 2])[0].endswith("02:00 CST")
    quota = next(x for x in lines if x.startswith("quota  "))
    assert "service=quota" in quota and "30" in quota  # the override's schedule
    assert f"{len(expected)} jobs, all valid" in out
