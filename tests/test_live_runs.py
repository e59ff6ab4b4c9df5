"""A run as it goes, in a real headless Chromium: its page's elapsed time, progress and
output move between two looks, for a runtime job (`task.progress`) and a built-in one
(quota, counting its keys as it goes); the dashboard says "running for"; cancel stops a
built-in job between items. And each job's definition on its page, secrets masked."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_context, make_settings
from tests.support.fakes import Reply, serving, usage_body
from tests.support.jobruns import runs_of, wait_until
from tests.support.processes import WorkerProcess
from tests.test_runtime import BEARER, SLOW, runtime_env
from tests.test_web_browser import browser  # noqa: F401 - the fixture
from tests.webtools import TOKEN, client, web_worker
from worker import db, http_client
from worker.jobs import quota, replenish
from worker.jobs.live import FLUSH_S, LiveRun
from worker.logs import get_logger

Spawn = Callable[..., WorkerProcess]
KEYS = 24  # quota's keys, one call each, one at a time: about 0.25 s apart
SECRET = "s3cr3t-value-never-shown"


# Read in one script, so a refresh that swaps the page in between never splits a look.
LOOK = """
var text = function (id) { var e = document.getElementById(id); return e ? e.textContent : ""; };
var bar = document.getElementById("progress");
return {elapsed: text("elapsed"), done: bar ? bar.value : null, max: bar ? bar.max : null,
        progress: text("progress-text"), output: text("output").length, page: text("live")};
"""

NOTICE = 'var e = document.getElementById("notice"); return e ? e.textContent : "";'


def look(driver: Any) -> dict[str, Any]:
    """What the run page shows now: elapsed seconds, the bar, the output's length."""
    seen = driver.execute_script(LOOK)
    return {
        "elapsed_s": seconds(seen["elapsed"].strip()),
        "done": None if seen["done"] is None else int(seen["done"]),
        "max": None if seen["max"] is None else int(seen["max"]),
        "progress": seen["progress"],
        "output": seen["output"],
        "status": seen["page"],
    }


def seconds(shown: str) -> float:
    """`4.2s` or `3m07s` as seconds."""
    if "m" in shown:
        minutes, rest = shown.rstrip("s").split("m")
        return int(minutes) * 60 + int(rest)
    return float(shown.rstrip("s"))


def two_looks(driver: Any, url: str, moved: Callable[[dict[str, Any], dict[str, Any]], bool]):
    """Open the run page and look twice: the second look once the page itself has moved
    (it refreshes itself; the browser is never reloaded in between)."""
    driver.get(url)
    first = wait_until(
        lambda: (lambda seen: seen if seen["done"] is not None else None)(look(driver))
    )
    second = wait_until(lambda: (lambda seen: seen if moved(first, seen) else None)(look(driver)))
    return first, second


@pytest.mark.slow
def test_the_run_page_of_a_running_runtime_job_moves_by_itself(
    browser: Any,  # noqa: F811
    spawn: Spawn,
    db_url: str,
    conn: db.Conn,
    tmp_path: Path,
) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "slow.py").write_text(textwrap.dedent(SLOW), encoding="utf-8")
    env = runtime_env(scripts, tmp_path)
    with web_worker(spawn, db_url, "jobs", **env) as (_, url), client(url, headers=BEARER) as http:
        made = http.post(
            "/api/jobs", json={"name": "long_haul", "handler": "scripts:slow", "schedule": "manual"}
        )
        assert made.status_code == 201
        assert http.post("/api/jobs/long_haul/run").status_code == 202
        run_id = wait_until(lambda: runs_of(conn, "long_haul"))[0]["id"]
        # Credentials once; a page whose own address holds them could not fetch its update.
        browser.get(url.replace("http://", f"http://admin:{TOKEN}@") + "/")
        first, second = two_looks(
            browser,
            f"{url}/runs/{run_id}",
            lambda a, b: b["done"] > a["done"] + 1 and b["output"] > a["output"],
        )
        assert first["max"] == second["max"] == 30
        assert second["elapsed_s"] > first["elapsed_s"]
        assert f"{second['done']}/30 done" in second["progress"]
        browser.get(f"{url}/")
        row = browser.find_element("css selector", 'tr[data-job="long_haul"]').text
        assert "running for" in row and "/30 done" in row
        bar = browser.find_element("css selector", 'tr[data-job="long_haul"] progress')
        assert bar.get_attribute("max") == "30" and int(bar.get_attribute("value") or 0) > 0
        assert http.post(f"/api/runs/{run_id}/cancel").status_code == 202
        wait_until(lambda: http.get(f"/api/runs/{run_id}").json()["status"] == "cancelled")


