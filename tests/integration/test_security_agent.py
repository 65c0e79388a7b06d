"""The agent's security promises, proven on a real agent process on loopback.

One agent (process backend, ``tests/integration/fake_server.py`` as the replica: no torch) runs
with the default token, a named token ``ops`` and a signed webhook. An operator deploys, rolls
back and flips maintenance and freeze with both tokens, a replica is killed so that a signed
alert goes out; then the tests check who the audit log says asked, that no secret appears in any
log, state file or API answer, and that a client trickling a request is cut off.
"""

from __future__ import annotations

import http.server
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.alerts import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from tests.integration.agent_harness import (
    RunningAgent,
    _kill_leftover_replicas,
    healing_rules,
    write_config,
)
from tests.integration.conftest import REPO_ROOT, free_port
from tests.integration.polling import wait_until
from tests.integration.slow_client import host_port, seconds_until_cut_off

pytestmark = pytest.mark.integration

FAKE_SERVER = str(REPO_ROOT / "tests" / "integration" / "fake_server.py")
DEFAULT_TOKEN = "default-tok-3f9a1c77e2b44d"
OPS_TOKEN = "ops-tok-8d2e6b01c94f5a"
WEBHOOK_SECRET = "hook-secret-5c7e29d18ab3f0"
SECRETS = (DEFAULT_TOKEN, OPS_TOKEN, WEBHOOK_SECRET)
REQUEST_TIMEOUT_S = 1.0
CANARIES = """\
task: classify
canaries:
  - {name: refund, input: refund me, expected: billing, min_confidence: 0.3}
"""


class _Hooks(http.server.ThreadingHTTPServer):
    received: list[tuple[dict[str, str], bytes]]


