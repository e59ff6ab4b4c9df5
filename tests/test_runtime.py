"""Runtime jobs end to end: created, edited, run with parameters, watched, cancelled and
deleted through the API of a running `jobs` service, on a real PostgreSQL, against a
handler directory of seed 003's scripts."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.jobruns import WAIT_S, job_row, runs_of, stop, wait_until
from tests.support.processes import WorkerProcess
from tests.webtools import TOKEN, client, web_worker
from worker import db

Spawn = Callable[..., WorkerProcess]
BEARER = {"Authorization": f"Bearer {TOKEN}"}

# Seed 003's parameterised template, as its users ship it.
SYNC = """
from datetime import datetime

from worker import task

TASK_INFO = {"name": "Sync accounts", "description": "Pull accounts from the CRM."}
task_log = task.log


async def run(
    days: int = 7,
    target: str = "all",
    start_date: datetime | None = None,
    options: dict | None = None,
) -> dict:
    task_log(f"syncing {days} days of {target} from {start_date}")
    return {"days": days, "target": target, "start": str(start_date)}
"""

# A long run that reports its progress and honours a stop.
SLOW = """
import time

from worker import task


def run(steps: int = 30) -> dict:
    for step in range(steps):
        if task.should_stop():
            task.log("stopping early")
            return {"done": step}
        task.log(f"step {step}")
        task.progress(step + 1, steps)
        time.sleep(0.5)
    return {"done": steps}
"""

# One that ignores stops: only the signal can end it.
STUBBORN = """
import os
import time


def run() -> dict:
    print(f"pid {os.getpid()}", flush=True)
    time.sleep(600)
    return {}
"""

BROKEN = "import no_such_module_anywhere\n\ndef run():\n    return {}\n"


@pytest.fixture
def handlers_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    for name, text in {"sync": SYNC, "slow": SLOW, "stubborn": STUBBORN, "broken": BROKEN}.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


def runtime_env(handlers_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A `jobs` service's environment: the handler directory, the API token, and an empty
    jobs file (runtime jobs only)."""
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text("", encoding="utf-8")
    return {
        "WORKER_HANDLERS": str(handlers_dir),
        "WORKER_HTTP_TOKEN": TOKEN,
        "WORKER_JOBS_FILE": str(jobs_file),
        **extra,
    }


@pytest.fixture
def api(
    spawn: Spawn, db_url: str, handlers_dir: Path, tmp_path: Path
) -> Iterator[tuple[httpx.Client, WorkerProcess]]:
    """A running `jobs` service with the handler directory, its API as a Bearer client."""
    env = runtime_env(handlers_dir, tmp_path, SHUTDOWN_GRACE_SECONDS="10")
    with web_worker(spawn, db_url, "jobs", **env) as (worker, base):
        worker.wait_for("scheduler_loop_started", WAIT_S)
        with client(base, headers=BEARER) as http:
            yield http, worker


