"""The HTTP endpoint over real HTTP, against `python -m worker quota` as a subprocess."""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings
from tests.support.processes import BASE_ENV, ROOT
from tests.test_daemon import wait_until
from tests.webtools import TOKEN, Forwarder, Spawn, client, web_worker
from worker import db
from worker.daemon import STALLED_AFTER_S, Daemon
from worker.registry import SERVICES
from worker.settings import ConfigError

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def basic(password: str, user: str = "admin") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def manual_runs(conn: db.Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, status FROM worker_job_runs WHERE trigger = 'manual' ORDER BY id"
    ).fetchall()


def finished_run_id(conn: db.Conn) -> int:
    wait_until(
        lambda: (
            conn.execute("SELECT 1 FROM worker_job_runs WHERE status <> 'running'").fetchone()
            is not None
        )
    )
    row = conn.execute("SELECT min(id) AS id FROM worker_job_runs").fetchone()
    assert row is not None
    return int(row["id"])


def status_json(db_url: str) -> dict[str, Any]:
    env = {**BASE_ENV, "DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "worker", "status", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return dict(json.loads(done.stdout))


# --- settings ------------------------------------------------------------------------------


def test_http_settings_default_and_validate(db_url: str) -> None:
    assert make_settings(db_url).http_port is None
    assert make_settings(db_url, PORT="8080").http_port == 8080
    assert make_settings(db_url, PORT="8080", WORKER_HTTP_PORT="9000").http_port == 9000
    assert make_settings(db_url).http_host == "127.0.0.1"
    assert make_settings(db_url, ENVIRONMENT="production").http_host == "0.0.0.0"
    assert make_settings(db_url, RAILWAY_ENVIRONMENT_NAME="prod").http_host == "0.0.0.0"
    assert make_settings(db_url, WORKER_HTTP_HOST="::").http_host == "::"
    assert make_settings(db_url, WORKER_HTTP_HOST="localhost").http_host == "127.0.0.1"
    assert make_settings(db_url, WORKER_HTTP_TOKEN=TOKEN).http_token == TOKEN
    bad = {
        "WORKER_HTTP_PORT": "http",
        "PORT": "70000",
        "WORKER_HTTP_HOST": "example.com",
        "WORKER_HTTP_TOKEN": "short-secret",
    }
    for name, value in bad.items():
        with pytest.raises(ConfigError, match=name) as caught:
            make_settings(db_url, **{name: value})
        if name == "WORKER_HTTP_TOKEN":
            assert value not in str(caught.value)


def test_a_bad_http_setting_exits_2_naming_it(spawn: Spawn, db_url: str) -> None:
    worker = spawn("quota", env={"DATABASE_URL": db_url, "WORKER_HTTP_PORT": "0"})
    assert worker.wait() == 2
    assert "WORKER_HTTP_PORT" in worker.stderr()


# --- routes --------------------------------------------------------------------------------


def test_every_route_on_loopback_without_a_token(spawn: Spawn, db_url: str, conn: db.Conn) -> None:
    with web_worker(spawn, db_url) as (_, url), client(url) as http:
        run_id = finished_run_id(conn)
        for path in ("/", "/jobs/quota", f"/runs/{run_id}"):
            page = http.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert "quota" in page.text
        api = http.get("/api/jobs").json()
        assert api["jobs"] == status_json(db_url)["jobs"]
        one = http.get("/api/jobs/quota").json()
        spec = one.pop("spec")  # what the job is: only this route tells it
        assert one == api["jobs"][0]
        assert (spec["kind"], spec["function"]) == ("builtin", "worker.jobs.quota.run_once")
        runs = http.get("/api/jobs/quota/runs", params={"limit": 1}).json()["runs"]
        assert [r["id"] for r in runs] == [run_id]
        run = http.get(f"/api/runs/{run_id}").json()
        assert run["job"] == "quota" and run["status"] == "success" and "output" in run
        assert http.get("/api/alerts", params={"open": 1}).json() == {"alerts": [], "next": None}
        assert http.get("/healthz").json()["status"] == "ok"
        families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    paused = families["worker_job_paused"].samples
    assert [(s.labels, s.value) for s in paused] == [({"job_name": "quota"}, 0.0)]
    assert families["worker_job_next_due_timestamp_seconds"].samples[0].value > time.time()
    assert families["worker_job_last_success_timestamp_seconds"].samples[0].value > 0


def test_unknown_job_or_run_is_404_and_a_bad_method_405(
    spawn: Spawn, db_url: str, conn: db.Conn
) -> None:
    with web_worker(spawn, db_url) as (_, url), client(url) as http:
        for path in ("/api/jobs/nope", "/api/jobs/nope/runs", "/api/runs/999999"):
            missing = http.get(path)
            assert missing.status_code == 404, path
            assert missing.json()["status"] == 404
        assert http.get("/jobs/nope").status_code == 404
        assert http.get("/nowhere").status_code == 404
        origin = {"Origin": url}
        assert http.post("/api/jobs/nope/pause", headers=origin).status_code == 404
        assert http.post("/api/alerts/999/ack", headers=origin).status_code == 404
        wrong = http.get("/api/jobs/quota/pause")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"
        assert wrong.json()["status"] == 405
        assert http.delete("/api/jobs").status_code == 405
        assert http.get("/api/jobs/quota/runs", params={"limit": "lots"}).status_code == 400
    assert conn.execute("SELECT job FROM worker_jobs WHERE job = 'nope'").fetchone() is None


def test_the_token_is_required_as_bearer_or_basic(spawn: Spawn, db_url: str) -> None:
    with web_worker(spawn, db_url, WORKER_HTTP_TOKEN=TOKEN) as (_, url), client(url) as http:
        assert http.get("/healthz").status_code == 200  # never needs the token
        for path in ("/", "/api/jobs", "/metrics", "/jobs/quota"):
            refused = http.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Basic")
            assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get(path, headers=basic("wrong")).status_code == 401
            assert http.get(path, headers=BEARER).status_code == 200, path
            assert http.get(path, headers=basic(TOKEN)).status_code == 200, path
        assert "WORKER_HTTP_TOKEN" in http.get("/api/jobs").json()["error"]


def test_without_a_token_a_non_loopback_listener_refuses_naming_the_variable(
    spawn: Spawn, db_url: str
) -> None:
    with web_worker(spawn, db_url, WORKER_HTTP_HOST="0.0.0.0") as (_, url), client(url) as http:
        assert http.get("/healthz").status_code == 200
        for path in ("/", "/api/jobs", "/metrics"):
            refused = http.get(path)
            assert refused.status_code == 403, path
            assert "WORKER_HTTP_TOKEN" in refused.text


def test_without_a_token_only_loopback_host_names_are_served(spawn: Spawn, db_url: str) -> None:
    with web_worker(spawn, db_url) as (_, url), client(url) as http:
        rebound = http.get("/api/jobs", headers={"Host": "evil.example:80"})
        assert rebound.status_code == 403
        port = url.rsplit(":", 1)[1]
        assert http.get("/api/jobs", headers={"Host": f"localhost:{port}"}).status_code == 200


# --- actions -------------------------------------------------------------------------------


def test_pause_resume_and_run_through_the_api(spawn: Spawn, db_url: str, conn: db.Conn) -> None:
    env = {"WORKER_HTTP_TOKEN": TOKEN, "RUN_ON_START": "false"}
    with web_worker(spawn, db_url, **env) as (worker, url), client(url, headers=BEARER) as http:
        paused = http.post("/api/jobs/quota/pause")
        assert paused.status_code == 200 and paused.json() == {"job": "quota", "paused": True}
        assert flags(conn)["paused"] is True
        assert http.get("/api/jobs/quota").json()["paused"] is True
        assert http.post("/api/jobs/quota/resume").json()["paused"] is False
        assert flags(conn)["paused"] is False
        requested = http.post("/api/jobs/quota/run")
        assert requested.status_code == 202
        assert flags(conn)["run_requested_at"] is not None or manual_runs(conn)
        wait_until(lambda: [r["status"] for r in manual_runs(conn)] == ["success"], 8)
        assert flags(conn)["run_requested_at"] is None
        assert worker.events("run_requested")[0]["via"] == "http"


def flags(conn: db.Conn) -> dict[str, Any]:
    row = conn.execute(
        "SELECT paused, run_requested_at FROM worker_jobs WHERE job = 'quota'"
    ).fetchone()
    assert row is not None
    return row


def test_browser_credentials_need_a_matching_origin(
    spawn: Spawn, db_url: str, conn: db.Conn
) -> None:
    with web_worker(spawn, db_url, WORKER_HTTP_TOKEN=TOKEN) as (_, url), client(url) as http:
        auth = basic(TOKEN)
        assert http.post("/api/jobs/quota/pause", headers=auth).status_code == 403
        foreign = {**auth, "Origin": "https://evil.example"}
        assert http.post("/api/jobs/quota/pause", headers=foreign).status_code == 403
        referred = {**auth, "Referer": "https://evil.example/"}
        assert http.post("/api/jobs/quota/pause", headers=referred).status_code == 403
        assert flags(conn)["paused"] is False
        same = {**auth, "Origin": url}
        assert http.post("/api/jobs/quota/pause", headers=same).status_code == 200
        assert flags(conn)["paused"] is True
        form = http.post(
            "/api/jobs/quota/resume",
            headers={**auth, "Referer": f"{url}/jobs/quota"},
            data={"next": "/jobs/quota"},
        )
        assert form.status_code == 303
        assert form.headers["location"] == "/jobs/quota?done=resumed&subject=quota"
        assert flags(conn)["paused"] is False
        notice = http.get(form.headers["location"], headers=auth).text
        assert "Resumed quota." in notice


def test_without_a_token_a_loopback_post_needs_an_origin(
    spawn: Spawn, db_url: str, conn: db.Conn
) -> None:
    with web_worker(spawn, db_url) as (_, url), client(url) as http:
        assert http.post("/api/jobs/quota/pause").status_code == 403
        assert http.post("/api/jobs/quota/pause", headers=BEARER).status_code == 403
        assert http.post("/api/jobs/quota/pause", headers={"Origin": url}).status_code == 200
    assert flags(conn)["paused"] is True


def test_alerts_are_listed_and_acknowledged(spawn: Spawn, db_url: str, conn: db.Conn) -> None:
    ids = [
        conn.execute(
            "INSERT INTO worker_alerts (type, level, job, message) VALUES"
            " ('JOB_FAILED', 'ERROR', 'quota', %s) RETURNING id",
            (message,),
        ).fetchone()["id"]  # type: ignore[index]
        for message in ("first", "second")
    ]
    with (
        web_worker(spawn, db_url, WORKER_HTTP_TOKEN=TOKEN) as (_, url),
        client(url, headers=BEARER) as http,
    ):
        assert len(http.get("/api/alerts", params={"open": 1}).json()["alerts"]) == 2
        acked = http.post(f"/api/alerts/{ids[0]}/ack")
        assert acked.status_code == 200 and acked.json()["acknowledged_at"]
        still_open = http.get("/api/alerts", params={"open": 1}).json()["alerts"]
        assert [a["id"] for a in still_open] == [ids[1]]
        assert len(http.get("/api/alerts").json()["alerts"]) == 2
    row = conn.execute("SELECT acknowledged_at FROM worker_alerts WHERE id = %s", (ids[0],))
    assert row.fetchone()["acknowledged_at"] is not None  # type: ignore[index]


def test_html_escapes_what_remote_apis_said(spawn: Spawn, db_url: str, conn: db.Conn) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    row = conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, error, output, result,"
        " details, finished_at) VALUES ('quota', 'manual', 'failed', 'h', 1, %s, %s, %s, %s,"
        " now()) RETURNING id",
        (
            hostile,
            hostile,
            json.dumps({"html": hostile}),
            json.dumps({"failures": [{"item": hostile, "reason": hostile}]}),
        ),
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO worker_alerts (type, level, job, message) VALUES ('X', 'ERROR', 'quota', %s)",
        (hostile,),
    )
    with web_worker(spawn, db_url, RUN_ON_START="false") as (_, url), client(url) as http:
        for path in (f"/runs/{row['id']}", "/", "/jobs/quota"):
            page = http.get(path).text
            assert "<img" not in page, path
            assert "&lt;img src=x onerror=alert(1)&gt;" in page, path


