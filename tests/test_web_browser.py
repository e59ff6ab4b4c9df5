"""The dashboard in a real headless Chromium: Basic auth, forms, escaping, a screenshot.

Needs Debian's `chromium` and `chromium-driver` (.ci/run installs them). Without them a
developer's run skips these tests; under CI (CI=true) they fail instead.
"""

from __future__ import annotations

import base64
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
    WebDriverWait(driver, 10).until(lambda _: _gone(page))
    WebDriverWait(driver, 10).until(
        expected_conditions.presence_of_element_located((By.ID, "notice"))
    )


def notice(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, "notice").text)


def test_dashboard_pause_and_run_now_with_basic_auth(
    browser: Any, spawn: Spawn, db_url: str, conn: db.Conn
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
        assert browser.find_element(By.CSS_SELECTOR, 'tr[data-job="quota"]').is_displayed()
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


def screenshot(driver: Any, tmp_path: Path, name: str, through: str | None = None) -> None:
    """The window as it shows; with `through` (an element id), the page from its top down to
    that element's bottom, however far below the window that is. Into docs/ when
    UPDATE_SCREENSHOTS=1 (the README's images), else into the test's temp folder."""
    folder = ROOT / "docs" if SCREENSHOTS else tmp_path
    folder.mkdir(exist_ok=True)
    if through is None:
        driver.save_screenshot(str(folder / name))
        return
    bottom = driver.execute_script(
        "var r = document.getElementById(arguments[0]).getBoundingClientRect();"
        " return r.bottom + window.scrollY + 12;",
        through,
    )
    width = driver.execute_script("return document.documentElement.clientWidth")
    clip = {"x": 0, "y": 0, "width": width, "height": bottom, "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    (folder / name).write_bytes(base64.b64decode(shot["data"]))


def submit(driver: Any, button_id: str) -> None:
    """Press a form's button and wait for the page it leads to."""
    follow(driver, f"#{button_id}")


def follow(driver: Any, selector: str) -> None:
    """Click what `selector` finds (a link, a button) and wait for the page it leads to.

    A page that refreshes itself swaps its content in place (templates/base.html): an
    element found just before a swap is gone when clicked, and is found again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    for attempt in range(3):
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
            break
        except Exception as exc:
            if not _detached(exc) or attempt == 2:
                raise
    WebDriverWait(driver, 10).until(lambda _: _gone(page))


def _gone(element: Any) -> bool:
    """The element left the document (its page was replaced by the next one)."""
    try:
        element.is_enabled()
    except Exception as exc:
        if _detached(exc):
            return True
        raise
    return False


def _detached(exc: BaseException) -> bool:
    """Chromium's two ways of saying an element is no longer in the document: a stale
    reference, or (while a page is being replaced) a node that "does not belong to the
    document"."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    return isinstance(exc, StaleElementReferenceException) or (
        isinstance(exc, WebDriverException) and "does not belong to the document" in str(exc)
    )


def test_create_a_job_from_the_form_run_it_with_parameters_and_cancel_a_run(
    browser: Any, spawn: Spawn, db_url: str, conn: db.Conn, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    from tests.support.jobruns import wait_until as first_true
    from tests.test_runtime import SLOW, SYNC, runtime_env

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "sync.py").write_text(SYNC, encoding="utf-8")
    (scripts / "slow.py").write_text(SLOW, encoding="utf-8")
    env = runtime_env(scripts, tmp_path)
    with web_worker(spawn, db_url, service="jobs", **env) as (_, url):
        browser.get(url.replace("http://", f"http://admin:{TOKEN}@") + "/")
        browser.find_element(By.ID, "new-job").click()
        handlers = browser.find_element(By.ID, "handlers").text
        assert "Sync accounts" in handlers and "Pull accounts from the CRM." in handlers
        browser.get(f"{url}/new-job?handler=scripts:sync")
        browser.find_element(By.ID, "name").send_keys("crm_pull")
        browser.find_element(By.ID, "schedule").send_keys("manual")
        browser.find_element(By.ID, "kw-days").send_keys("3")
        browser.find_element(By.ID, "kw-target").send_keys("eu")
        submit(browser, "save")
        assert notice(browser) == "Created crm_pull."
        row = conn.execute("SELECT definition FROM worker_jobs WHERE job = 'crm_pull'").fetchone()
        assert row is not None and row["definition"]["kwargs"] == {"days": 3, "target": "eu"}

        browser.get(f"{url}/jobs/crm_pull")
        days = browser.find_element(By.ID, "kw-days")
        days.clear()
        days.send_keys("30")
        submit(browser, "run-with-submit")
        assert notice(browser).startswith("Run of crm_pull requested")
        wait_until(lambda: manual_run_status(conn) == "success", timeout_s=20)
        ran = conn.execute("SELECT kwargs, result FROM worker_job_runs WHERE job = 'crm_pull'")
        [run] = ran.fetchall()
        assert run["kwargs"] == {"days": 30, "target": "eu"} and run["result"]["days"] == 30

        browser.get(f"{url}/new-job?handler=scripts:slow")
        browser.find_element(By.ID, "name").send_keys("long_haul")
        browser.find_element(By.ID, "schedule").send_keys("manual")
        submit(browser, "save")
        browser.get(f"{url}/jobs/long_haul")
        submit(browser, "run-with-submit")
        run_id = first_true(
            lambda: conn.execute(
                "SELECT id FROM worker_job_runs WHERE job = 'long_haul' AND progress_done >= 2"
            ).fetchone(),
            20,
        )["id"]
        browser.get(f"{url}/runs/{run_id}")
        assert browser.find_element(By.ID, "progress").get_attribute("max") == "30"
        screenshot(browser, tmp_path, "run-live.png")
        submit(browser, "cancel")
        assert notice(browser).startswith(f"Run {run_id} asked to stop")
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT status FROM worker_job_runs WHERE id = %s", (run_id,)
                ).fetchone()["status"]
                == "cancelled"
            ),
            timeout_s=20,
        )

        browser.get(f"{url}/jobs/long_haul/delete")
        submit(browser, "confirm-delete")
        assert notice(browser) == "Deleted long_haul."
        assert conn.execute("SELECT 1 FROM worker_jobs WHERE job = 'long_haul'").fetchone() is None
    assert no_alert_dialog(browser)
