"""Fixtures for tests against a real Docker engine (tests/docker/).

The engine and the images come from ``scripts/engine.sh`` (run as root; it writes
``.warden-engine.env`` with ``DOCKER_HOST``). When no engine answers, these tests FAIL under CI (env
``CI`` set) and are skipped on a developer machine, both with the command to run.

Helpers for other Docker tests:

- ``docker_client``: docker SDK client (session), ``docker_env``: ``os.environ`` + ``DOCKER_HOST``
  for ``docker`` / ``docker-compose`` subprocesses.
- ``images``: asserts the release images exist; maps ``good``/``bad``/``broken`` to image names.
- ``run_replica``: starts a labelled container on a random loopback host port and removes it at
  teardown. ``tests/docker/helpers.py``: ``wait_ready(replica)`` polls ``/ready`` with a deadline,
  ``wait_health`` polls the HEALTHCHECK status, ``host_port`` reads the published port.
"""

from __future__ import annotations

import os
import shlex
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.docker.helpers import Replica, host_port

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = REPO / ".warden-engine.env"
SETUP_HINT = (
    "run `sudo bash scripts/engine.sh` (starts dockerd on unix:///run/warden-docker.sock and "
    "builds the images offline), then `. ./.warden-engine.env`"
)
INFERENCE_REPO = os.environ.get("WARDEN_INFERENCE_REPO", "warden-inference")
RELEASES = ("good", "bad", "broken")
AGENT_IMAGE = os.environ.get("WARDEN_AGENT_IMAGE", "warden-agent:latest")
# Everything these tests start carries this label; after an interrupted run clean up with
#   docker rm -f $(docker ps -aq -f label=warden.test)
TEST_LABEL = "warden.test"
SESSION_ID = uuid.uuid4().hex[:8]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.docker)


def engine_env() -> dict[str, str]:
    """``os.environ`` plus the engine variables (``DOCKER_HOST``, ...) from .warden-engine.env."""
    env = dict(os.environ)
    if ENV_FILE.is_file():
        for raw in ENV_FILE.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if line.startswith("export "):
                line = line[len("export ") :]
            if "=" not in line or line.startswith("#"):
                continue
            key, value = line.split("=", 1)
            parts = shlex.split(value)
            # An explicit DOCKER_HOST in the environment wins over the file.
            env.setdefault(key.strip(), parts[0] if parts else "")
    return env


def _engine_unavailable(message: str) -> None:
    text = f"Docker engine not reachable: {message}. {SETUP_HINT}"
    if os.environ.get("CI"):
        pytest.fail(text, pytrace=False)
    pytest.skip(text)


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    return engine_env()


@pytest.fixture(scope="session")
def docker_client(docker_env: dict[str, str]) -> Iterator[Any]:
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a base dependency
        _engine_unavailable(f"the docker SDK is not installed ({exc})")
    host = docker_env.get("DOCKER_HOST")
    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=60) if host else None
        client = client or docker.from_env(version="auto", timeout=60)
        client.ping()
    except Exception as exc:
        _engine_unavailable(f"{host or 'default socket'}: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client: Any) -> dict[str, str]:
    """The release images built by scripts/engine.sh, by release name."""
    import docker.errors

    names = {release: f"{INFERENCE_REPO}:{release}" for release in RELEASES}
    missing = []
    for name in names.values():
        try:
            docker_client.images.get(name)
        except docker.errors.ImageNotFound:
            missing.append(name)
    assert not missing, f"images missing: {', '.join(missing)}; {SETUP_HINT}"
    return names


@pytest.fixture
def run_replica(docker_client: Any) -> Iterator[Callable[..., Replica]]:
    """Factory: ``run_replica(image, **docker_run_kwargs) -> Replica``; removed at teardown."""
    started: list[Any] = []

    def start(image: str, *, labels: dict[str, str] | None = None, **kwargs: Any) -> Replica:
        all_labels = {
            TEST_LABEL: SESSION_ID,
            "warden.project": "warden-tests",
            "warden.service": "inference-test",
            **(labels or {}),
        }
        container = docker_client.containers.run(
            image,
            detach=True,
            name=f"warden-test-{SESSION_ID}-{len(started)}-{uuid.uuid4().hex[:4]}",
            labels=all_labels,
            ports={"8000/tcp": ("127.0.0.1", None)},
            **kwargs,
        )
        started.append(container)
        port = host_port(container, time.monotonic() + 15)
        return Replica(container=container, port=port, url=f"http://127.0.0.1:{port}", image=image)

    yield start
    for container in started:
        try:
            container.remove(force=True, v=True)
        except Exception as exc:  # already gone is fine; anything else is worth a line
            print(f"cleanup: {container.name}: {exc}")


# --- Swarm (tests/docker/test_swarm.py) ---------------------------------------------------------

SWARM_INIT = {"advertise_addr": "127.0.0.1", "listen_addr": "127.0.0.1:2377"}


def _swarm_state(client: Any) -> tuple[str, bool]:
    swarm = client.info().get("Swarm", {})
    return str(swarm.get("LocalNodeState", "")), bool(swarm.get("ControlAvailable"))


@pytest.fixture(scope="session")
def swarm(docker_client: Any) -> Any:
    """The engine as a Swarm manager: ``docker swarm init --advertise-addr 127.0.0.1
    --listen-addr 127.0.0.1:2377`` unless it already is one (idempotent; the swarm is left in
    place for the next run). Yields the docker client."""
    import docker.errors

    state, manager = _swarm_state(docker_client)
    if state == "inactive":
        try:
            docker_client.swarm.init(**SWARM_INIT)
        except docker.errors.APIError as exc:  # a parallel session may have just done it
            if "already part of a swarm" not in str(exc):
                raise
        state, manager = _swarm_state(docker_client)
    assert state == "active" and manager, (
        f"the engine is in Swarm state {state!r} (manager: {manager}); Swarm tests need a "
        "manager: `docker swarm leave --force` then rerun, or run `docker swarm init "
        "--advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377`"
    )
    return docker_client


# --- Docker backend (tests/docker/test_docker_backend.py, test_docker_healing.py) ---------------


@pytest.fixture(scope="session")
def test_network(docker_client: Any) -> Iterator[str]:
    """A user-defined bridge network for the backend's replicas, removed at the end of the
    session (replicas on it are reached at their published loopback port as usual)."""
    name = f"warden-test-{SESSION_ID}"
    docker_client.networks.create(name, driver="bridge", labels={TEST_LABEL: SESSION_ID})
    yield name
    for network in docker_client.networks.list(names=[name]):
        try:
            network.remove()
        except Exception as exc:
            print(f"cleanup: network {name}: {exc}")


def remove_project(docker_client: Any, project: str) -> None:
    """Remove every container labelled ``warden.project=<project>`` (what a backend created)."""
    for container in docker_client.containers.list(
        ignore_removed=True, all=True, filters={"label": f"warden.project={project}"}
    ):
        try:
            container.remove(force=True, v=True)
        except Exception as exc:
            print(f"cleanup: {container.name}: {exc}")


@pytest.fixture
def backend_project(docker_client: Any) -> Iterator[str]:
    """A fresh ``warden.project`` for one test; its containers are removed at teardown."""
    project = f"wt-{SESSION_ID}-{uuid.uuid4().hex[:6]}"
    yield project
    remove_project(docker_client, project)
