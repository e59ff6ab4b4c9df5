"""The runs and alerts pages in a real headless Chromium: last Tuesday's failed runs in two
clicks from the dashboard, the filter form, the cursor, acknowledge-all.

Needs Debian's `chromium` and `chromium-driver`, as tests/test_web_browser.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from tests.test_history import insert_alert, insert_run, open_ids
from tests.test_web_browser import (
    browser,
    follow,
    no_alert_dialog,
    notice,
    screenshot,
    submit,
)
from tests.webtools import TOKEN, Spawn, web_worker
from worker import db

__all__ = ["browser"]  # the fixture, shared

ZONE = "Asia/Shanghai"
ENV = {"WORKER_HTTP_TOKEN": TOKEN, "RUN_ON_START": "false", "SCHEDULE_TIMEZONE": ZONE}


def local_noon(days_ago: int) -> datetime:
    today = datetime.now(ZoneInfo(ZONE)).date() - timedelta(days=days_ago)
    return datetime(today.year, today.month, today.day, 12, tzinfo=ZoneInfo(ZONE))


def shown_runs(driver: Any) -> list[int]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#runs tr[data-run]")
    return [int(row.get_attribute("data-run")) for row in rows]


def test_a_days_failed_runs_in_two_clicks_then_the_form_and_the_next_page(
    browser: Any, spawn: Spawn, db_url: str, conn: db.Conn, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    day = local_noon(6)  # a week day of the last seven: "last Tuesday" on a Monday
    wanted = [
        insert_run(conn, job, "failed", "schedule", day + timedelta(hours=hours))
        for job, hours in (("alpha", -11), ("beta", 0), ("alpha", 11))
    ]
    insert_run(conn, "alpha", "success", "schedule", day)  # the same day, not failed
    insert_run(conn, "alpha", "failed", "schedule", day - timedelta(hours=12, seconds=1))
    insert_run(conn, "beta", "failed", "schedule", day + timedelta(hours=12))  # the next day
    older = [insert_run(conn, "beta", "success", "manual", local_noon(20)) for _ in range(7)]
    with web_worker(spawn, db_url, **ENV) as (_, url):
        browser.get(url.replace("http://", f"http://admin:{TOKEN}@") + "/")
        follow(browser, "#failed-runs")
        label = day.strftime("%a %d %b")
        follow(browser, f'a[data-quick="{label}"]')
        assert shown_runs(browser) == wanted[::-1]
        assert f"since={day.date().isoformat()}" in browser.current_url
        screenshot(browser, tmp_path, "runs.png")
        # The form: a job typed in, a trigger chosen, a date; the filtered view is its URL.
        browser.find_element(By.ID, "filter-clear").click()
        browser.find_element(By.ID, "filter-job").send_keys("beta")
        Select(browser.find_element(By.ID, "filter-trigger")).select_by_value("manual")
        until = browser.find_element(By.ID, "filter-until")
        until.send_keys(local_noon(19).date().isoformat())
        submit(browser, "filter-submit")
        assert "job=beta" in browser.current_url and "trigger=manual" in browser.current_url
        assert shown_runs(browser) == older[::-1]
        assert browser.find_element(By.ID, "filter-job").get_attribute("value") == "beta"
        # A later page, by the cursor, keeps the filters.
        browser.get(browser.current_url + "&limit=3")
        assert shown_runs(browser) == older[6:3:-1]
        follow(browser, "#next-page")
        assert shown_runs(browser) == older[3:0:-1]
        follow(browser, "#next-page")
        assert shown_runs(browser) == older[:1]
        assert browser.find_elements(By.ID, "next-page") == []
        follow(browser, "#newest-page")
        assert shown_runs(browser) == older[6:3:-1]
        follow(browser, "tr[data-run] td a[href^='/jobs/']")
        assert browser.current_url.endswith("/jobs/beta")
    assert no_alert_dialog(browser)


def test_alerts_filtered_acknowledged_all_and_linked_to_their_run(
    browser: Any, spawn: Spawn, db_url: str, conn: db.Conn, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    now = datetime.now(UTC)
    run_id = insert_run(conn, "alpha", "failed", "schedule", now)
    failed = [insert_alert(conn, "JOB_FAILED", "alpha", now - timedelta(hours=h)) for h in (1, 2)]
    conn.execute(
        "UPDATE worker_alerts SET metadata = jsonb_build_object('run_id', %s::bigint)"
        " WHERE id = %s",
        (run_id, failed[0]),
    )
    overdue = [insert_alert(conn, "JOB_OVERDUE", "beta", now - timedelta(hours=h)) for h in (3, 4)]
    insert_alert(conn, "JOB_FAILED", "beta", now - timedelta(hours=5), acked=True)
    with web_worker(spawn, db_url, **ENV) as (_, url):
        browser.get(url.replace("http://", f"http://admin:{TOKEN}@") + "/alerts")
        rows = browser.find_elements(By.CSS_SELECTOR, "#alerts tr[data-alert]")
        assert len(rows) == 5
        browser.find_element(By.ID, "filter-type").send_keys("JOB_FAILED")
        browser.find_element(By.ID, "filter-open").click()
        submit(browser, "filter-submit")
        shown = browser.find_elements(By.CSS_SELECTOR, "#alerts tr[data-alert]")
        assert [int(r.get_attribute("data-alert")) for r in shown] == failed
        screenshot(browser, tmp_path, "alerts.png")
        button = browser.find_element(By.ID, "ack-all-submit")
        assert "matching these filters" in button.text
        submit(browser, "ack-all-submit")
        assert notice(browser) == "2 open alerts acknowledged."
        assert "type=JOB_FAILED" in browser.current_url  # back to the same filtered view
        assert open_ids(conn) == set(overdue)
        # The dashboard's open-alerts panel: everything open, at once.
        browser.get(f"{url}/")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")) == 2
        submit(browser, "ack-all-submit")
        assert notice(browser) == "2 open alerts acknowledged."
        assert "no open alerts" in browser.find_element(By.ID, "alerts").text
        assert open_ids(conn) == set()
        # Each alert links its run.
        browser.get(f"{url}/alerts")
        follow(browser, "a.run-link")
        assert browser.current_url.endswith(f"/runs/{run_id}")
    assert no_alert_dialog(browser)