class _HookHandler(http.server.BaseHTTPRequestHandler):
    server: _Hooks

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((dict(self.headers.items()), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Scenario:
    agent: RunningAgent
    hooks: list[tuple[dict[str, str], bytes]]
    answers: dict[str, str]  # every GET answer of the API after the scenario, by path


def _as(agent: RunningAgent, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(agent.api + path, json=body, headers=headers, timeout=10.0)


def _release_status(agent: RunningAgent, tag: str) -> str:
    return next(
        (r["status"] for r in agent.get("/api/releases")["releases"] if r["tag"] == tag), ""
    )


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("security-agent")
    hooks = _Hooks(("127.0.0.1", 0), _HookHandler)
    hooks.received = []
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    saved = {k: os.environ.get(k) for k in ("WARDEN_OPS_TOKEN", "WARDEN_HOOK_SECRET")}
    os.environ["WARDEN_OPS_TOKEN"] = OPS_TOKEN  # the harness passes os.environ to the agent
    os.environ["WARDEN_HOOK_SECRET"] = WEBHOOK_SECRET
    canaries = root / "canaries.yaml"  # what the stand-in server answers: all billing
    canaries.write_text(CANARIES, encoding="utf-8")
    extra = {
        "canaries": str(canaries),
        "backend": {
            "kind": "process",
            "replicas": 1,
            "port": free_port(),
            "command": [sys.executable, FAKE_SERVER],
        },
        "api": {
            "bind": f"127.0.0.1:{free_port()}",
            "tokens": [{"name": "ops", "env": "WARDEN_OPS_TOKEN"}],
            "request_timeout": f"{REQUEST_TIMEOUT_S}s",
        },
        "alerts": [
            {
                "kind": "webhook",
                "url": f"http://127.0.0.1:{hooks.server_address[1]}/hook",
                "secret_env": "WARDEN_HOOK_SECRET",
            }
        ],
        "policy": {"bake": "1s", "cooldown": "1s", "verify_timeout": "30s"},
    }
    try:
        with _agent(root, extra) as agent:
            _operate(agent, hooks.received)
            answers = {path: _get_text(agent, path) for path in _get_paths(agent)}
            yield Scenario(agent=agent, hooks=hooks.received, answers=answers)
    finally:
        hooks.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _agent(root: Path, extra: dict[str, Any]) -> Iterator[RunningAgent]:
    """``running_agent``, but with our default token (it starts with its own)."""
    config = write_config(root, rules=healing_rules(root), extra=extra)
    api = f"http://{yaml.safe_load(config.read_text())['api']['bind']}"
    agent = RunningAgent(root=root, config_path=config, api=api, server_port=0, token=DEFAULT_TOKEN)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        _kill_leftover_replicas(root / "state")


def _operate(agent: RunningAgent, hooks: list[tuple[dict[str, str], bytes]]) -> None:
    """What operators do: a deploy and a rollback, maintenance, a freeze; and a crash."""
    agent.wait_serving("v1", timeout=60)
    wait_until(lambda: _release_status(agent, "v1") == "good", timeout=30, what="v1 good")
    assert _as(agent, OPS_TOKEN, "/api/deploy", {"tag": "v2"}).status_code == 202
    agent.wait_serving("v2", timeout=60)
    assert _as(agent, DEFAULT_TOKEN, "/api/rollback", {"to": "v1"}).status_code == 202
    agent.wait_serving("v1", timeout=60)
    for token, path in ((OPS_TOKEN, "/api/maintenance"), (DEFAULT_TOKEN, "/api/freeze")):
        assert _as(agent, token, path, {"on": True}).status_code == 200
        assert _as(agent, token, path, {"on": False}).status_code == 200
    os.kill(agent.replica_pids()[0], signal.SIGKILL)  # replica-exited alerts the webhook
    wait_until(lambda: bool(hooks), timeout=30, what="a signed webhook", logs=agent.logs)


def _get_paths(agent: RunningAgent) -> list[str]:
    schema = httpx.get(agent.api + "/openapi.json", timeout=5.0).json()
    paths = [p for p, ops in schema["paths"].items() if "get" in ops and "{" not in p]
    return sorted({*paths, "/", "/openapi.json", "/docs"})


def _get_text(agent: RunningAgent, path: str) -> str:
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    return httpx.get(agent.api + path, headers=headers, timeout=5.0).text


def test_the_audit_log_names_the_token_that_asked_for_each_manual_action(
    scenario: Scenario,
) -> None:
    manual = [
        (r["kind"], r.get("by"))
        for r in scenario.agent.audit()
        if r["kind"] in ("deploy", "rollback", "flags")
    ]

    assert manual == [
        ("deploy", "ops"),
        ("rollback", "default"),
        ("flags", "ops"),
        ("flags", "ops"),
        ("flags", "default"),
        ("flags", "default"),
    ]


def test_records_the_agent_wrote_on_its_own_name_nobody(scenario: Scenario) -> None:
    automatic = [r for r in scenario.agent.audit() if r["kind"] in ("decision", "promote")]

    assert automatic
    assert all("by" not in r for r in automatic)


def test_the_webhook_was_signed_with_the_secret(scenario: Scenario) -> None:
    headers, body = scenario.hooks[0]

    assert verify_signature(
        WEBHOOK_SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER]
    )


def test_no_secret_appears_in_the_logs_state_files_or_api_answers(scenario: Scenario) -> None:
    agent = scenario.agent
    places = {f"log {p.name}": p.read_bytes() for p in agent.root.glob("*.log")}
    places |= {f"state {p}": p.read_bytes() for p in agent.root.rglob("state/**/*") if p.is_file()}
    places |= {f"GET {path}": text.encode() for path, text in scenario.answers.items()}
    places["config"] = agent.config_path.read_bytes()

    leaks = [(where, s) for where, data in places.items() for s in SECRETS if s.encode() in data]

    assert "/api/status" in scenario.answers and len(places) > 10
    assert any(b"ops" in data for where, data in places.items() if "audit" in where)
    assert leaks == []


def test_a_wrong_token_is_refused_and_a_right_one_is_not_echoed(scenario: Scenario) -> None:
    agent = scenario.agent
    wrong = _as(agent, OPS_TOKEN + "x", "/api/freeze", {"on": True})
    right = _as(agent, OPS_TOKEN, "/api/freeze", {"on": False})

    assert (wrong.status_code, wrong.json()) == (401, {"detail": "missing or wrong bearer token"})
    assert right.status_code == 200
    assert OPS_TOKEN not in right.text


SLOW_HEAD = b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
SLOW_BODY_HEAD = (
    b"POST /api/freeze HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 40\r\n\r\n"
)
CUT_OFF_WITHIN_S = REQUEST_TIMEOUT_S + 3  # the deadline, plus a busy machine's slack


def test_a_client_sending_its_headers_one_byte_a_second_is_cut_off(scenario: Scenario) -> None:
    seconds = seconds_until_cut_off(*host_port(scenario.agent.api), SLOW_HEAD)

    assert seconds is not None, "the agent waited for the whole trickled request"
    assert seconds < CUT_OFF_WITHIN_S


def test_a_client_sending_its_body_one_byte_a_second_is_cut_off(scenario: Scenario) -> None:
    body = b'{"on": false}' + b" " * 27
    seconds = seconds_until_cut_off(*host_port(scenario.agent.api), body, head=SLOW_BODY_HEAD)

    assert seconds is not None, "the agent waited for the whole trickled body"
    assert seconds < CUT_OFF_WITHIN_S


def test_a_prompt_client_on_a_kept_alive_connection_is_served(scenario: Scenario) -> None:
    with httpx.Client(base_url=scenario.agent.api, timeout=5.0) as client:
        first = client.get("/api/status")
        second = client.get("/api/releases")  # the same connection, within the allowance

    assert (first.status_code, second.status_code) == (200, 200)
