"""Operating the worker: pause and resume across replicas, and every job in one `all` process."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from tests.conftest import make_settings
from tests.support.fakes import FakeServer, Reply, Request, serving, usage_body
from tests.support.processes import WorkerProcess
from worker import db
from worker.daemon import Daemon
from worker.registry import JOBS, SERVICES

Spawn = Callable[..., WorkerProcess]


def fake_apis(request: Request) -> Reply:
    """Tavily's usage endpoint and the stock producer, on one loopback server."""
    if request.path == "/usage":
        return Reply(200, usage_body(15000, 500))
    order = request.json()
    return Reply(200, {"items": [f"item-{i}" for i in range(int(order["quantity"]))]})


@pytest.fixture
def apis() -> Iterator[FakeServer]:
    with serving(fake_apis) as server:
        yield server


def api_env(server: FakeServer) -> dict[str, str]:
    return {
        "TAVILY_USAGE_URL": f"{server.url}/usage",
        "REPLENISH_API_URL": f"{server.url}/produce",
    }


def cli(spawn: Spawn, db_url: str, *args: str, **env: str) -> tuple[int, WorkerProcess]:
    process = spawn(*args, env={"DATABASE_URL": db_url, **env})
    return process.wait(), process


def run_count(conn: db.Conn, job: str) -> int:
    row = conn.execute("SELECT count(*) AS n FROM worker_job_runs WHERE job = %s", (job,))
    found = row.fetchone()
    assert found is not None
    return int(found["n"])


def add_key(conn: db.Conn) -> None:
    conn.execute("INSERT INTO tavily_api_keys (api_key, plan_limit) VALUES ('tvly-op-key-1', 10)")


def test_pause_skips_the_next_run_on_every_replica_and_resume_restores_it(
    spawn: Spawn, conn: db.Conn, db_url: str, apis: FakeServer
) -> None:
    add_key(conn)
    settings = make_settings(db_url, **api_env(apis))
    replicas = [Daemon(settings, SERVICES["all"]), Daemon(settings, SERVICES["all"])]
    quota = JOBS["quota"]
    assert replicas[0].run_job(quota) == "success"

    code, process = cli(spawn, db_url, "pause", "quota")
    assert code == 0
    process.wait_for("job_paused_set", job="quota")
    assert process.stderr().startswith("paused quota: no replica starts it")
    with structlog.testing.capture_logs() as logs:
        skipped = [replica.run_job(quota) for replica in replicas]
        others = {name: replicas[0].run_job(spec) for name, spec in JOBS.items()}
    assert skipped == ["paused", "paused"]
    assert [e["job"] for e in logs if e["event"] == "job_paused"] == ["quota"] * 3
    assert others.pop("quota") == "paused"
    assert "paused" not in others.values()  # the other jobs ran
    assert all(run_count(conn, name) == 1 for name in others)
    assert run_count(conn, "quota") == 1 and len(apis.received("GET", "/usage")) == 1

    code, process = cli(spawn, db_url, "status", "--json", "--service", "quota")
    assert json.loads("".join(process.raw))["jobs"][0]["paused"] is True

    code, process = cli(spawn, db_url, "resume", "quota")
    assert code == 0
    assert process.stderr().startswith("resumed quota")
    assert replicas[1].run_job(quota) == "success"
    assert run_count(conn, "quota") == 2 and len(apis.received("GET", "/usage")) == 2
    paused = conn.execute("SELECT paused, paused_at FROM worker_jobs WHERE job = 'quota'")
    assert paused.fetchone() == {"paused": False, "paused_at": None}
    for replica in replicas:
        replica.http.close()


def test_a_paused_job_is_skipped_by_a_once_run_of_all(
    spawn: Spawn, conn: db.Conn, db_url: str, apis: FakeServer
) -> None:
    code, paused = cli(spawn, db_url, "pause", "quota")
    assert code == 0
    assert paused.stderr().startswith("paused quota")

    code, process = cli(spawn, db_url, "all", "--once", **api_env(apis))

    assert code == 0
    assert [e["job"] for e in process.events("job_paused")] == ["quota"]
    finished = {e["job"] for e in process.events("job_finished")}
    assert finished == set(JOBS) - {"quota"}
    assert run_count(conn, "quota") == 0


@pytest.mark.parametrize("verb", ["pause", "resume"])
def test_an_unknown_job_exits_2_listing_the_known_ones(
    spawn: Spawn, conn: db.Conn, db_url: str, verb: str
) -> None:
    code, process = cli(spawn, db_url, verb, "quotas")

    err = process.stderr()
    assert code == 2
    assert "JOB: unknown job 'quotas'; known jobs: " in err
    assert all(name in err for name in JOBS)
    row = conn.execute("SELECT count(*) AS n FROM worker_jobs").fetchone()
    assert row == {"n": 0}


def test_all_runs_every_job_at_start_in_one_process_and_stops_on_sigterm(
    spawn: Spawn, conn: db.Conn, db_url: str, apis: FakeServer
) -> None:
    process = spawn("all", env={"DATABASE_URL": db_url, **api_env(apis)})
    started = process.wait_for("worker_starting")
    for name in JOBS:
        process.wait_for("job_finished", job=name)
    process.wait_for("scheduler_loop_started")
    process.signal(signal.SIGTERM)

    assert process.wait() == 0
    assert started["jobs"] == list(JOBS)
    assert process.events("worker_stopped")[0]["signal"] == "SIGTERM"
    rows: list[dict[str, Any]] = conn.execute(
        "SELECT job, trigger, pid FROM worker_job_runs ORDER BY id"
    ).fetchall()
    assert sorted(r["job"] for r in rows) == sorted(JOBS)  # each once
    assert {(r["trigger"], r["pid"]) for r in rows} == {("startup", process.proc.pid)}
    scheduled = {e["job"] for e in process.events("job_scheduled")}
    assert scheduled == set(JOBS)
