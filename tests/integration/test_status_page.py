"""The status page in a real browser (headless Debian chromium via Selenium) against a real agent
with a real model-server replica: the operator unlocks actions with the token, turns maintenance
on (with confirmation), a kill -9 takes the replica down and the page shows it down with the
firing rule's reason; maintenance off lets Warden restart it and the restart appears in the
timeline, verified, with its time to recover.

Set ``WARDEN_DOCS_SCREENSHOT=1`` to also write the screenshot the docs use
(``docs/img/status-page.png``); every run writes one into the test's temp directory.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.agent_harness import RunningAgent, running_agent
from tests.integration.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

DOCS_SCREENSHOT = REPO_ROOT / "docs" / "img" / "status-page.png"
PAGE_WAIT_S = 180.0
# The harness's policy with a longer verify timeout: on a loaded 2-core machine a restarted
# replica can take over a minute to load its model, and a failed verification would escalate.
POLICY = {"bake": "2s", "cooldown": "20s", "verify_timeout": "180s"}


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless chromium. A missing browser FAILS (CI installs it with scripts/browser.sh)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "chromium and chromedriver are needed for the status-page test; "
            "install them with: sudo bash scripts/browser.sh"
        )
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    try:
        session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    except WebDriverException as exc:
        pytest.fail(f"chromium did not start: {exc.msg}; check: bash scripts/browser.sh check")
    try:
        yield session
    finally:
        session.quit()


def exit_rule_only(root: Path) -> Path:
    """The shipped ``replica-exited`` rule alone. The page under test shows a kill -9 and its
    restart; on a busy 2-core machine a model load can outlast the 0.5 s health timeout and the
    one-minute ``not-ready`` rule, and their restarts would test the machine, not the page."""
    shipped = yaml.safe_load((REPO_ROOT / "rules" / "health.yaml").read_text())
    rules = root / "rules"
    rules.mkdir()
    kept = [r for r in shipped["rules"] if r["name"] == "replica-exited"]
    (rules / "health.yaml").write_text(yaml.safe_dump({"rules": kept}))
    return rules


def page_shows(
    browser: WebDriver, agent: RunningAgent, condition: Callable[[WebDriver], bool], what: str
) -> None:
    """Poll the page (it refreshes itself every 2 s) until ``condition`` holds."""

    def check(driver: WebDriver) -> bool:
        if agent.process is not None and agent.process.poll() is not None:
            raise RuntimeError(f"agent exited:\n{agent.logs()}")
        try:
            return condition(driver)
        except StaleElementReferenceException:  # the panels were swapped while we read them
            return False

    try:
        WebDriverWait(browser, PAGE_WAIT_S, poll_frequency=0.1).until(check, what)
    except Exception as exc:
        shown = text(browser, "body")
        raise AssertionError(f"page never showed {what}; it shows:\n{shown}") from exc


def text(browser: WebDriver, css: str) -> str:
    """The text of the first element matching ``css`` ("" if none), read in one script call:
    the panels are replaced every 2 s, so an element found in one call may be gone in the next."""
    found = browser.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", css
    )
    return str(found)


def replica_state(browser: WebDriver) -> tuple[str, str]:
    found = browser.execute_script(
        "const r = document.querySelector('#replicas tr[data-replica=\"inference-1\"]');"
        "return r ? [r.dataset.state, r.dataset.pid] : ['', ''];"
    )
    return str(found[0]), str(found[1])


def click(browser: WebDriver, css: str) -> None:
    """A real click on ``css``, found again if the panels were swapped under it."""

    def clicked(driver: WebDriver) -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
        except StaleElementReferenceException:
            return False
        return True

    WebDriverWait(browser, 10, poll_frequency=0.05).until(clicked, f"a click on {css}")


def confirm(browser: WebDriver, action: str) -> None:
    """Click an action button and confirm it in the page's dialog."""
    click(browser, f'button[data-action="{action}"]')
    dialog = browser.find_element(By.ID, "confirm")
    WebDriverWait(browser, 5).until(lambda _: dialog.is_displayed(), "the confirmation dialog")
    browser.find_element(By.ID, "confirm-ok").click()


def save_screenshot(browser: WebDriver, path: Path) -> bytes:
    """A full-page PNG (the part below the window too)."""
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    png = base64.b64decode(shot["data"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return png


def test_page_shows_a_killed_replica_down_and_its_restart_in_the_timeline(
    tmp_path: Path, browser: WebDriver
) -> None:
    rules = exit_rule_only(tmp_path)
    with running_agent(tmp_path, rules=rules, extra={"policy": POLICY}) as agent:
        agent.wait_serving("v1", timeout=PAGE_WAIT_S)
        browser.get(agent.api + "/")
        page_shows(browser, agent, lambda b: replica_state(b)[0] == "ready", "a ready replica")
        assert text(browser, "#current-release") == "v1"
        assert text(browser, ".controls") == ""  # no action buttons without the token

        browser.find_element(By.ID, "token-input").send_keys(agent.token)
        browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        confirm(browser, "maintenance-on")
        page_shows(
            browser,
            agent,
            lambda b: bool(b.find_elements(By.ID, "maintenance-flag")),
            "maintenance on",
        )

        (old_pid,) = agent.replica_pids()
        os.kill(old_pid, signal.SIGKILL)
        page_shows(browser, agent, lambda b: replica_state(b)[0] == "exited", "the replica down")
        firing = text(browser, "#firing")
        assert "replica-exited" in firing
        assert "inference-1 exited" in firing

        confirm(browser, "maintenance-off")
        restarted = '#timeline li[data-kind="restart"][data-status="verified"]'
        page_shows(
            browser,
            agent,
            lambda b: (
                bool(b.find_elements(By.CSS_SELECTOR, restarted))
                and replica_state(b)[0] == "ready"
                and replica_state(b)[1] not in ("", str(old_pid))
            ),
            "the restart verified in the timeline and the replica ready again",
        )
        entry = text(browser, restarted)
        assert "why: restart inference-1: inference-1 exited" in entry
        assert "recovered in" in entry
        assert "Nothing is firing." in text(browser, "#firing")

        page_shows(  # the new replica's canaries pass: a chart point, and v1 bakes to good
            browser,
            agent,
            lambda b: (
                bool(b.find_elements(By.CSS_SELECTOR, '.chart[data-signal="canary_pass_rate"]'))
                and text(b, "#last-good") == "v1"
            ),
            "the canary chart and v1 promoted good",
        )
        png = save_screenshot(browser, tmp_path / "status-page.png")
        assert png.startswith(b"\x89PNG")
        if os.environ.get("WARDEN_DOCS_SCREENSHOT") == "1":
            save_screenshot(browser, DOCS_SCREENSHOT)

        phone = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
        page_shows(browser, agent, lambda b: replica_state(b)[0] == "ready", "the page on a phone")
        # on a phone the page never scrolls sideways: wide tables scroll inside their card
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        save_screenshot(browser, tmp_path / "status-page-phone.png")
        assert overflow == 0