def create(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/jobs", json=body)


def start_manual(http: httpx.Client, conn: db.Conn, name: str, handler: str) -> int:
    """Create a manual job of `handler` and ask for a run: the run's id once it started."""
    assert create(http, name=name, handler=handler, schedule="manual").status_code == 201
    assert http.post(f"/api/jobs/{name}/run").status_code == 202
    return int(wait_until(lambda: runs_of(conn, name))[0]["id"])


def finished_runs(conn: db.Conn, job: str) -> list[dict[str, Any]]:
    return [r for r in runs_of(conn, job) if r["status"] != "running"]


def test_the_catalogue_lists_each_handler_with_its_parameters_and_import_errors(
    api: tuple[httpx.Client, WorkerProcess],
) -> None:
    http, _ = api
    listed = {h["name"]: h for h in http.get("/api/handlers").raise_for_status().json()}
    assert set(listed) == {"scripts:sync", "scripts:slow", "scripts:stubborn", "scripts:broken"}
    sync = listed["scripts:sync"]
    assert (sync["title"], sync["description"], sync["error"]) == (
        "Sync accounts",
        "Pull accounts from the CRM.",
        None,
    )
    assert [(p["name"], p["default"], p["required"]) for p in sync["parameters"]] == [
        ("days", 7, False),
        ("target", "all", False),
        ("start_date", None, False),
        ("options", None, False),
    ]
    assert "no_such_module_anywhere" in listed["scripts:broken"]["error"]


def test_a_job_created_through_the_api_runs_in_the_running_service_then_edits_apply(
    api: tuple[httpx.Client, WorkerProcess], conn: db.Conn
) -> None:
    http, _ = api
    made = create(
        http,
        name="sync_crm",
        handler="scripts:sync",
        kwargs={"days": 3, "start_date": "today-1d"},
        schedule="every 2s",
        description="nightly CRM pull",
    )
    assert made.status_code == 201, made.text
    assert made.json()["source"] == "runtime"
    assert made.json()["definition"]["kwargs"] == {"days": 3, "start_date": "today-1d"}

    first = wait_until(lambda: finished_runs(conn, "sync_crm"), WAIT_S)[0]
    assert first["status"] == "success", first
    assert first["kwargs"] == {"days": 3, "start_date": "today-1d"}  # as stored
    assert first["result"]["days"] == 3 and first["result"]["start"].endswith("00:00:00+00:00")
    assert "syncing 3 days of all" in first["output"]

    edited = http.patch(
        "/api/jobs/sync_crm", json={"kwargs": {"target": "eu"}, "schedule": "manual"}
    )
    assert edited.status_code == 200, edited.text
    assert job_row(conn, "sync_crm")["schedule"] == "manual"
    settled = len(wait_until(lambda: finished_runs(conn, "sync_crm"), WAIT_S))
    time.sleep(5)  # a manual job never runs unscheduled
    assert len(finished_runs(conn, "sync_crm")) <= settled + 1  # one may have been claimed

    ran = http.post("/api/jobs/sync_crm/run", json={"kwargs": {"days": 30}})
    assert ran.status_code == 202, ran.text
    once = wait_until(
        lambda: [r for r in finished_runs(conn, "sync_crm") if r["kwargs"] == {"days": 30}]
    )[0]
    assert (once["trigger"], once["status"], once["result"]["days"]) == ("manual", "success", 30)

    changes = http.get("/api/jobs/sync_crm/changes").json()["changes"]
    assert [c["action"] for c in changes] == ["update", "create"]
    assert changes[0]["actor"] == "token"
    counters = http.get("/api/jobs/sync_crm").json()["counters"]
    assert counters["runs"] >= 2 and counters["successes"] == counters["runs"]

    assert http.delete("/api/jobs/sync_crm").status_code == 204
    assert http.get("/api/jobs/sync_crm").status_code == 404
    assert runs_of(conn, "sync_crm")  # the history stays
    actions = [c["action"] for c in http.get("/api/jobs/sync_crm/changes").json()["changes"]]
    assert actions[0] == "delete"


def test_an_at_job_runs_once_and_then_stays_finished(
    api: tuple[httpx.Client, WorkerProcess], conn: db.Conn
) -> None:
    http, _ = api
    at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 2))
    made = create(http, name="once_only", handler="scripts:sync", at=at)
    assert made.status_code == 201, made.text
    wait_until(lambda: finished_runs(conn, "once_only"))
    time.sleep(4)
    assert len(runs_of(conn, "once_only")) == 1
    assert http.get("/api/jobs/once_only").json()["next_due_at"] is None


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"kwargs": {"days": "seven"}}, "days"),
        ({"kwargs": {"weeks": 1}}, "weeks"),
        ({"kwargs": {"start_date": "yesterday-ish"}}, "start_date"),
        ({"handler": "scripts:broken"}, "handler"),
        ({"handler": "scripts:nothing"}, "handler"),
        ({"schedule": "every fortnight"}, "schedule"),
        ({"schedule": "every 1h", "at": "2030-01-01T00:00:00Z"}, "schedule"),
        ({"command": "rm -rf /"}, "command"),
        ({"timeout": 0}, "timeout"),
        ({"description": "nightly\u0000sync"}, "description"),
        ({"kwargs": {"label\u0000": "x"}}, "kwargs"),
    ],
)
def test_a_bad_definition_is_400_naming_the_field_or_parameter(
    api: tuple[httpx.Client, WorkerProcess], body: dict[str, Any], named: str
) -> None:
    http, _ = api
    full = {"name": "bad_one", "handler": "scripts:sync", "schedule": "manual", **body}
    answer = create(http, **full)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(f"{named}:"), answer.json()


