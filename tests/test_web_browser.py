"""The dashboard in a real headless Chromium: Basic auth, forms, escaping, a screenshot.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them). Without them a
developer's run skips these tests; under CI (CI=true) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT
from tests.test_daemon import wait_until
from tests.webtools import TOKEN, Spawn, web_worker
from worker import db

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HOSTILE = "<img src=x onerror=alert(1)>"
# UPDATE_SCREENSHOTS=1 writes the README's screenshots into docs/; otherwise a temp folder.
SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        reason = f"needs Debian's chromium and chromium-driver; missing: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM  # with the driver's path too: no Selenium Manager
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(1280, 900)
    try:
        yield driver
    finally:
        driver.quit()


def seed_history(conn: db.Conn) -> int:
    """A failed run whose texts came from a hostile API, and an open alert; returns the run id."""
    row = conn.execute(
        "INSERT INTO worker_job_runs (job, trigger, status, host, pid, started_at, finished_at,"
        " duration_ms, total, succeeded, failed, error, output, result, details)"
        " VALUES ('quota', 'schedule', 'partial', 'web-1', 42, now() - interval '2 hours',"
        " now() - interval '2 hours' + interval '3 seconds', 3000, 12, 11, 1, %s, %s, %s, %s)"
        " RETURNING id",
        (
            f"1 key failed: {HOSTILE}",
            f"upstream said: {HOSTILE}",
            json.dumps({"answer": HOSTILE}),
            json.dumps({"failures": [{"item": "tvly-abc...", "reason": HOSTILE}]}),
        ),
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO worker_alerts (type, level, job, message) VALUES"
        " ('FAILURE_RATE_HIGH', 'WARNING', 'quota', %s)",
        (f"1 of 12 items failed: {HOSTILE}",),
    )
    return int(row["id"])


def no_alert_dialog(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 - raises when no dialog is open
    except NoAlertPresentException:
        return True
    return False


def click(driver: Any, job: str, label: str) -> None:
    """Press a job's button and wait until the page it leads to has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-job="{job}"]')
    row.find_element(By.XPATH, f".//button[normalize-space()='{label}']").click()
    WebDriverWait(driver, 10).until(expected_conditions.staleness_of(page))
    WebDriverWait(driver, 10).until(
        expected_conditions.presence_of_element_located((By.ID, "notice"))
    )


def notice(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, "notice").text)


def test_dashboard_pause_and_run_now_with_basic_auth(
    browser: Any, spawn: Spawn, db_url: str, conn: db.Conn, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    seed_history(conn)
    env = {
        "WORKER_HTTP_TOKEN": TOKEN,
        "RUN_ON_START": "false",
        "SCHEDULE_TIMEZONE": "Asia/Shanghai",
    }
    with web_worker(spawn, db_url, service="all", **env) as (_, url):
        base = url.replace("http://", f"http://admin:{TOKEN}@")
        browser.get(f"{base}/")
        assert "quota" in browser.find_element(By.ID, "jobs").text
        screenshot(browser, tmp_path, "dashboard.png")
        click(browser, "quota", "pause")
        assert notice(browser) == "Paused quota."
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-job="quota"]')
        assert "paused" in row.text and "resume" in row.text
        click(browser, "quota", "run now")
        assert notice(browser).startswith("Run of quota requested")
        wait_until(lambda: manual_run_status(conn) == "success", timeout_s=10)
        browser.get(f"{url}/jobs/quota")  # credentials are cached for the site now
        assert "manual" in browser.find_element(By.TAG_NAME, "main").text
        browser.set_window_size(390, 844)
        browser.get(f"{url}/")
        screenshot(browser, tmp_path, "dashboard-phone.png")
    assert no_alert_dialog(browser)


def manual_run_status(conn: db.Conn) -> str | None:
    row = conn.execute(
        "SELECT status FROM worker_job_runs WHERE trigger = 'manual' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else str(row["status"])


def test_hostile_output_is_shown_as_text(
    browser: Any, spawn: Spawn, db_url: str, conn: db.Conn
) -> None:
    from selenium.webdriver.common.by import By

    run_id = seed_history(conn)
    with web_worker(spawn, db_url, RUN_ON_START="false") as (_, url):
        browser.get(f"{url}/runs/{run_id}")
        assert browser.find_element(By.ID, "output").text == f"upstream said: {HOSTILE}"
        assert HOSTILE in browser.find_element(By.ID, "result").text
        assert HOSTILE in browser.find_element(By.ID, "failures").text
        assert browser.find_elements(By.TAG_NAME, "img") == []
        assert no_alert_dialog(browser)
        browser.get(f"{url}/")
        assert HOSTILE in browser.find_element(By.ID, "alerts").text
        assert browser.find_elements(By.TAG_NAME, "img") == []
        assert no_alert_dialog(browser)


def screenshot(driver: Any, tmp_path: Path, name: str) -> None:
    folder = ROOT / "docs" if SCREENSHOTS else tmp_path
    folder.mkdir(exist_ok=True)
    driver.save_screenshot(str(folder / name))
