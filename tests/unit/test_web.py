"""The status page served by the agent: what it shows, who may see and act, what it escapes,
and the rollout stages that ``warden deploy --wait`` follows."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.api import create_api
from agent.backends.base import ReleaseSpec
from agent.domain import ActionKind
from agent.history import SignalHistory
from agent.loop import Agent
from agent.state_schema import ActionStatus
from tests.unit.test_api import fake_agent

T0 = 1_700_000_000.0
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO_ROOT = Path(__file__).resolve().parents[2]
BAKE_S = 30.0


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with fake_agent(tmp_path, bake_s=BAKE_S) as built:
        yield built


def web(
    agent: Agent, *, read_open: bool = True, history: SignalHistory | None = None
) -> TestClient:
    return TestClient(
        create_api(
            agent, token=TOKEN, read_open=read_open, history=history, token_hint="$WARDEN_TOKEN"
        )
    )


def ticks(agent: Agent, count: int, every_s: float = 1.0) -> None:
    for _ in range(count):
        agent.tick()
        agent.clock.sleep(every_s)


# --- the page ----------------------------------------------------------------------------------


def test_page_shows_release_replica_and_last_good(agent: Agent) -> None:
    ticks(agent, 2)
    agent.store.mark_good("v1", T0 + 1, "baked 30 s")

    response = web(agent).get("/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert '<strong id="current-release">v1</strong>' in html
    assert '<strong id="last-good">v1</strong>' in html
    assert 'data-replica="inference-1" data-state="ready" data-pid="4242"' in html
    assert "12%" in html and "128 MiB" in html  # CPU and memory of the fake engine
    assert "Nothing is firing." in html


def test_page_sends_a_strict_content_security_policy(agent: Agent) -> None:
    response = web(agent).get("/")

    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "<script>" not in response.text  # no inline script: the policy would block it
    assert '<script src="/static/status.js" defer></script>' in response.text


def test_page_and_panels_escape_operator_text(agent: Agent) -> None:
    agent.deploy(ReleaseSpec(tag="v2"))
    agent.store.mark_bad("v2", T0, '<img src=x onerror="alert(1)">')

    html = web(agent).get("/ui/panels").text

    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html


def test_page_without_read_access_shows_only_the_token_prompt(agent: Agent) -> None:
    ticks(agent, 1)

    response = web(agent, read_open=False).get("/")

    assert response.status_code == 200
    assert "Enter it above to see the status." in response.text
    assert "inference-1" not in response.text
    assert "from $WARDEN_TOKEN" in response.text


def test_panels_need_the_token_when_reads_are_not_open(agent: Agent) -> None:
    client = web(agent, read_open=False)

    refused = client.get("/ui/panels")
    allowed = client.get("/ui/panels", headers=AUTH)

    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert 'id="current-release"' in allowed.text


def test_action_buttons_ask_for_confirmation_and_name_the_target(agent: Agent) -> None:
    agent.store.mark_good("v1", T0, "baked")
    agent.deploy(ReleaseSpec(tag="v2"))

    html = web(agent).get("/ui/panels").text

    assert 'data-path="/api/rollback"' in html
    assert 'data-confirm="Roll back v2 to v1? v2 will be marked bad."' in html
    assert "data-body='{\"on\": true}'" in html  # maintenance on
    assert 'class="control' in html  # hidden by the stylesheet until a token is entered


def test_timeline_shows_why_result_and_time_to_recover(agent: Agent) -> None:
    action = agent.store.begin_action(
        rule="replica-exited",
        subject="inference-1",
        kind=ActionKind.RESTART,
        target="inference-1",
        reason="restart inference-1: inference-1 exited (rule replica-exited)",
        now=T0,
    )
    agent.store.mark_action_applied(action.id, T0 + 0.5)
    agent.store.finish_action(action.id, ActionStatus.VERIFIED, "ready again", T0 + 4.25)

    html = web(agent).get("/ui/panels").text

    assert '<li data-kind="restart" data-status="verified">' in html
    assert "recovered in 4.2 s" in html
    assert "why: restart inference-1: inference-1 exited (rule replica-exited)" in html
    assert "result: ready again" in html


def test_release_history_says_how_far_each_release_got(agent: Agent) -> None:
    agent.store.mark_good("v1", T0 + 90, "baked")
    agent.clock.sleep(100)
    agent.deploy(ReleaseSpec(tag="v2"))
    agent.store.mark_bad("v2", T0 + 140, "canaries failed")
    agent.clock.sleep(100)
    agent.deploy(ReleaseSpec(tag="v3"))

    html = web(agent).get("/ui/panels").text

    assert "good after 90 s" in html
    assert "reverted after 40 s" in html
    assert "rolling out" in html


def test_charts_are_drawn_for_signals_with_data_and_named_when_missing(agent: Agent) -> None:
    history = SignalHistory()
    for i in range(3):
        history.add(T0 + 10 * i, {"canary_pass_rate": 1.0 - 0.25 * i, "drift_p_value": 0.5})

    html = web(agent, history=history).get("/ui/panels").text

    assert '<figure class="chart" data-signal="canary_pass_rate">' in html
    assert '<figure class="chart" data-signal="drift_p_value">' in html
    assert "canary pass rate <strong>50%</strong>" in html
    assert "No data yet: decay p-value, p95 latency, error rate." in html


def test_static_script_and_stylesheet_are_served_by_the_agent(agent: Agent) -> None:
    client = web(agent)

    script = client.get("/static/status.js")
    style = client.get("/static/status.css")

    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "/ui/panels" in script.text
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")


def test_templates_and_static_files_are_package_data() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["agent"]
    web_dir = REPO_ROOT / "agent" / "web"
    shipped = [
        p.relative_to(REPO_ROOT / "agent").as_posix()
        for p in web_dir.rglob("*")
        if p.is_file() and p.suffix in (".html", ".js", ".css")
    ]

    assert len(shipped) == 4
    assert all(any(fnmatch(f, pattern) for pattern in patterns) for f in shipped), shipped


# --- rollout stages ----------------------------------------------------------------------------


def test_rollout_of_a_candidate_goes_from_starting_to_baking_to_good(agent: Agent) -> None:
    client = web(agent)
    before = client.get("/api/rollout").json()
    ticks(agent, 2)
    baking = client.get("/api/rollout").json()
    ticks(agent, int(BAKE_S) + 2)
    done = client.get("/api/rollout", params={"release": "v1"}).json()

    assert (before["stage"], before["reason"]) == ("starting", "v1: 0 of 1 replicas ready")
    assert (baking["stage"], baking["bake_s"]) == ("baking", BAKE_S)
    assert 0 < baking["bake_left_s"] < BAKE_S
    assert baking["reason"].startswith("v1 is baking: ")
    assert (done["stage"], done["status"]) == ("good", "good")


def test_rollout_of_a_release_replaced_before_promotion_says_so(agent: Agent) -> None:
    agent.deploy(ReleaseSpec(tag="v2"))

    doc = web(agent).get("/api/rollout", params={"release": "v1"}).json()

    assert (doc["stage"], doc["reason"]) == (
        "replaced",
        "v1 was replaced by v2 before it was promoted",
    )


def test_rollout_of_an_unknown_release_is_404_with_what_to_do(agent: Agent) -> None:
    response = web(agent).get("/api/rollout", params={"release": "v9"})

    assert (response.status_code, response.json()) == (
        404,
        {"detail": "release v9 is unknown; `warden releases` lists them"},
    )


def test_history_endpoint_returns_the_recorded_points(agent: Agent) -> None:
    history = SignalHistory()
    ticks(agent, 2)  # the first tick starts the replica; the second runs its canaries
    history.record(agent.mem.last_observation)

    doc = web(agent, history=history).get("/api/history").json()

    assert doc["resolution_s"] == 10.0
    [point] = doc["points"]
    assert (point["at"], point["canary_pass_rate"], point["replicas_ready"]) == (T0 + 1, 1.0, 1.0)