def ledger_job(
    conn: db.Conn,
    job: str,
    service: str = "jobs",
    declared_in: str | None = None,
    *,
    retired: bool = False,
) -> None:
    """A job's ledger row as another deploy's process left it, due in an hour: a jobs-file
    job when `declared_in` is given, else a built-in one."""
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at, source, declared_in,"
        " retired_at) VALUES (%s, %s, 'every 1h', now() + interval '1 hour', %s, %s,"
        " CASE WHEN %s THEN now() END)",
        (job, service, "system" if declared_in is None else "file", declared_in, retired),
    )


def test_system_jobs_are_not_deleted_or_redefined_and_names_are_unique(
    api: tuple[httpx.Client, WorkerProcess], conn: db.Conn
) -> None:
    http, _ = api
    ledger_job(conn, "quota", "quota")
    denied = http.delete("/api/jobs/quota")
    assert denied.status_code == 403 and "built in" in denied.json()["error"]
    assert http.patch("/api/jobs/quota", json={"schedule": "every 2h"}).status_code == 403
    taken = create(http, name="quota", handler="scripts:sync", schedule="manual")
    assert taken.status_code == 409
    paused = http.post("/api/jobs/quota/pause")
    assert paused.status_code == 200  # pausing a system job is allowed, and recorded
    assert http.get("/api/jobs/quota/changes").json()["changes"][0]["action"] == "pause"
    assert http.post("/api/jobs/quota/pause").status_code == 200  # already paused
    actions = [c["action"] for c in http.get("/api/jobs/quota/changes").json()["changes"]]
    assert actions == ["pause"]  # a pause that changed nothing is not recorded


def test_run_now_of_a_retired_job_is_refused_as_no_process_would_start_it(
    api: tuple[httpx.Client, WorkerProcess], conn: db.Conn
) -> None:
    http, _ = api
    ledger_job(conn, "gone", declared_in="worker.toml", retired=True)
    refused = http.post("/api/jobs/gone/run")
    assert refused.status_code == 409
    assert refused.json()["error"].startswith("gone is retired: no live process of the jobs")
    assert job_row(conn, "gone")["run_requested_at"] is None


def test_run_now_of_a_file_job_no_live_process_runs_is_refused(
    api: tuple[httpx.Client, WorkerProcess], conn: db.Conn
) -> None:
    # Declared in a jobs file the live processes did not start with (added since, say):
    # the service is served, the job by none of its processes.
    http, _ = api
    ledger_job(conn, "added_since", declared_in="worker.toml")
    refused = http.post("/api/jobs/added_since/run")
    assert refused.status_code == 409
    assert refused.json()["error"] == (
        "no live process of the jobs service runs added_since: the 1 live started without it"
        " in their jobs file; restart one with it declared, then ask again"
    )
    assert job_row(conn, "added_since")["run_requested_at"] is None
    [process] = http.get("/api/processes").json()["processes"]
    assert "added_since" not in process["jobs"]


def test_run_now_and_edit_refusals_name_what_is_wrong(
    api: tuple[httpx.Client, WorkerProcess], conn: db.Conn
) -> None:
    http, _ = api
    ledger_job(conn, "nightly_file", declared_in="/srv/app/worker.toml")
    ledger_job(conn, "weekly_report", "reports")
    edit = http.patch("/api/jobs/nightly_file", json={"schedule": "every 2h"})
    assert edit.status_code == 403
    assert edit.json()["error"].startswith("nightly_file is declared in /srv/app/worker.toml:")
    with_kwargs = http.post("/api/jobs/nightly_file/run", json={"kwargs": {"days": 1}})
    assert with_kwargs.status_code == 400
    assert with_kwargs.json()["error"].startswith("kwargs: nightly_file is not a runtime job")
    unknown = http.post("/api/jobs/nightly_file/run", json={"when": "now"})
    assert unknown.status_code == 400 and unknown.json()["error"].startswith("when:")
    unserved = http.post("/api/jobs/weekly_report/run")
    assert unserved.status_code == 409
    assert unserved.json()["error"] == (
        "no live process of the reports service serves this job: start `worker reports`"
        " (or `worker all`), then ask again"
    )

    made = create(http, name="crm_sync", handler="scripts:sync", schedule="manual")
    assert made.status_code == 201, made.text
    bad = http.post("/api/jobs/crm_sync/run", json={"kwargs": {"days": "seven"}})
    assert bad.status_code == 400 and bad.json()["error"].startswith("days:"), bad.json()
    json_nan = {
        "content": '{"kwargs": {"days": NaN}}',
        "headers": {"Content-Type": "application/json"},
    }
    unstorable = http.post("/api/jobs/crm_sync/run", **json_nan)  # Python's json reads NaN
    assert unstorable.status_code == 400
    assert unstorable.json()["error"].startswith("kwargs: holds a NUL character"), unstorable.text
    # Held by a lease elsewhere, a request waits; a second one with parameters is refused.
    conn.execute(
        "UPDATE worker_jobs SET lease_owner = 'peer:1', lease_until = now() + interval '1 minute'"
        " WHERE job = 'crm_sync'"
    )
    assert http.post("/api/jobs/crm_sync/run", json={"kwargs": {"days": 1}}).status_code == 202
    second = http.post("/api/jobs/crm_sync/run", json={"kwargs": {"days": 2}})
    assert second.status_code == 409
    assert second.json()["error"] == "a run of crm_sync is already requested: wait for it to start"
    assert job_row(conn, "crm_sync")["run_requested_kwargs"] == {"days": 1}


