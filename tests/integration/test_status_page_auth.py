"""The status page's token handling in a real browser, against the real API app served by uvicorn
(an agent built from fakes: no model server needed, so this takes seconds): with reads closed the
page shows nothing until the token is entered; actions need a confirmation, a cancelled one does
nothing, a refused one shows the agent's reason, a wrong token is forgotten; and when the agent
goes away the page says so and keeps the last panels.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from agent.api import create_api
from agent.loop import Agent
from tests.integration.conftest import free_port
from tests.integration.polling import wait_until
from tests.integration.test_status_page import browser, click, text  # noqa: F401 (fixture)
from tests.unit.test_web import TOKEN, agent  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration
WAIT_S = 20.0


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def closed_api(agent: Agent) -> Iterator[Served]:  # noqa: F811
    """The API app with ``read_open: false`` on a loopback port, after two ticks."""
    agent.tick()
    agent.clock.sleep(1.0)
    agent.tick()
    port = free_port()
    config = uvicorn.Config(
        create_api(agent, token=TOKEN, read_open=False, token_hint="$WARDEN_TOKEN"),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=WAIT_S, what="uvicorn to start")
    served = Served(url=f"http://127.0.0.1:{port}", server=server, thread=thread)
    yield served
    served.stop()


def shows(browser: WebDriver, css: str, words: str) -> None:  # noqa: F811
    WebDriverWait(browser, WAIT_S, poll_frequency=0.05).until(
        lambda b: words in text(b, css), f"{css} to show {words!r}"
    )


def enter_token(browser: WebDriver, token: str) -> None:  # noqa: F811
    browser.find_element(By.ID, "token-input").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()


def test_closed_reads_show_nothing_until_the_token_and_actions_confirm_first(
    browser: WebDriver,  # noqa: F811
    closed_api: Served,
    agent: Agent,  # noqa: F811
) -> None:
    browser.get(closed_api.url + "/")
    shows(browser, "#panels", "Enter it above to see the status.")
    shows(browser, "#conn", "needs the API token")
    assert "inference-1" not in text(browser, "body")

    enter_token(browser, TOKEN)
    shows(browser, "#replicas", "inference-1")
    assert text(browser, "#current-release") == "v1"

    click(browser, 'button[data-action="rollback"]')
    shows(browser, "#confirm-text", "Roll back v1 to the newest good release before it?")
    browser.find_element(By.ID, "confirm-cancel").click()
    assert agent.store.actions() == []  # cancelled: nothing was sent

    click(browser, 'button[data-action="rollback"]')
    browser.find_element(By.ID, "confirm-ok").click()
    shows(browser, "#notice", "Roll back refused: no good release to roll back to")
    assert agent.store.actions() == []

    browser.find_element(By.ID, "lock").click()
    enter_token(browser, "not-the-token")
    click(browser, 'button[data-action="maintenance-on"]')
    browser.find_element(By.ID, "confirm-ok").click()
    shows(browser, "#notice", "refused: missing or wrong bearer token. Enter the right token.")
    desired = agent.store.desired()
    assert desired is not None
    assert desired.maintenance is False
    assert text(browser, ".controls") == ""  # the wrong token was forgotten: no buttons

    closed_api.stop()
    shows(browser, "#conn", "agent not reachable since")
    assert "inference-1" in text(browser, "#replicas")  # the last panels stay on screen
