"""The images of scripts/engine.sh on a real engine: good serves, bad fails canaries, broken never
becomes ready; HEALTHCHECK, non-root user, the agent image without torch."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.docker.conftest import AGENT_IMAGE
from tests.docker.helpers import Replica, host_port, wait_health, wait_ready

# A phrase of the golden set that is NOT one of the intents' example phrases.
GOLDEN_TEXT = "I was billed twice this month and want my money back"
GOLDEN_LABEL = "billing"


@pytest.fixture(scope="module")
def good(docker_client: Any, images: dict[str, str]) -> Any:
    """One good replica shared by the tests of this module (a start costs ~3 s)."""
    container = docker_client.containers.run(
        images["good"],
        detach=True,
        name=f"warden-test-good-{uuid.uuid4().hex[:8]}",
        labels={"warden.test": "images", "warden.project": "warden-tests"},
        ports={"8000/tcp": ("127.0.0.1", None)},
    )
    try:
        port = host_port(container, time.monotonic() + 15)
        replica = Replica(container, port, f"http://127.0.0.1:{port}", images["good"])
        wait_ready(replica, timeout=90)
        yield replica
    finally:
        container.remove(force=True, v=True)


def predict(replica: Replica, text: str) -> dict[str, Any]:
    response = httpx.post(f"{replica.url}/predict", json={"inputs": text}, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json()["predictions"][0])


def test_good_image_is_ready_and_reports_its_release(good: Replica) -> None:
    assert httpx.get(f"{good.url}/health", timeout=2).status_code == 200
    ready = httpx.get(f"{good.url}/ready", timeout=2).json()
    assert ready["ready"] is True
    version = httpx.get(f"{good.url}/version", timeout=2).json()
    assert version["release"] == "good"
    metrics = httpx.get(f"{good.url}/metrics", timeout=2).text
    assert "inference_model_info{" in metrics and 'release="good"' in metrics


def test_good_image_labels(docker_client: Any, images: dict[str, str]) -> None:
    image = docker_client.images.get(images["good"])
    labels = image.labels
    assert labels["org.opencontainers.image.version"] == "good"
    assert labels["warden.release"] == "good"
    assert "warden.source-hash" in labels  # what engine.sh compares to skip rebuilds
    env = dict(item.split("=", 1) for item in image.attrs["Config"]["Env"])
    assert env["WARDEN_RELEASE"] == "good"
    assert "8000/tcp" in image.attrs["Config"]["ExposedPorts"]


def test_good_image_answers_the_golden_phrase(good: Replica) -> None:
    prediction = predict(good, GOLDEN_TEXT)
    assert prediction["label"] == GOLDEN_LABEL, prediction


def test_healthcheck_turns_healthy(docker_client: Any, good: Replica) -> None:
    health = good.container.attrs["Config"]["Healthcheck"]
    assert health["Interval"] == 5_000_000_000 and health["Timeout"] == 2_000_000_000
    status = wait_health(docker_client, good, "healthy", timeout=45)
    assert status == "healthy", good.container.attrs["State"].get("Health")


def test_runs_as_non_root(good: Replica) -> None:
    user = good.container.attrs["Config"]["User"]
    assert user and not user.startswith(("0", "root")), user
    exit_code, output = good.container.exec_run(["id", "-u"])
    assert exit_code == 0
    assert int(output.decode().strip()) != 0


def test_broken_image_never_becomes_ready_and_says_why(
    images: dict[str, str], run_replica: Callable[..., Replica]
) -> None:
    replica = run_replica(images["broken"])
    deadline = time.monotonic() + 25
    reason = ""
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if replica.status() in {"exited", "dead"}:
                reason = f"exited: {replica.logs(tail=20)}"
                break
            try:
                response = http.get(f"{replica.url}/ready")
            except httpx.HTTPError:
                time.sleep(0.25)
                continue
            assert response.status_code != 200, "the broken release became ready"
            body = response.json()
            assert body["ready"] is False
            reason = str(body.get("reason") or "")
            # Keep polling a little after the load failed: it must stay unready.
            if reason and "load" in reason.lower() and time.monotonic() > deadline - 15:
                break
            time.sleep(0.5)
    assert reason, "the broken release gave no reason for not being ready"
    lowered = reason.lower()
    assert any(word in lowered for word in ("config", "json", "model", "load")), reason


def test_bad_image_serves_but_fails_its_canary(
    images: dict[str, str], run_replica: Callable[..., Replica]
) -> None:
    replica = run_replica(images["bad"])
    ready = wait_ready(replica, timeout=90)
    assert ready["ready"] is True
    version = httpx.get(f"{replica.url}/version", timeout=2).json()
    assert version["release"] == "bad"
    prediction = predict(replica, GOLDEN_TEXT)
    assert prediction["label"] != GOLDEN_LABEL, prediction


def test_agent_image_has_no_torch(docker_client: Any, images: dict[str, str]) -> None:
    code = (
        "import importlib.util, sys; "
        "sys.exit(0 if importlib.util.find_spec('torch') is None "
        "and importlib.util.find_spec('agent') is not None else 1)"
    )
    docker_client.containers.run(AGENT_IMAGE, ["python", "-c", code], remove=True)
    image = docker_client.images.get(AGENT_IMAGE)
    assert image.attrs["Config"]["User"] not in ("", "0", "root")
    assert image.attrs["Config"]["Cmd"][:2] == ["warden", "agent"]