def test_a_running_run_shows_progress_and_output_then_cancel_ends_it(
    api: tuple[httpx.Client, WorkerProcess], conn: db.Conn
) -> None:
    http, _ = api
    run_id = start_manual(http, conn, "long_one", "scripts:slow")

    def progressed(at_least: int) -> dict[str, Any] | None:
        run = http.get(f"/api/runs/{run_id}").json()
        return run if (run["progress_done"] or 0) >= at_least else None

    early = wait_until(lambda: progressed(2))
    later = wait_until(lambda: progressed(early["progress_done"] + 2))
    assert later["status"] == "running" and later["progress_total"] == 30
    assert len(later["output"]) > len(early["output"]) and "step 1" in later["output"]

    cancelled = http.post(f"/api/runs/{run_id}/cancel")
    assert cancelled.status_code == 202
    ended = wait_until(lambda: http.get(f"/api/runs/{run_id}").json()["status"] != "running")
    assert ended is True
    final = http.get(f"/api/runs/{run_id}").json()
    assert final["status"] == "cancelled", final
    assert http.post(f"/api/runs/{run_id}/cancel").status_code == 409  # it has ended


def test_cancel_ends_a_handler_that_ignores_it_and_its_child_is_gone(
    api: tuple[httpx.Client, WorkerProcess], conn: db.Conn
) -> None:
    http, _ = api
    run_id = start_manual(http, conn, "stuck", "scripts:stubborn")
    output = wait_until(lambda: http.get(f"/api/runs/{run_id}").json()["output"])
    pid = int(output.split("pid ")[1].split()[0])
    assert http.post(f"/api/runs/{run_id}/cancel").status_code == 202
    wait_until(lambda: http.get(f"/api/runs/{run_id}").json()["status"] == "cancelled")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_two_replicas_make_one_run_per_occurrence_of_a_runtime_job(
    spawn: Spawn, db_url: str, conn: db.Conn, handlers_dir: Path, tmp_path: Path
) -> None:
    env = runtime_env(handlers_dir, tmp_path)
    with web_worker(spawn, db_url, "jobs", **env) as (first, base):
        second = spawn("jobs", env={"DATABASE_URL": db_url, **env})
        second.wait_for("scheduler_loop_started", WAIT_S)
        with client(base, headers=BEARER) as http:
            made = create(http, name="shared", handler="scripts:sync", schedule="every 1s")
            assert made.status_code == 201
            wait_until(lambda: len(finished_runs(conn, "shared")) >= 6, WAIT_S)
        assert stop(second) == 0
        assert stop(first) == 0
    runs = runs_of(conn, "shared")
    occurrences = [r["scheduled_for"] for r in runs if r["scheduled_for"] is not None]
    assert len(occurrences) >= 6 and len(occurrences) == len(set(occurrences))


def test_the_job_list_pages_by_service_and_name(
    api: tuple[httpx.Client, WorkerProcess],
) -> None:
    http, _ = api
    for n in range(5):
        assert create(http, name=f"page_{n}", handler="scripts:sync", schedule="manual").is_success
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": "2", **({"after": after} if after else {})}
        page = http.get("/api/jobs", params=params).raise_for_status().json()
        assert len(page["jobs"]) <= 2
        seen += [job["job"] for job in page["jobs"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [f"page_{n}" for n in range(5)]
    assert len(http.get("/api/jobs").json()["jobs"]) == 5  # without a limit: every job
    assert http.get("/api/jobs", params={"after": "nonsense"}).status_code == 400
