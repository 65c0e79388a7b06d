"""docker-compose.yml for real: the inference and agent services on the engine.

The agent (in its own container, driving the engine through the mounted socket) adopts compose's
``inference`` container as its replica slot ``inference-1`` instead of starting a second one, and
heals it: ``kill -9`` of the model process in that container is seen and restarted.
"""

from __future__ import annotations

import secrets
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.docker.conftest import REPO
from tests.integration.polling import wait_until

pytestmark = [pytest.mark.docker]

PROJECT_LABEL = "warden.project=warden"
SERVICE_LABEL = "warden.service=inference"
START_TIMEOUT_S = 120.0  # image start + model load, on a busy 2-core machine


def _compose(env: dict[str, str], project: str, *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "-p", project, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose {' '.join(args)}:\n{result.stderr[-2000:]}"
    return result.stdout


def test_compose_file_is_valid(docker_env: dict[str, str]) -> None:
    services = _compose(docker_env, "warden-config-check", "config", "--services").split()
    assert {"inference", "agent", "prometheus", "alertmanager"} <= set(services)
    with_grafana = _compose(
        docker_env, "warden-config-check", "--profile", "grafana", "config", "--services"
    ).split()
    assert "grafana" in with_grafana


@dataclass(slots=True)
class ComposeStack:
    project: str
    env: dict[str, str]
    agent_url: str
    token: str

    def logs(self) -> str:
        return _compose(self.env, self.project, "logs", "--no-color", "--tail=60", timeout=60)

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.agent_url}/api/status", timeout=5.0)
        response.raise_for_status()
        return dict(response.json())


def _ours(docker_client: Any) -> list[Any]:
    """Every inference container of the compose project's agent scope (compose's or the agent's)."""
    return list(
        docker_client.containers.list(
            ignore_removed=True, all=True, filters={"label": [PROJECT_LABEL, SERVICE_LABEL]}
        )
    )


@pytest.fixture
def compose_stack(
    docker_client: Any, docker_env: dict[str, str], images: dict[str, str]
) -> Iterator[ComposeStack]:
    assert _ours(docker_client) == [], "containers of project 'warden' left by someone else"
    project = f"wardentest{uuid.uuid4().hex[:8]}"
    token = secrets.token_hex(16)
    env = {**docker_env, "WARDEN_TOKEN": token, "WARDEN_AGENT_BIND": "127.0.0.1:"}
    try:
        _compose(env, project, "up", "-d", "inference", "agent")
        address = _compose(env, project, "port", "agent", "9400").strip()
        yield ComposeStack(project=project, env=env, agent_url=f"http://{address}", token=token)
    finally:
        # The agent first (it would replace what is removed), then the replicas it started
        # itself (compose does not know them, and they hold the network), then the rest.
        _compose(env, project, "stop", "agent", timeout=120)
        for container in _ours(docker_client):
            container.remove(force=True, v=True)
        _compose(env, project, "down", "-v", "--remove-orphans", timeout=120)
    assert _ours(docker_client) == []
    assert (
        docker_client.containers.list(
            ignore_removed=True,
            all=True,
            filters={"label": f"com.docker.compose.project={project}"},
        )
        == []
    )


def test_compose_agent_adopts_the_inference_container_and_heals_a_kill(
    docker_client: Any, compose_stack: ComposeStack
) -> None:
    stack = compose_stack
    (compose_inference,) = docker_client.containers.list(
        ignore_removed=True,
        all=True,
        filters={"label": [f"com.docker.compose.project={stack.project}", SERVICE_LABEL]},
    )
    assert compose_inference.labels["warden.project"] == "warden"

    def serving(container_id: str | None = None, *, other_than: str | None = None) -> bool:
        try:
            replicas = stack.status()["replicas"]
        except httpx.HTTPError:
            return False
        if [r["id"] for r in replicas] != ["inference-1"] or not replicas[0]["ready"]:
            return False
        found = str(replicas[0]["container_id"])
        if container_id is not None and not container_id.startswith(found):
            return False
        return other_than is None or not other_than.startswith(found)

    wait_until(lambda: serving(compose_inference.id), timeout=START_TIMEOUT_S,
               what="the agent serving compose's inference container as inference-1",
               logs=stack.logs)  # fmt: skip
    assert [c.id for c in _ours(docker_client)] == [compose_inference.id]  # adopted, no twin
    assert stack.status()["current_release"] == "good"

    def health() -> str:
        compose_inference.reload()
        return str(compose_inference.attrs["State"].get("Health", {}).get("Status", "none"))

    wait_until(lambda: health() == "healthy", timeout=60, what="compose's HEALTHCHECK healthy",
               logs=stack.logs)  # fmt: skip
    (binding,) = compose_inference.attrs["NetworkSettings"]["Ports"]["8000/tcp"]
    assert binding["HostIp"] == "127.0.0.1"

    # kill -9 of the model process (PID 1 of the container: the container dies with it)
    compose_inference.kill(signal="SIGKILL")
    wait_until(lambda: serving(other_than=compose_inference.id), timeout=START_TIMEOUT_S,
               what="inference-1 back after kill -9", logs=stack.logs)  # fmt: skip

    actions = httpx.get(
        f"{stack.agent_url}/api/actions",
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=5.0,
    ).json()["actions"]
    restarts = [a for a in actions if a["kind"] == "restart" and a["subject"] == "inference-1"]
    assert restarts, actions
    running = [c for c in _ours(docker_client) if c.status == "running"]
    assert len(running) == 1, [(c.name, c.status) for c in _ours(docker_client)]