@pytest.mark.slow
def test_the_run_page_of_a_running_builtin_job_moves_and_cancel_stops_it(
    browser: Any,  # noqa: F811
    spawn: Spawn,
    db_url: str,
    conn: db.Conn,
) -> None:
    conn.execute(
        "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota)"
        " SELECT 'tvly-live-' || lpad(i::text, 4, '0'), 100, 0 FROM generate_series(1, %s) i",
        (KEYS,),
    )
    slow_usage = lambda request: Reply(200, usage_body(100, 40), delay_s=0.25)  # noqa: E731
    with (
        serving(slow_usage) as tavily,
        web_worker(
            spawn,
            db_url,
            "quota",
            TAVILY_USAGE_URL=f"{tavily.url}/usage",
            QUOTA_CONCURRENCY="1",
            RUN_ON_START="true",
        ) as (_, url),
        client(url) as http,
    ):
        run_id = wait_until(lambda: runs_of(conn, "quota"))[0]["id"]
        api_first = wait_until(lambda: progressed(http, run_id, 1))
        first, second = two_looks(
            browser, f"{url}/runs/{run_id}", lambda a, b: b["done"] > a["done"]
        )
        assert first["max"] == second["max"] == KEYS
        assert second["elapsed_s"] > first["elapsed_s"]
        assert "running" in second["status"] and "cancel" in second["status"]
        api_later = wait_until(lambda: progressed(http, run_id, api_first["progress_done"] + 1))
        assert api_later["progress_total"] == KEYS and api_later["status"] == "running"

        job = http.get("/api/jobs/quota").json()["running"]
        assert job["total"] == KEYS and job["elapsed_ms"] > 0 and job["done"] >= 1
        assert "running for" in http.get("/jobs/quota").text

        browser.get(f"{url}/runs/{run_id}")
        browser.execute_script('document.getElementById("cancel").click()')  # never stale
        said = wait_until(lambda: browser.execute_script(NOTICE))
        assert said.startswith(f"Run {run_id} asked to stop")
        ended = wait_until(lambda: finished(http, run_id))
    assert ended["status"] == "cancelled", ended
    # Stopped between keys: the keys after the cancel were never asked for.
    assert 1 <= ended["succeeded"] < KEYS and len(tavily.requests) < KEYS


def progressed(http: httpx.Client, run_id: int, at_least: int) -> dict[str, Any] | None:
    run = http.get(f"/api/runs/{run_id}").json()
    return run if (run["progress_done"] or 0) >= at_least else None


def finished(http: httpx.Client, run_id: int) -> dict[str, Any] | None:
    run = http.get(f"/api/runs/{run_id}").json()
    return None if run["status"] == "running" else run


JOBS_FILE = f"""
[jobs.ping_app]
schedule = "every 1h"
on_start = false
description = "Tell the app to rebuild its caches."
timeout = "2m"
retries = 2
retry_delay = "10s"

[jobs.ping_app.http]
url = "https://robot:{SECRET}@app.example.com/hook"
method = "PUT"
json = {{ full = true }}
token_env = "APP_TOKEN"
headers = {{ X-Api-Key = "{SECRET}", Accept = "application/json" }}

[jobs.export]
schedule = "30 3 * * *"
on_start = false
command = ["python", "-m", "app.export", "--since", "1d"]
env = {{ EXPORT_PASSWORD = "{SECRET}", MODE = "fast" }}

[jobs.tidy]
schedule = "every 15m"
on_start = false
sql = "REFRESH MATERIALIZED VIEW leaderboard"
"""


