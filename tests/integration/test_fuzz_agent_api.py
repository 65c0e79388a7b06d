"""Property-based fuzzing of the agent's HTTP API from its own ``/openapi.json``.

The real API (``create_api`` over a real ``Agent`` with its SQLite state, audit log and process
backend, served by uvicorn with the slow-client guard on a loopback port, as ``Runtime`` does)
gets schemathesis-generated valid and invalid requests for every operation, with the token so
the mutating endpoints are fuzzed past authentication: no 5xx, no hang, answers as the schema
says (tests/integration/fuzz_support.py). Ticks do not run, so a fuzzed deploy only records.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
import yaml

from agent.api import create_api
from agent.app import build_agent
from agent.config import load_config
from agent.slow_clients import guarded_http
from tests.integration.conftest import REPO_ROOT, free_port
from tests.integration.fuzz_support import fuzz_operation, operations
from tests.integration.polling import wait_until

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token"
OPERATIONS = {
    ("GET", "/metrics"): 10,
    ("GET", "/api/status"): 10,
    ("GET", "/api/releases"): 10,
    ("GET", "/api/actions"): 40,
    ("GET", "/api/events"): 40,
    ("GET", "/api/history"): 10,
    ("GET", "/api/rollout"): 40,
    ("GET", "/api/rules"): 10,
    ("GET", "/api/feedback"): 10,
    ("POST", "/api/feedback"): 60,
    ("POST", "/api/deploy"): 80,
    ("POST", "/api/rollout/{command}"): 20,
    ("POST", "/api/rollback"): 40,
    ("POST", "/api/maintenance"): 20,
    ("POST", "/api/freeze"): 20,
}


@pytest.fixture(scope="module")
def agent_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz-agent")
    config = root / "warden.yaml"
    fake_server = str(REPO_ROOT / "tests" / "integration" / "fake_server.py")
    config.write_text(
        yaml.safe_dump(
            {
                "backend": {"command": [sys.executable, fake_server], "port": free_port()},
                "rules": str(REPO_ROOT / "rules"),
                "canaries": str(REPO_ROOT / "rules" / "canaries.yaml"),
                "state_dir": str(root / "state"),
            }
        )
    )
    agent = build_agent(load_config(config))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_api(agent, token=TOKEN),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            http=guarded_http(5.0),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: server.started, timeout=30, what="the agent API to listen")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        agent.observer.close()
        agent.backend.close()


@pytest.fixture(scope="module")
def agent_schema(agent_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(agent_url + "/openapi.json")


def test_every_operation_of_the_schema_is_fuzzed(agent_schema: schemathesis.BaseSchema) -> None:
    assert operations(agent_schema) == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS))
def test_agent_operation_never_fails_and_answers_as_its_schema_says(
    agent_schema: schemathesis.BaseSchema, agent_url: str, method: str, path: str
) -> None:
    sent = fuzz_operation(
        agent_schema,
        method,
        path,
        base_url=agent_url,
        max_examples=OPERATIONS[(method, path)],
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    assert sent >= 1  # an operation without parameters has one distinct request


def test_the_fuzzed_agent_still_answers(agent_url: str) -> None:
    assert httpx.get(agent_url + "/api/status", timeout=5.0).status_code == 200
