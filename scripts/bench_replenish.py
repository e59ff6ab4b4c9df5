"""Benchmark the replenish pass against its limit: campaigns x latency / concurrency.

500 active campaigns, each low (low_watermark 10, target_stock 20, no stock: quantity 20), on an
embedded PostgreSQL; a fake producer API (`tests/support/fakes.py producer`) in its own process,
answering every order after 50 ms; CAMPAIGN_CONCURRENCY=3.

The worker's pass (`worker.jobs.replenish.run_once` with a real JobContext, in this process) is
timed against the ideal 500 x 0.05 s / 3 = 8.33 s. Target: <= 1.25 x ideal. Checked after the
pass: every campaign holds exactly target_stock available rows (in the table), the producer
received exactly 500 orders and never more than 3 at once (its GET /stats), no alert.

Run: `uv run python scripts/bench_replenish.py`. Last line `OK: all targets met` or `MISS: ...`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import benchlib
import httpx
from benchlib import Report, log

CAMPAIGNS = 500
LOW_WATERMARK = 10
TARGET_STOCK = 20
LATENCY_MS = 50.0
CONCURRENCY = 3
MAX_VS_IDEAL = 1.25

SEED_CAMPAIGNS = """
INSERT INTO campaigns (user_id, name, is_active, low_watermark, target_stock)
SELECT 1000 + i, 'bench-campaign-' || lpad(i::text, 4, '0'), true, %(low)s, %(target)s
  FROM generate_series(1, %(count)s) AS i
"""
STOCK_STATE = """
SELECT count(*) FILTER (WHERE coalesce(s.available, 0) = c.target_stock) AS at_target,
       count(*) AS campaigns,
       coalesce(sum(s.stock_rows), 0)::bigint AS stock_rows,
       (SELECT count(DISTINCT payload) FROM campaign_stock) AS distinct_items
  FROM campaigns c
  LEFT JOIN (SELECT campaign_id,
                    count(*) FILTER (
                        WHERE consumed_at IS NULL
                          AND (leased_until IS NULL OR leased_until <= now())
                    ) AS available,
                    count(*) AS stock_rows
               FROM campaign_stock
              GROUP BY campaign_id) s ON s.campaign_id = c.id
"""


def main() -> int:
    report = Report(
        f"bench_replenish: {CAMPAIGNS} low campaigns, producer at {LATENCY_MS:g} ms, "
        f"CAMPAIGN_CONCURRENCY={CONCURRENCY}"
    )
    with benchlib.embedded_server() as server_url:
        url = benchlib.create_database(server_url, "bench_replenish")
        seed_campaigns(url)
        with benchlib.fake_process("producer", f"--latency-ms={LATENCY_MS}") as api:
            log(f"worker replenish pass on {CAMPAIGNS} campaigns")
            elapsed_s, result, alerts = time_worker_pass(url, api)
            stats = httpx.get(f"{api}/stats", timeout=10.0).json()
        state = stock_state(url)
    ideal_s = CAMPAIGNS * LATENCY_MS / 1000 / CONCURRENCY
    report.figure("worker pass", f"{elapsed_s:.2f} s ({CAMPAIGNS / elapsed_s:.1f} campaigns/s)")
    report.figure("ideal (campaigns x latency / concurrency)", f"{ideal_s:.2f} s")
    report.at_most("worker / ideal", elapsed_s / ideal_s, MAX_VS_IDEAL)
    report.expect("campaigns the pass reported replenished", result.succeeded, CAMPAIGNS)
    report.expect("campaigns the pass reported failed", result.failed, 0)
    report.expect("alerts raised", alerts, 0)
    report.expect("orders the producer received (its /stats)", stats["orders"], CAMPAIGNS)
    report.figure("most orders in flight at once at the producer", str(stats["max_in_flight"]))
    report.expect(
        "orders in flight never above CAMPAIGN_CONCURRENCY",
        stats["max_in_flight"] <= CONCURRENCY,
        True,
    )
    report.expect(
        f"campaigns with exactly {TARGET_STOCK} available (checked in the table)",
        state["at_target"],
        CAMPAIGNS,
    )
    report.expect("stock rows written", state["stock_rows"], CAMPAIGNS * TARGET_STOCK)
    report.expect("distinct items among them", state["distinct_items"], CAMPAIGNS * TARGET_STOCK)
    report.note(
        f"the fake producer ran in its own process; each campaign started with no stock "
        f"(low_watermark {LOW_WATERMARK}, target_stock {TARGET_STOCK}: quantity {TARGET_STOCK}); "
        "the pass was timed from run_once's call to its return, logs (JSON) to /dev/null."
    )
    return report.finish()


def seed_campaigns(url: str) -> None:
    """Exactly CAMPAIGNS active campaigns with no stock; other tables emptied."""
    with benchlib.connect(url) as conn:
        conn.execute(
            "TRUNCATE campaigns, campaign_stock, worker_job_runs, worker_alerts RESTART IDENTITY"
        )
        conn.execute(
            SEED_CAMPAIGNS, {"low": LOW_WATERMARK, "target": TARGET_STOCK, "count": CAMPAIGNS}
        )
        conn.execute("VACUUM ANALYZE campaigns, campaign_stock")


def stock_state(url: str) -> dict[str, Any]:
    with benchlib.connect(url) as conn:
        row = conn.execute(STOCK_STATE).fetchone()
    assert row is not None
    return row


def time_worker_pass(url: str, api: str) -> tuple[float, Any, int]:
    """The worker's replenish pass in this process: (seconds, JobResult, alerts raised)."""
    from worker import db, http_client, logs
    from worker.jobs import replenish
    from worker.jobs.base import JobContext, JobResult
    from worker.settings import from_env

    settings = from_env(
        {
            "DATABASE_URL": url,
            "REPLENISH_API_URL": api,
            "CAMPAIGN_CONCURRENCY": str(CONCURRENCY),
        }
    )
    alerts: list[dict[str, Any]] = []
    with open(os.devnull, "w") as devnull, db.connect(settings.database) as conn:
        logs.configure("INFO", "json", stream=devnull)
        ctx = JobContext(
            job=replenish.NAME,
            conn=conn,
            settings=settings,
            http=http_client.build_http(settings.http_timeout_s),
            log=logs.get_logger(job=replenish.NAME),
            result=JobResult(),
            should_stop=lambda: False,
            sleep=time.sleep,
            alert=lambda **alert: alerts.append(alert),
        )
        with ctx.http:
            started = time.monotonic()
            replenish.run_once(ctx)
            result = ctx.result
            elapsed_s = time.monotonic() - started
    return elapsed_s, result, len(alerts)


if __name__ == "__main__":
    sys.exit(main())
