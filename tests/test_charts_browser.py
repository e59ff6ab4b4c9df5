"""The charts, the sparklines and the Processes panel in a real headless Chromium, at a
desktop's and a phone's width, on a seeded week of history; the README's screenshots of
them (UPDATE_SCREENSHOTS=1 writes them into docs/, as tests/test_web_browser.py's do).

Needs Debian's `chromium` and `chromium-driver`, as tests/test_web_browser.py does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_daemon import wait_until
from tests.test_web_browser import browser, follow, no_alert_dialog, screenshot
from tests.webtools import Spawn, web_worker
from worker import db
from worker.web import charts

__all__ = ["browser"]  # the headless Chromium fixture, shared with tests/test_web_browser.py


# A week of history for the screenshots and the charts: (period, typical duration, spread).
WEEK = {
    "quota": (3600, 4000, 3000),
    "cleanup_tokens": (3600, 300, 400),
    "cleanup_sessions": (86400, 20000, 15000),
    "cleanup_history": (86400, 35000, 20000),
    "replenish": (900, 1200, 1500),
    "lease_recovery": (300, 150, 100),
}
WIDTHS = ((1280, 1000, ""), (390, 844, "-phone"))  # desktop, and a phone's 390 px


def window(driver: Any, width: int, height: int) -> None:
    """A desktop window, or below 500 px a phone's screen (a mobile viewport, scrollbars
    that take no width)."""
    driver.set_window_size(width, height)
    if width < 500:
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    else:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def seed_week(conn: db.Conn) -> int:
    """A week of runs of the built-in jobs (quota failing from seven hours ago to four, a
    partial or failed run now and then), an open alert, and a process gone ten minutes ago
    as well as the live one; returns the gone process's id."""
    for job, (period_s, typical_ms, spread_ms) in WEEK.items():
        conn.execute(
            "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at,"
            " finished_at, duration_ms, total, succeeded, failed)"
            " SELECT %(job)s, 'schedule', status, 'web-1', 4242, started,"
            "   started + make_interval(secs => ms / 1000.0), ms, 10,"
            "   CASE status WHEN 'success' THEN 10 WHEN 'partial' THEN 8 ELSE 0 END,"
            "   CASE status WHEN 'success' THEN 0 WHEN 'partial' THEN 2 ELSE 10 END"
            " FROM (SELECT now() - make_interval(secs => i * %(period)s - 60) AS started,"
            "   (%(typical)s + %(spread)s * sin(i / 5.0))::int AS ms,"
            "   CASE WHEN %(job)s = 'quota' AND i BETWEEN 4 AND 7 THEN 'failed'"
            "        WHEN i %% 13 = 0 THEN 'partial' WHEN i %% 29 = 0 THEN 'failed'"
            "        ELSE 'success' END AS status"
            "   FROM generate_series(1, 7 * 86400 / %(period)s) AS i) AS week",
            {"job": job, "period": period_s, "typical": typical_ms, "spread": spread_ms},
        )
    conn.execute(  # quota's failing stretch: each hour retried twice, and run by hand once
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at,"
        " finished_at, duration_ms, total, succeeded, failed, attempt)"
        " SELECT 'quota', CASE WHEN a = 3 THEN 'manual' ELSE 'retry' END, 'failed', 'web-1', 4242,"
        "   started, started + interval '2 seconds', 2000, 10, 0, 10, a"
        " FROM generate_series(4, 7) AS i, generate_series(2, 3) AS a,"
        "   LATERAL (SELECT now() - make_interval(secs => i * 3600 - 60 - a * 600)) AS s(started)"
    )
    conn.execute(
        "INSERT INTO worker_alerts (type, level, job, message) VALUES ('JOB_FAILED', 'ERROR',"
        " 'quota', 'quota failed 4 times in a row: the usage API answered 503')"
    )
    row = conn.execute(
        "INSERT INTO worker_processes (host, pid, service, version, concurrency, started_at,"
        " last_seen_at) VALUES ('web-2', 5151, 'cleanup', '0.1.0', 4,"
        " now() - interval '3 hours', now() - interval '10 minutes') RETURNING id"
    ).fetchone()
    assert row is not None
    return int(row["id"])


def runs_of(conn: db.Conn, job: str) -> int:
    row = conn.execute("SELECT count(*) AS n FROM worker_job_runs WHERE job = %s", (job,))
    return int(row.fetchone()["n"])  # type: ignore[index]


def hours_with_runs(conn: db.Conn, job: str, zone: str) -> int:
    row = conn.execute(
        "SELECT count(DISTINCT date_trunc('hour', started_at, %(zone)s)) AS n"
        "  FROM worker_job_runs WHERE job = %(job)s"
        "   AND started_at >= date_trunc('hour', now(), %(zone)s) - interval '167 hours'",
        {"job": job, "zone": zone},
    ).fetchone()
    assert row is not None
    return int(row["n"])


def rendered(element: Any) -> tuple[float, float]:
    """An element's laid-out width and height in CSS pixels."""
    box = element.rect
    return float(box["width"]), float(box["height"])


def no_sideways_scroll(driver: Any) -> bool:
    return bool(
        driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    )