# --- health --------------------------------------------------------------------------------


def docker_healthcheck(port: str) -> int:
    """The Dockerfile's HEALTHCHECK command, run here with WORKER_HTTP_PORT set."""
    text = (ROOT / "Dockerfile").read_text()
    found = re.search(r"^HEALTHCHECK .*\n\s+CMD (\[.*\])$", text, re.M)
    assert found is not None
    command = json.loads(found[1])
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "WORKER_HTTP_PORT": port}
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def test_healthz_follows_the_database(spawn: Spawn, db_url: str) -> None:
    forwarder = Forwarder(db_url)
    forwarder.open()
    try:
        with web_worker(spawn, forwarder.url) as (_, url), client(url) as http:
            port = url.rsplit(":", 1)[1]
            assert http.get("/healthz").json()["status"] == "ok"
            assert docker_healthcheck(port) == 0
            forwarder.close()
            down = http.get("/healthz")
            assert down.status_code == 503
            assert "database" in down.json()["reason"]
            assert http.get("/api/jobs").status_code == 503
            assert docker_healthcheck(port) != 0
            forwarder.open()
            wait_until(lambda: http.get("/healthz").status_code == 200, timeout_s=10)
            assert http.get("/api/jobs").status_code == 200
    finally:
        forwarder.close()