def test_each_jobs_page_shows_its_definition_with_secrets_masked(
    spawn: Spawn, db_url: str, conn: db.Conn, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "worker.toml"
    jobs_file.write_text(JOBS_FILE, encoding="utf-8")
    token = "app-token-0123456789"
    env = {"WORKER_JOBS_FILE": str(jobs_file), "APP_TOKEN": token, "RUN_ON_START": "false"}
    with web_worker(spawn, db_url, "all", **env) as (_, url), client(url) as http:
        ping = http.get("/api/jobs/ping_app").json()["spec"]
        assert ping == {
            "source": "file",
            "declared_in": str(jobs_file),
            "service": "jobs",
            "schedule": "every 1h",
            "counters": {"runs": 0, "successes": 0, "failures": 0},
            "kind": "http",
            "method": "PUT",
            "url": "https://robot:***@app.example.com/hook",
            "headers": {"X-Api-Key": "***", "Accept": "application/json"},
            "json": {"full": True},
            "token_env": "APP_TOKEN",
            "timeout_s": 120,
            "retries": 2,
            "retry_delay_s": 10,
            "max_attempts": 3,
            "description": "Tell the app to rebuild its caches.",
        }
        export = http.get("/api/jobs/export").json()["spec"]
        assert export["command"] == ["python", "-m", "app.export", "--since", "1d"]
        assert export["env"] == {"EXPORT_PASSWORD": "***", "MODE": "fast"}
        assert http.get("/api/jobs/tidy").json()["spec"]["sql"] == (
            "REFRESH MATERIALIZED VIEW leaderboard"
        )
        quota = http.get("/api/jobs/quota").json()["spec"]
        assert (quota["kind"], quota["function"]) == ("builtin", "worker.jobs.quota.run_once")
        assert quota["declared_in"].startswith("built in")

        page = http.get("/jobs/ping_app").text
        for shown in (
            "PUT https://robot:***@app.example.com/hook",
            "$APP_TOKEN",
            "2 retries",
            "timeout 120 s",
            "Tell the app to rebuild its caches.",
            str(jobs_file),
        ):
            assert shown in page, shown
        assert "worker.jobs.quota.run_once" in http.get("/jobs/quota").text
        for path in ("/jobs/ping_app", "/jobs/export", "/api/jobs/ping_app", "/api/jobs/export"):
            body = http.get(path).text
            assert SECRET not in body and token not in body, path

        # A file job some other deployment's file declares: said, not guessed.
        conn.execute(
            "INSERT INTO worker_jobs (job, service, schedule, next_due_at, source, declared_in)"
            " VALUES ('elsewhere', 'jobs', 'every 1h', now(), 'file', '/srv/other/worker.toml')"
        )
        other = http.get("/api/jobs/elsewhere").json()["spec"]
        assert other["kind"] is None and "cannot be read" in other["unknown"]
        assert (
            "not shown: /srv/other/worker.toml cannot be read" in http.get("/jobs/elsewhere").text
        )


def test_a_paused_jobs_page_says_paused_once(spawn: Spawn, db_url: str) -> None:
    with web_worker(spawn, db_url, RUN_ON_START="false") as (_, url), client(url) as http:
        paused = http.post("/api/jobs/quota/pause", headers={"Origin": url})
        assert paused.status_code == 200
        page = http.get("/jobs/quota").text
    heading = re.sub(r"<[^>]+>", "", page.split("<h1>", 1)[1].split("</h1>", 1)[0])
    assert heading.split() == ["quota", "paused"], heading


def test_live_progress_is_written_at_once_then_at_most_once_a_flush(conn: db.Conn) -> None:
    row = conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid)"
        " VALUES ('quota', 'manual', 'running', 'test-host', 1) RETURNING id"
    ).fetchone()
    assert row is not None
    live = LiveRun(conn, get_logger(), row["id"])

    def shown() -> tuple[int | None, int | None]:
        got = conn.execute(
            "SELECT progress_done, progress_total FROM worker_job_runs WHERE id = %s", (row["id"],)
        ).fetchone()
        assert got is not None
        return got["progress_done"], got["progress_total"]

    live.report(1, 10)
    assert shown() == (1, 10)  # the first report at once
    live.report(2, 10)
    assert shown() == (1, 10)  # the next within FLUSH_S waits
    live._flushed_at -= FLUSH_S  # a flush later
    live.report(12, 10)
    assert shown() == (12, 12)  # more done than counted at the start: the total follows


def test_a_command_job_reports_its_progress_through_the_file_it_is_given(
    conn: db.Conn, spawn: Spawn, tmp_path: Path
) -> None:
    from tests.test_declared import jobs_env, only_run, run_once

    jobs = tmp_path / "worker.toml"
    script = 'printf \'{"done": 3, "total": 4}\' > "$WORKER_TASK_PROGRESS"; sleep 1.5'
    jobs.write_text(
        f"""
[jobs.export]
schedule = "30 3 * * *"
command = ["sh", "-c", {json.dumps(script)}]
""",
        encoding="utf-8",
    )
    _, code, stderr = run_once(spawn, jobs_env(conn.info.dsn, jobs))
    assert code == 0, stderr
    run = only_run(conn, "export", "success")
    # Written while it ran (a run's row keeps the last figures it showed).
    assert (run["progress_done"], run["progress_total"]) == (3, 4)


def passes_progress(
    conn: db.Conn, job: Callable[[Any], None], name: str, **env: str
) -> list[tuple[int, int | None]]:
    """What one pass of `job` reported through `ctx.progress`, in order."""
    reported: list[tuple[int, int | None]] = []
    settings = make_settings(conn.info.dsn, **env)
    with http_client.build_http(settings.http_timeout_s) as http:
        ctx = replace(
            make_context(conn, settings, job=name, http=http, alert=lambda **alert: None),
            progress=lambda done, total: reported.append((done, total)),
        )
        job(ctx)
    return reported


def test_quota_and_replenish_report_each_item_of_their_total(conn: db.Conn) -> None:
    conn.execute(
        "INSERT INTO tavily_api_keys (api_key, plan_limit, remaining_quota)"
        " SELECT 'tvly-count-' || lpad(i::text, 4, '0'), 100, 0 FROM generate_series(1, 5) i"
    )
    for i in range(3):
        conn.execute(
            "INSERT INTO campaigns (name, user_id, low_watermark, target_stock, is_active)"
            " VALUES (%s, 7, 5, 10, true)",
            (f"low-{i}",),
        )
    answer = lambda request: (  # noqa: E731
        Reply(200, usage_body(100, 40))
        if request.path.startswith("/usage")
        else Reply(200, {"items": [f"i{n}" for n in range(request.json()["quantity"])]})
    )
    with serving(answer) as api:
        keys = passes_progress(conn, quota.run_once, "quota", TAVILY_USAGE_URL=f"{api.url}/usage")
        stock = passes_progress(
            conn, replenish.run_once, "replenish", REPLENISH_API_URL=f"{api.url}/stock"
        )
    assert keys == [(n, 5) for n in range(6)]
    assert stock == [(n, 3) for n in range(4)]
