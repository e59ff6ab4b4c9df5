"""`worker job list|show|create|edit|delete` as users run it: `python -m worker job ...`
subprocesses on a real PostgreSQL, against a handler directory of seed 003's scripts; the
job they create is the row the API creates, and every change is recorded as `cli:<user>`."""

from __future__ import annotations

import getpass
import json
import socket
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.jobruns import WAIT_S, runs_of, wait_until
from tests.support.processes import WorkerProcess
from tests.test_runtime import BROKEN, SYNC
from tests.webtools import TOKEN, client, web_worker
from worker import db

Spawn = Callable[..., WorkerProcess]
ACTOR = f"cli:{getpass.getuser()}"
DECLARED = '[jobs.nightly_sql]\nschedule = "every 1h"\nsql = "SELECT 1"\n'


@dataclass
class Done:
    """What a `worker job ...` child left: its exit code, stdout, human lines, log events."""

    code: int
    stdout: str
    errors: list[str]  # stderr's lines that are not JSON log lines
    events: list[dict[str, Any]]

    def json(self) -> Any:
        return json.loads(self.stdout)


@pytest.fixture
def handlers_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name, text in {"sync": SYNC, "broken": BROKEN}.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


@pytest.fixture
def env(db_url: str, handlers_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The test database, the handlers, and a jobs file declaring one job."""
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(DECLARED, encoding="utf-8")
    return {
        "DATABASE_URL": db_url,
        "WORKER_HANDLERS": str(handlers_dir),
        "WORKER_JOBS_FILE": str(jobs_file),
    }


@pytest.fixture
def job(spawn: Spawn, env: dict[str, str]) -> Callable[..., Done]:
    """Run `python -m worker job ARGS` to its end (with `env`, overridden by `**extra`)."""

    def run(*args: str, **extra: str) -> Done:
        # Its stdout is its answer (a table, JSON): read whole, not as log lines.
        child = spawn("job", *args, env={**env, **extra}, expect_noise=True)
        code = child.wait(WAIT_S)
        stderr = child.stderr()
        assert "Traceback" not in stderr, stderr
        lines = stderr.splitlines()
        events = [json.loads(line) for line in lines if line.startswith("{")]
        errors = [line for line in lines if not line.startswith("{")]
        return Done(code, "".join(child.raw), errors, events)

    return run


def changes(conn: db.Conn, job: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT action, actor, before, after FROM worker_job_changes WHERE job = %s ORDER BY id",
        (job,),
    ).fetchall()


CREATE = (
    "create",
    "sync_crm",
    "--handler",
    "scripts:sync",
    "--kwargs",
    '{"days": 3, "start_date": "today-1d"}',
    "--schedule",
    "0 2 * * *",
    "--timezone",
    "Asia/Shanghai",
    "--timeout",
    "600",
    "--max-attempts",
    "2",
    "--description",
    "nightly CRM pull",
)


def test_create_show_list_edit_and_delete_a_runtime_job(
    job: Callable[..., Done], conn: db.Conn
) -> None:
    assert job("list").stdout == "no runtime jobs: create one with `worker job create`\n"

    created = job(*CREATE)
    assert created.code == 0, created.errors
    assert created.stdout.startswith(
        "created sync_crm: scripts:sync, cron 0 2 * * * Asia/Shanghai, next due "
    )
    [event] = [e for e in created.events if e["event"] == "runtime_job_created"]
    assert (event["job"], event["via"], event["actor"]) == ("sync_crm", "cli", ACTOR)

    shown = job("show", "sync_crm", "--json").json()
    assert (shown["source"], shown["service"], shown["declared_in"]) == ("runtime", "jobs", None)
    assert shown["definition"] == {
        "handler": "scripts:sync",
        "kwargs": {"days": 3, "start_date": "today-1d"},
        "schedule": "cron 0 2 * * * Asia/Shanghai",
        "timezone": "Asia/Shanghai",
        "timeout": 600,
        "max_attempts": 2,
        "description": "nightly CRM pull",
    }
    assert shown["counters"] == {"runs": 0, "successes": 0, "failures": 0}
    # What the job page and GET /api/jobs/JOB show of it.
    assert (shown["spec"]["kind"], shown["spec"]["handler"]) == ("runtime", "scripts:sync")
    assert shown["spec"]["description"] == "nightly CRM pull"
    assert [(c["action"], c["actor"]) for c in shown["changes"]] == [("create", ACTOR)]

    edited = job("edit", "sync_crm", "--kwargs", '{"target": "eu"}', "--schedule", "every 2h")
    assert edited.code == 0, edited.errors
    assert edited.stdout.startswith("updated sync_crm: scripts:sync, every 2h, next due ")
    row = conn.execute("SELECT * FROM worker_jobs WHERE job = 'sync_crm'").fetchone()
    assert row is not None
    assert (row["schedule"], row["max_attempts"]) == ("every 2h", 2)
    assert row["definition"]["kwargs"] == {"target": "eu"}
    assert row["definition"]["timezone"] == "Asia/Shanghai"  # what the edit did not name stays

    listed = job("list")
    assert listed.code == 0
    header, line = listed.stdout.splitlines()
    assert header.split()[:4] == ["JOB", "HANDLER", "SCHEDULE", "PAUSED"]
    assert line.split()[:5] == ["sync_crm", "scripts:sync", "every", "2h", "no"]
    [entry] = job("list", "--json").json()["jobs"]
    assert (entry["job"], entry["schedule"], entry["paused"]) == ("sync_crm", "every 2h", False)
    assert entry["counters"] == {"runs": 0, "successes": 0, "failures": 0}

    human = job("show", "sync_crm").stdout
    assert "source        created at run time\n" in human
    assert 'kwargs        {"target": "eu"}\n' in human
    assert f"update  {ACTOR}  kwargs, schedule\n" in human

    deleted = job("delete", "sync_crm")
    assert (deleted.code, deleted.stdout) == (0, "deleted sync_crm: its run history stays\n")
    assert job("show", "sync_crm").code == 1
    assert [(c["action"], c["actor"]) for c in changes(conn, "sync_crm")] == [
        ("create", ACTOR),
        ("update", ACTOR),
        ("delete", ACTOR),
    ]


def test_the_cli_makes_the_row_the_api_makes_and_the_running_service_runs_it(
    job: Callable[..., Done], spawn: Spawn, env: dict[str, str], conn: db.Conn
) -> None:
    body = {"handler": "scripts:sync", "kwargs": {"days": 3}, "schedule": "manual"}
    with web_worker(spawn, env["DATABASE_URL"], "jobs", WORKER_HTTP_TOKEN=TOKEN, **env) as (
        worker,
        base,
    ):
        worker.wait_for("scheduler_loop_started", WAIT_S)
        with client(base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            assert http.post("/api/jobs", json={"name": "by_api", **body}).status_code == 201
            cli_args = ("--handler", "scripts:sync", "--kwargs", '{"days": 3}')
            assert job("create", "by_cli", *cli_args, "--schedule", "manual").code == 0
            by_api = http.get("/api/jobs/by_api").json()
            by_cli = http.get("/api/jobs/by_cli").json()
            shown = job("show", "by_cli", "--json").json()

            # Then one that runs: the service takes it up within a poll, no restart.
            assert job("create", "ticking", *cli_args, "--schedule", "every 1s").code == 0
            done = wait_until(lambda: [r for r in runs_of(conn, "ticking") if r["finished_at"]])
    assert {**by_cli, "job": "by_api"} == by_api
    assert {k: v for k, v in shown.items() if k != "changes"} == by_cli
    [api_change], [cli_change] = changes(conn, "by_api"), changes(conn, "by_cli")
    assert (api_change["actor"], cli_change["actor"]) == ("token", ACTOR)
    assert api_change["after"] == cli_change["after"] == by_cli["definition"]
    assert done[0]["status"] == "success" and done[0]["result"]["days"] == 3


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--kwargs", '{"days": "seven"}'), "days"),
        (("--kwargs", '{"weeks": 1}'), "weeks"),
        (("--kwargs", '{"start_date": "yesterday-ish"}'), "start_date"),
        (("--kwargs", "{days: 3}"), "kwargs"),
        (("--kwargs", "[3]"), "kwargs"),
        (("--handler", "scripts:broken"), "handler"),
        (("--handler", "scripts:nothing"), "handler"),
        (("--schedule", "every fortnight"), "schedule"),
        (("--at", "next tuesday"), "at"),
        (("--timezone", "Mars/Olympus"), "timezone"),
        (("--timeout", "0"), "timeout"),
        (("--max-attempts", "11"), "max_attempts"),
        (("--description", "x" * 501), "description"),
    ],
)
def test_a_bad_definition_exits_2_naming_the_field_or_parameter(
    job: Callable[..., Done], conn: db.Conn, options: tuple[str, ...], named: str
) -> None:
    given = dict(zip(options[::2], options[1::2], strict=True))
    chosen = {"--handler": "scripts:sync", **({} if "--at" in given else {"--schedule": "manual"})}
    done = job("create", "bad_one", *[x for pair in {**chosen, **given}.items() for x in pair])

    assert done.code == 2, done
    assert len(done.errors) == 1 and done.errors[0].startswith(f"worker: error: {named}: ")
    assert conn.execute("SELECT count(*) AS n FROM worker_job_changes").fetchone() == {"n": 0}
    assert conn.execute("SELECT job FROM worker_jobs").fetchall() == []


def test_a_bad_name_exits_2_naming_it(job: Callable[..., Done]) -> None:
    done = job("create", "Bad-Name", "--handler", "scripts:sync", "--schedule", "manual")
    assert (done.code, done.errors) == (
        2,
        ["worker: error: name: lower-case letters, digits and _, starting with a letter"],
    )


def test_an_unknown_handler_names_the_handlers_that_can_run(job: Callable[..., Done]) -> None:
    done = job("create", "x", "--handler", "scripts:nothing", "--schedule", "manual")
    assert done.errors == [
        "worker: error: handler: no handler named 'scripts:nothing' "
        "(handlers that can run: scripts:sync)"
    ]


def test_an_edit_is_checked_whole_against_the_stored_definition(
    job: Callable[..., Done], conn: db.Conn
) -> None:
    assert job("create", "kept", "--handler", "scripts:sync", "--schedule", "manual").code == 0
    bad = job("edit", "kept", "--kwargs", '{"days": "seven"}')
    assert (bad.code, bad.errors) == (2, ["worker: error: days: expected int, got a string"])
    empty = job("edit", "kept")
    assert empty.code == 2 and empty.errors[0].startswith("worker: error: edit: nothing to change")
    assert [c["action"] for c in changes(conn, "kept")] == ["create"]


def test_options_argparse_refuses_exit_2_with_the_actions_usage(
    job: Callable[..., Done],
) -> None:
    both = job("create", "x", "--handler", "scripts:sync", "--schedule", "manual", "--at", "now")
    assert both.code == 2
    assert both.errors[0].startswith("usage: worker job create [-h] --handler H")
    assert both.errors[-1].endswith("argument --at: not allowed with argument --schedule")
    neither = job("create", "x", "--handler", "scripts:sync")
    assert neither.code == 2 and "one of the arguments --schedule --at is required" in str(neither)
    typo = job("edit", "x", "--timeout", "ten")
    assert typo.code == 2 and "argument --timeout: invalid int value: 'ten'" in typo.errors[-1]
    unknown = job("delete", "x", "--force")
    assert unknown.code == 2 and unknown.errors[0].startswith("usage: worker job delete")
    assert unknown.errors[-1] == "worker job delete: error: unrecognized arguments: --force"


def test_a_name_taken_by_any_job_exits_1(job: Callable[..., Done], conn: db.Conn) -> None:
    options = ("--handler", "scripts:sync", "--schedule", "manual")
    assert job("create", "twice", *options).code == 0
    again = job("create", "twice", *options)
    assert (again.code, again.errors) == (1, ["worker: error: a job named 'twice' exists"])
    # A built-in and a jobs-file job, registered by no process yet: still taken.
    built_in = job("create", "quota", *options)
    assert (built_in.code, built_in.errors) == (
        1,
        ["worker: error: a job named 'quota' exists (built in)"],
    )
    declared = job("create", "nightly_sql", *options)
    assert declared.code == 1 and "exists (declared in " in declared.errors[0]
    assert conn.execute("SELECT job FROM worker_jobs").fetchall() == [{"job": "twice"}]


def test_built_in_and_jobs_file_jobs_are_shown_never_edited_or_deleted(
    job: Callable[..., Done], spawn: Spawn, env: dict[str, str], conn: db.Conn
) -> None:
    registered = spawn("jobs", "--once", env=env)  # puts the jobs file's job in the ledger
    assert registered.wait(WAIT_S) == 0
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at)"
        " VALUES ('quota', 'quota', 'every 1h', now() + interval '1 hour')"
    )
    jobs_file = env["WORKER_JOBS_FILE"]

    shown = job("show", "nightly_sql", "--json").json()
    assert (shown["source"], shown["declared_in"], shown["definition"]) == (
        "file",
        jobs_file,
        None,
    )
    assert f"source        the jobs file {jobs_file}\n" in job("show", "nightly_sql").stdout
    assert "source        built in\n" in job("show", "quota").stdout
    for action in ("delete", "edit"):
        extra = ("--schedule", "every 2h") if action == "edit" else ()
        done_word = "deleted" if action == "delete" else "edited"
        by_file = job(action, "nightly_sql", *extra)
        assert by_file.code == 1
        assert by_file.errors == [
            f"worker: error: nightly_sql is declared in {jobs_file}: it can be paused, resumed "
            f"and run, not {done_word} here; change it where it is declared"
        ]
        built_in = job(action, "quota", *extra)
        assert built_in.code == 1
        assert "quota is declared in the worker itself (built in)" in built_in.errors[0]
    rows = conn.execute("SELECT job, schedule FROM worker_jobs ORDER BY job").fetchall()
    assert rows == [
        {"job": "nightly_sql", "schedule": "every 1h"},
        {"job": "quota", "schedule": "every 1h"},
    ]
    assert changes(conn, "quota") == changes(conn, "nightly_sql") == []


def test_an_unknown_job_exits_1(job: Callable[..., Done]) -> None:
    for args in (("show", "nope"), ("delete", "nope"), ("edit", "nope", "--timeout", "5")):
        done = job(*args)
        assert done.code == 1, args
        assert done.errors == [
            "worker: error: no job 'nope': `worker job list` shows the runtime jobs, "
            "`worker status` all"
        ], args
    # A built-in job no process has registered yet is known, and said so.
    unregistered = job("show", "quota")
    assert unregistered.code == 1 and "not in the ledger yet" in unregistered.errors[0]


def test_create_and_edit_without_handlers_say_so(job: Callable[..., Done]) -> None:
    create = job(
        "create", "x", "--handler", "scripts:sync", "--schedule", "manual", WORKER_HANDLERS=""
    )
    edit = job("edit", "x", "--timeout", "5", WORKER_HANDLERS="")
    for done in (create, edit):
        assert done.code == 2
        assert done.errors[0].startswith("worker: error: WORKER_HANDLERS is not set")
    assert job("list", WORKER_HANDLERS="").code == 0  # reading needs no catalogue


def test_list_reads_every_page_of_runtime_jobs(job: Callable[..., Done], conn: db.Conn) -> None:
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at, source, definition)"
        " SELECT 'job_' || lpad(n::text, 4, '0'), 'jobs', 'manual', '9999-12-31 00:00:00+00',"
        "        'runtime', jsonb_build_object('handler', 'scripts:sync', 'kwargs', '{}'::jsonb,"
        "        'schedule', 'manual')"
        "   FROM generate_series(1, 1203) AS n"
    )
    listed = job("list", "--json").json()["jobs"]
    assert [entry["job"] for entry in listed] == [f"job_{n:04d}" for n in range(1, 1204)]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_database_is_one_event_and_one_line_exit_1(
    job: Callable[..., Done],
) -> None:
    url = f"postgresql://app:s3cret-pw@127.0.0.1:{closed_port()}/app"
    for args in (("list",), ("show", "x"), ("delete", "x")):
        done = job(*args, DATABASE_URL=url, DB_CONNECT_TIMEOUT_SECONDS="1")
        assert done.code == 1, args
        assert [e["event"] for e in done.events if e["level"] == "error"] == [
            "database_unreachable"
        ]
        assert len(done.errors) == 1 and "db_host=127.0.0.1" in done.errors[0], args
        assert "s3cret-pw" not in done.stdout + "".join(done.errors), args