# --- hostile clients -----------------------------------------------------------------------


def dribble(port: int, stop: threading.Event) -> None:
    """A slowloris: open a request and never finish its headers."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while not stop.wait(0.2):
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                return


def test_slow_and_huge_clients_delay_neither_a_run_nor_the_stop(
    spawn: Spawn, db_url: str, conn: db.Conn
) -> None:
    stop = threading.Event()
    with web_worker(spawn, db_url, RUN_ON_START="false") as (worker, url), client(url) as http:
        port = int(url.rsplit(":", 1)[1])
        slow = [threading.Thread(target=dribble, args=(port, stop)) for _ in range(20)]
        for thread in slow:
            thread.start()
        try:
            huge = http.post(
                "/api/jobs/quota/pause", headers={"Origin": url}, content=b"x" * 1_000_000
            )
            assert huge.status_code == 413
            assert flags(conn)["paused"] is False
            asked = time.monotonic()
            assert http.post("/api/jobs/quota/run", headers={"Origin": url}).status_code == 202
            wait_until(lambda: [r["status"] for r in manual_runs(conn)] == ["success"], 8)
            assert time.monotonic() - asked < 6.5  # the poll picks it up within 5 s
            sent = worker.signal(signal.SIGTERM)
            assert worker.wait(5) == 0
            assert time.monotonic() - sent < 1.0
            assert worker.stderr() == ""  # the listener closed cleanly: no traceback
        finally:
            stop.set()
            for thread in slow:
                thread.join(5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_metrics_count_the_runs_that_end_after_the_first_scrape(
    spawn: Spawn, db_url: str, conn: db.Conn
) -> None:
    with web_worker(spawn, db_url, RUN_ON_START="false") as (_, url), client(url) as http:
        first = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
        # Each job's outcomes are there at 0 from the first scrape (an increase() sees a
        # first failure), and nothing that ended before it is counted.
        assert sorted((s.labels["status"], s.value) for s in first["worker_job_runs"].samples) == [
            ("failed", 0.0),
            ("partial", 0.0),
            ("success", 0.0),
        ]
        origin = {"Origin": url}
        assert http.post("/api/jobs/quota/run", headers=origin).status_code == 202
        wait_until(lambda: [r["status"] for r in manual_runs(conn)] == ["success"], 8)
        for _ in range(2):  # a second scrape counts nothing twice
            text = http.get("/metrics").text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            assert (
                samples[("worker_job_runs_total", (("job_name", "quota"), ("status", "success")))]
                == 1
            )
            assert samples[("worker_job_run_duration_seconds_count", (("job_name", "quota"),))] == 1
            assert (
                samples[("worker_job_items_total", (("job_name", "quota"), ("outcome", "failed")))]
                == 0
            )


def test_a_taken_port_exits_1_naming_it(spawn: Spawn, db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = spawn("quota", env={"DATABASE_URL": db_url, "WORKER_HTTP_PORT": str(port)})
        assert worker.wait() == 1
    assert worker.wait_for("http_listen_failed")["port"] == port
    assert f"worker: error: cannot listen on 127.0.0.1:{port} (WORKER_HTTP_PORT)" in (
        worker.stderr()
    )


def test_a_silent_loop_is_stalled(db_url: str) -> None:
    daemon = Daemon(make_settings(db_url), SERVICES["quota"])
    assert daemon.stalled() is None
    daemon._beat_at -= STALLED_AFTER_S + 1
    assert "has not ticked" in (daemon.stalled() or "")
    daemon.stop()
    assert daemon.stalled() == "the daemon is stopping"


def test_the_dashboard_cache_reads_once_per_window_and_never_keeps_a_read_an_action_overtook() -> (
    None
):
    from worker.web.cache import FreshCache

    now = [100.0]
    reads: list[int] = []
    cache: FreshCache[int] = FreshCache(1.0, clock=lambda: now[0])

    def read() -> int:
        reads.append(len(reads))
        return len(reads)

    assert cache.get(read) == 1
    now[0] += 0.5
    assert cache.get(read) == 1  # fresh: no second read
    now[0] += 0.6
    assert cache.get(read) == 2  # a second old: read again
    cache.clear()
    assert cache.get(read) == 3  # an action clears it at once

    def overtaken() -> int:
        cache.clear()  # an action lands while this read is in flight
        return read()

    cache.clear()
    assert cache.get(overtaken) == 4
    assert cache.get(read) == 5  # the overtaken read was not kept
