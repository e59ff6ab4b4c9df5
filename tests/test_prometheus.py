"""/metrics as Prometheus reads it: the collector on the real database, a stock Debian
`prometheus` scraping a daemon, `promtool` on a scrape, and the README's rules and scrape
example (docs/prometheus/) checked by `promtool` and quoted verbatim.

Locally a missing `prometheus` or `promtool` skips its tests; under CI (CI=true) they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import ROOT
from tests.test_daemon import wait_until
from tests.webtools import Spawn, client, free_port, web_worker
from worker import db
from worker.metrics import LedgerCollector

RULES = ROOT / "docs" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "docs" / "prometheus" / "rules_test.yml"
SCRAPE_EXAMPLE = ROOT / "docs" / "prometheus" / "prometheus.yml"
SCRAPE_INTERVAL_S = 1
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def require(tool: str) -> str:
    """Debian's `prometheus` or `promtool`; skip without it locally, fail without it in CI."""
    found = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/bin")
    if found:
        return found
    message = f"{tool} is not installed (apt-get install prometheus)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def scrape(collector: LedgerCollector) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# --- the collector on the real database ------------------------------------------------------


def test_the_collector_counts_each_start_once_and_reads_running_runs_and_live_processes(
    conn: db.Conn,
) -> None:
    conn.execute(
        "INSERT INTO worker_jobs (job, service, schedule, next_due_at)"
        " VALUES ('quota', 'quota', 'every 1h', now() + interval '1 hour')"
    )
    conn.execute("INSERT INTO worker_services (service) VALUES ('quota'), ('jobs')")
    conn.execute(
        "INSERT INTO worker_processes (host, pid, service, version, concurrency, last_seen_at)"
        " VALUES ('a', 1, 'quota', 'v', 4, now()), ('b', 2, 'quota', 'v', 4, now()),"
        "        ('c', 3, 'jobs', 'v', 4, now() - interval '1 minute')"
    )

    @contextmanager
    def connection() -> Iterator[db.Conn]:
        yield conn

    collector = LedgerCollector(connection)
    before = scrape(collector)  # the first scrape marks where counting starts
    assert before[("worker_job_running", (("job_name", "quota"),))] == 0
    assert ("worker_job_start_lateness_seconds_count", (("job_name", "quota"),)) not in before
    # started_at defaults to the statement's now(): this start is 2.5 s late.
    conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, scheduled_for)"
        " VALUES ('quota', 'schedule', 'running', 'a', 1, now() - interval '2.5 s'),"
        "        ('quota', 'manual', 'running', 'a', 1, NULL)"  # serves no occurrence
    )
    quota = (("job_name", "quota"),)
    for _ in range(2):  # a second scrape counts no start twice
        samples = scrape(collector)
        assert samples[("worker_job_start_lateness_seconds_count", quota)] == 1
        assert samples[("worker_job_start_lateness_seconds_sum", quota)] == pytest.approx(2.5)
        assert samples[("worker_job_start_lateness_seconds_bucket", (*quota, ("le", "1.0")))] == 0
        assert samples[("worker_job_start_lateness_seconds_bucket", (*quota, ("le", "5.0")))] == 1
        assert samples[("worker_job_running", quota)] == 2
        # Live: seen within 3 polls, as everywhere else; a service whose processes went is 0.
        assert samples[("worker_processes_live", (("service", "quota"),))] == 2
        assert samples[("worker_processes_live", (("service", "jobs"),))] == 0
    conn.execute(
        "UPDATE worker_job_runs SET status = 'failed', finished_at = now(), duration_ms = 40"
    )
    ended = scrape(collector)
    assert ended[("worker_job_running", quota)] == 0
    assert ended[("worker_job_runs_total", (*quota, ("status", "failed")))] == 2
    assert ended[("worker_job_start_lateness_seconds_count", quota)] == 1


# --- a stock Prometheus scraping a daemon ------------------------------------------------------


@contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """Debian's prometheus on loopback scraping `target` with a stock scrape config (no
    honor_labels, no relabelling); yields its base URL, and ends it by its PID."""
    binary = require("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {SCRAPE_INTERVAL_S}s\n"
        f"  scrape_timeout: {SCRAPE_INTERVAL_S}s\n"
        "scrape_configs:\n"
        "  - job_name: worker\n"
        "    static_configs:\n"
        f'      - targets: ["{target}"]\n',
        encoding="utf-8",
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    try:
        answer = httpx.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    except httpx.TransportError:
        return []  # not listening yet
    body = answer.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_a_stock_prometheus_finds_every_job_by_job_name(
    spawn: Spawn, db_url: str, tmp_path: Path
) -> None:
    with web_worker(spawn, db_url, service="all") as (_, url), client(url) as http:
        jobs = sorted(job["job"] for job in http.get("/api/jobs").json()["jobs"])
        assert len(jobs) >= 3
        with prometheus(tmp_path, url.removeprefix("http://")) as base:
            wait_until(lambda: [r["value"][1] for r in query(base, "up")] == ["1"], 30)
            due = "worker_job_next_due_timestamp_seconds"
            wait_until(lambda: len(query(base, due)) == len(jobs), 10)
            for job in jobs:
                found = query(base, f'{due}{{job_name="{job}"}}')
                assert [r["metric"]["job_name"] for r in found] == [job]
                assert found[0]["metric"]["job"] == "worker"  # the scrape job's, Prometheus's
            running = query(base, "worker_job_running")
            assert sorted(r["metric"]["job_name"] for r in running) == jobs
            live = query(base, "worker_processes_live")
            assert [(r["metric"]["service"], r["value"][1]) for r in live] == [("all", "1")]
            assert query(base, '{exported_job=~".+"}') == []
            every = query(base, '{job="worker", __name__=~"worker_job_.+"}')
            assert every and all("job_name" in r["metric"] for r in every)


# --- promtool -----------------------------------------------------------------------------------


def test_promtool_finds_a_real_scrape_clean(spawn: Spawn, db_url: str, conn: db.Conn) -> None:
    promtool = require("promtool")
    with web_worker(spawn, db_url) as (_, url), client(url) as http:
        http.get("/metrics")  # counting starts: the next scrape has counters and histograms
        origin = {"Origin": url}
        assert http.post("/api/jobs/quota/run", headers=origin).status_code == 202
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT 1 FROM worker_job_runs WHERE trigger = 'manual' AND status <> 'running'"
                ).fetchone()
                is not None
            ),
            10,
        )
        text = http.get("/metrics").text
    assert "worker_job_run_duration_seconds_bucket" in text
    assert "worker_job_start_lateness_seconds" in text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_the_readme_quotes_the_rules_and_the_scrape_example_promtool_accepts() -> None:
    promtool = require("promtool")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in (RULES, SCRAPE_EXAMPLE):
        assert f"```yaml\n{path.read_text(encoding='utf-8')}```\n" in readme, path.name
    rules = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS: 3 rules found" in rules.stdout
    # Each rule fires on the series it is about, and not on a paused, running or covered one.
    cases = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=30
    )
    assert cases.returncode == 0, cases.stdout + cases.stderr
    # The example's token file exists only where Prometheus runs: its syntax is checked.
    config = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(SCRAPE_EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert config.returncode == 0, config.stdout + config.stderr