def check_job_charts(driver: Any, conn: db.Conn, job: str, width: int) -> None:
    """Both charts drawn at this width, a bar per run (the last 100) linking to its run, a
    column per hour with runs, and the legend."""
    from selenium.webdriver.common.by import By

    for chart in ("durations", "hourly"):
        svg_width, svg_height = rendered(driver.find_element(By.ID, chart))
        assert 0.6 * width < svg_width <= width, (chart, svg_width)
        assert svg_height == charts.CHART_HEIGHT
    bars = driver.find_elements(By.CSS_SELECTOR, "#durations a")
    assert len(bars) == min(100, runs_of(conn, job))
    newest = conn.execute(
        "SELECT id FROM worker_job_runs WHERE job = %s ORDER BY started_at DESC LIMIT 1", (job,)
    ).fetchone()
    assert bars[-1].get_dom_attribute("href") == f"/runs/{newest['id']}"  # type: ignore[index]
    title = bars[-1].find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert title.startswith(f"run {newest['id']} · ")  # type: ignore[index]
    # Each bar as tall as its run is long, on the scale of the longest: what a user sees.
    durations = [
        row["duration_ms"]
        for row in conn.execute(
            "SELECT duration_ms FROM worker_job_runs WHERE job = %s"
            " ORDER BY started_at DESC, id DESC LIMIT 100",
            (job,),
        ).fetchall()[::-1]
    ]
    top = charts.nice_duration_ms(max(durations))
    sizes = [rendered(bar.find_element(By.TAG_NAME, "rect")) for bar in bars]
    assert all(w > 0 for w, _ in sizes)
    expected = [max(d / top * charts.PLOT_HEIGHT, charts.MIN_BAR_PX) for d in durations]
    assert [h for _, h in sizes] == pytest.approx(expected, abs=0.5)
    hours = driver.find_elements(By.CSS_SELECTOR, "#hourly a")
    assert len(hours) == hours_with_runs(conn, job, "Asia/Shanghai")
    assert all(h.get_dom_attribute("href").startswith(f"/runs?job={job}&since=") for h in hours)
    legend = driver.find_element(By.ID, "chart-legend").text
    assert {"success", "partial", "failed"} <= set(legend.split())
    assert no_sideways_scroll(driver)


def check_dashboard(driver: Any, conn: db.Conn, gone_id: int) -> None:
    """A sparkline of each job's last 20 runs; the processes, the live one first."""
    from selenium.webdriver.common.by import By

    for job in WEEK:
        row = driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{job}"]')
        spark = row.find_element(By.CSS_SELECTOR, "svg.spark")
        assert rendered(spark) == (100, 22)
        paths = spark.find_elements(By.TAG_NAME, "path")  # one per colour, a subpath per run
        marks = sum(path.get_dom_attribute("d").count("M") for path in paths)
        assert marks == min(20, runs_of(conn, job)) == int(spark.get_dom_attribute("data-runs"))
    quota = driver.find_element(By.CSS_SELECTOR, 'tr[data-job="quota"] svg.spark title')
    assert quota.get_attribute("textContent").startswith("last 20 runs, newest on the right:")
    rows = driver.find_elements(By.CSS_SELECTOR, "#processes tbody tr")
    assert [r.get_attribute("data-state") for r in rows] == ["alive", "gone"]
    gone = driver.find_element(By.CSS_SELECTOR, f'tr[data-process="{gone_id}"]')
    assert "web-2:5151" in gone.text and "silent for 10" in gone.text
    assert driver.find_element(By.ID, "process-counts").text == "1 alive · 1 gone"


def test_charts_sparklines_and_processes_at_desktop_and_phone_widths(
    browser: Any, spawn: Spawn, db_url: str, conn: db.Conn, tmp_path: Path
) -> None:
    """Also the README's screenshots (UPDATE_SCREENSHOTS=1 writes them into docs/)."""
    from selenium.webdriver.common.by import By

    gone_id = seed_week(conn)
    env = {"RUN_ON_START": "false", "SCHEDULE_TIMEZONE": "Asia/Shanghai"}
    with web_worker(spawn, db_url, service="all", **env) as (_, url):
        conn.execute(  # the counters the finished runs would have kept
            "UPDATE worker_jobs j SET runs = r.runs, successes = r.ok, failures = r.failed"
            "  FROM (SELECT job, count(*) AS runs, count(*) FILTER (WHERE status = 'success')"
            "   AS ok, count(*) FILTER (WHERE status IN ('failed', 'partial')) AS failed"
            "   FROM worker_job_runs GROUP BY job) r WHERE r.job = j.job"
        )
        for width, height, suffix in WIDTHS:
            window(browser, width, height)
            browser.get(f"{url}/")
            check_dashboard(browser, conn, gone_id)
            screenshot(browser, tmp_path, f"dashboard{suffix}.png", through="processes")
            browser.get(f"{url}/jobs/quota")
            inner = int(browser.execute_script("return document.documentElement.clientWidth"))
            check_job_charts(browser, conn, "quota", inner)
            screenshot(browser, tmp_path, f"job{suffix}.png", through="chart-legend")
        browser.get(f"{url}/jobs/cleanup_sessions")  # a week of a daily job: 7 bars
        bars = browser.find_elements(By.CSS_SELECTOR, "#durations a")
        assert len(bars) == 7
        target = bars[-1].get_dom_attribute("href")
        bars[-1].click()  # a bar leads to its run
        wait_until(lambda: browser.current_url == f"{url}{target}", timeout_s=10)
        # An hour's column leads to that hour's runs: as many rows as its title counts.
        browser.get(f"{url}/jobs/quota")
        hour = browser.find_elements(By.CSS_SELECTOR, "#hourly a")[-1]
        counted = hour.find_element(By.TAG_NAME, "title").get_attribute("textContent")
        runs = int(counted.split(": ", 1)[1].split(" run", 1)[0])
        follow(browser, "#hourly a:last-of-type")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")) == runs
    assert no_alert_dialog(browser)
