"""The Swarm backend on a real engine: scale out through the reconciler, revert an image (also
two releases back, which Swarm's own rollback cannot), and see a killed task through events.

The tests of this module share one backend and its two slot services (creating and updating a
service costs seconds), and run in file order: scale out first, then change releases.
The services and the network are labelled ``warden.test=<session>`` and removed at the end; the
task containers are not labelled so (they belong to their services, and a sweep of labelled test
containers by a parallel run must not kill them).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.app import make_backend
from agent.backends.base import ReleaseSpec
from agent.backends.docker_swarm import SwarmBackend, SwarmSettings
from agent.clock import SystemClock
from agent.config import load_config
from agent.domain import EngineEvent, Replica, ReplicaState
from agent.reconcile import Desired, apply, plan
from tests.docker.conftest import SESSION_ID, TEST_LABEL
from tests.docker.helpers import free_ports, remove_network
from tests.integration.polling import wait_until

SERVICE = f"swt{SESSION_ID}"
READY_S = 180.0  # a model load on 2 busy cores; a Swarm update adds ~6 s before that
LABELS = {TEST_LABEL: SESSION_ID, "warden.project": "warden-tests"}


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2.0)
    except httpx.HTTPError:
        return None


def _serves(replica: Replica, release: str) -> bool:
    """``/ready`` answers 200 and ``/version`` names ``release``."""
    ready, version = _get(f"{replica.url}/ready"), _get(f"{replica.url}/version")
    return (
        ready is not None
        and ready.status_code == 200
        and version is not None
        and version.json().get("release") == release
    )


@pytest.fixture(scope="module")
def network(swarm: Any) -> Iterator[str]:
    """A private attachable overlay network: the tasks do not depend on the default bridge,
    which other work on the same engine may reconfigure."""
    net = swarm.networks.create(
        f"warden-test-swarm-{SESSION_ID}", driver="overlay", attachable=True, labels=LABELS
    )
    yield str(net.name)
    wait_until(lambda: remove_network(net), timeout=60, what=f"network {net.name} to be removable")


@pytest.fixture(scope="module")
def backend(swarm: Any, docker_env: dict[str, str], network: str) -> Iterator[SwarmBackend]:
    """A Swarm backend for a service of this session; every service it made is removed."""
    import docker

    def connect() -> Any:
        return docker.DockerClient(base_url=docker_env["DOCKER_HOST"], version="auto", timeout=60)

    settings = SwarmSettings(
        service=SERVICE, base_port=free_ports(2), network=network, labels=LABELS
    )
    instance = SwarmBackend(settings, connect=connect)
    try:
        yield instance
    finally:
        instance.close()
        _remove_services(swarm)


def _remove_services(client: Any) -> None:
    for service in client.services.list(filters={"label": f"{TEST_LABEL}={SESSION_ID}"}):
        service.remove()
    wait_until(
        lambda: not client.api.containers(all=True, filters={"label": f"warden.service={SERVICE}"}),
        timeout=60,
        what="the task containers of the removed services to be gone",
    )


@pytest.fixture(scope="module")
def releases(images: dict[str, str]) -> dict[str, ReleaseSpec]:
    """Warden releases on the test images: v2 serves wrong answers, v3 never becomes ready."""
    return {
        "good": ReleaseSpec(tag="good", image=images["good"]),
        "v2": ReleaseSpec(tag="v2", image=images["bad"]),
        "v3": ReleaseSpec(tag="v3", image=images["broken"]),
    }


def _reconcile(backend: SwarmBackend, desired: Desired) -> None:
    """One reconciler pass, with readiness probed like the agent does."""
    replicas = backend.list_replicas()
    ready = {r.id for r in replicas if (got := _get(f"{r.url}/ready")) and got.status_code == 200}
    steps = plan(service=SERVICE, desired=desired, replicas=replicas, ready=ready)
    assert apply(backend, desired, steps) == []


def _wait_serving(
    backend: SwarmBackend, slots: list[str], release: str, client: Any
) -> list[Replica]:
    found: list[Replica] = []

    def check() -> bool:
        found[:] = [r for r in backend.list_replicas() if r.id in slots]
        crashed = [r for r in found if r.state is ReplicaState.EXITED and r.release == release]
        assert not crashed, f"{crashed} exited on {release}:\n{_diagnose(client, slots)}"
        return len(found) == len(slots) and all(
            r.release == release and r.state is ReplicaState.RUNNING and _serves(r, release)
            for r in found
        )

    wait_until(
        check,
        timeout=READY_S,
        what=f"{slots} serving {release}",
        logs=lambda: f"replicas: {found}\n" + _diagnose(client, slots),
    )
    return found


def _diagnose(client: Any, slots: list[str]) -> str:
    """Every task of ``slots`` with its state, error and the tail of its container's log."""
    import docker.errors

    lines = []
    for task in client.api.tasks(filters={"service": slots}):
        status = task["Status"]
        lines.append(f"task {task['ID'][:12]} {status['State']} {status.get('Err', '')}")
        container = (status.get("ContainerStatus") or {}).get("ContainerID")
        if container:
            try:
                lines.append(client.containers.get(container).logs(tail=20).decode())
            except docker.errors.DockerException as exc:
                lines.append(f"(no logs: {exc})")
    return "\n".join(lines)


def _task(client: Any, slot: str) -> dict[str, Any]:
    """The newest task of ``slot``'s service."""
    tasks = client.api.tasks(filters={"service": slot, "desired-state": "running"})
    return dict(max(tasks, key=lambda t: t["CreatedAt"]))


def _assert_runs_image(client: Any, slot: str, image: str) -> None:
    """The slot's task asks for ``image`` and its container runs a build of it.

    Compared by the build's ``warden.release`` label, not by image id: scripts/engine.sh may
    rebuild (and so move) a tag on this shared engine while the container runs."""
    task = _task(client, slot)
    assert task["Spec"]["ContainerSpec"]["Image"] == image
    container = client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    assert container.attrs["Config"]["Image"] == image
    assert container.image.labels["warden.release"] == image.rpartition(":")[2]


def test_reconciler_scales_out_to_a_second_slot_service_and_both_serve(
    backend: SwarmBackend, releases: dict[str, ReleaseSpec], swarm: Any
) -> None:
    one = Desired(release=releases["good"], replicas=1, generations={})
    _reconcile(backend, one)
    _wait_serving(backend, [f"{SERVICE}-1"], "good", swarm)

    _reconcile(backend, Desired(release=releases["good"], replicas=2, generations={}))
    first, second = _wait_serving(backend, [f"{SERVICE}-1", f"{SERVICE}-2"], "good", swarm)

    assert int(second.url.rpartition(":")[2]) == int(first.url.rpartition(":")[2]) + 1
    spec = swarm.services.get(f"{SERVICE}-2").attrs["Spec"]
    assert spec["Labels"] == {
        **LABELS,
        "warden.service": SERVICE,
        "warden.slot": f"{SERVICE}-2",
        "warden.release": "good",
        "warden.generation": "0",
    }
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert [p["PublishMode"] for p in spec["EndpointSpec"]["Ports"]] == ["host"]
    wait_until(
        lambda: backend.resources(backend.list_replicas()[0]) is not None,
        timeout=30,
        what="a docker stats sample of the first replica",
    )


def test_deploy_bad_then_revert_runs_the_good_image_again(
    backend: SwarmBackend, releases: dict[str, ReleaseSpec], swarm: Any
) -> None:
    slot = f"{SERVICE}-1"
    backend.start_replica(slot, releases["v2"], 0)
    _wait_serving(backend, [slot], "v2", swarm)
    _assert_runs_image(swarm, slot, releases["v2"].image)

    backend.start_replica(slot, releases["good"], 0)

    (replica,) = _wait_serving(backend, [slot], "good", swarm)
    _assert_runs_image(swarm, slot, releases["good"].image)
    assert replica.container_id == _task(swarm, slot)["Status"]["ContainerStatus"]["ContainerID"]
    assert backend.drain_events() == []  # Warden's own replacements are not crashes


def test_revert_two_releases_back_which_swarm_rollback_cannot(
    backend: SwarmBackend, releases: dict[str, ReleaseSpec], swarm: Any
) -> None:
    slot = f"{SERVICE}-2"
    backend.start_replica(slot, releases["v2"], 0)
    backend.start_replica(slot, releases["v3"], 0)
    previous = swarm.services.get(slot).attrs["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]
    assert previous["Image"] == releases["v2"].image  # all `docker service rollback` could do

    backend.start_replica(slot, releases["good"], 0)

    _wait_serving(backend, [slot], "good", swarm)
    _assert_runs_image(swarm, slot, releases["good"].image)


def test_killed_task_is_an_event_and_an_exited_replica_until_restarted(
    backend: SwarmBackend, releases: dict[str, ReleaseSpec], swarm: Any
) -> None:
    slot = f"{SERVICE}-1"
    seen: list[EngineEvent] = []
    arrived = threading.Event()

    def record(event: EngineEvent) -> None:
        seen.append(event)
        arrived.set()

    backend.on_event(record)
    assert backend.events_connected.wait(10), "the events stream is not connected"
    (replica,) = [r for r in backend.list_replicas() if r.id == slot]
    assert replica.pid is not None

    os.kill(replica.pid, signal.SIGKILL)

    assert arrived.wait(10), "no event within 10 s of kill -9"
    assert [(e.replica_id, e.kind, e.exit_code) for e in seen] == [(slot, "die", 137)]
    assert [(e.kind, e.exit_code) for e in backend.drain_events()] == [("die", 137)]
    wait_until(
        lambda: (
            [(r.state, r.exit_code) for r in backend.list_replicas() if r.id == slot]
            == [(ReplicaState.EXITED, 137)]
        ),
        timeout=30,
        what=f"{slot} reported exited with code 137",
    )

    backend.start_replica(slot, releases["good"], 1)  # the policy's restart: generation + 1

    (restarted,) = _wait_serving(backend, [slot], "good", swarm)
    assert restarted.generation == 1 and restarted.pid not in (None, replica.pid)


def test_make_backend_builds_the_swarm_backend_from_warden_yaml(
    swarm: Any, docker_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_env["DOCKER_HOST"])
    config = tmp_path / "warden.yaml"
    config.write_text(f"service: {SERVICE}x\nbackend: {{kind: swarm, port: 18000}}\n")

    made = make_backend(load_config(config), SystemClock())

    try:
        assert isinstance(made, SwarmBackend) and made.kind == "swarm"
        assert made.list_replicas() == []
    finally:
        made.close()


def test_scale_in_stops_the_slot_service_and_reports_it_stopped(
    backend: SwarmBackend, releases: dict[str, ReleaseSpec], swarm: Any
) -> None:
    _reconcile(backend, Desired(release=releases["good"], replicas=1, generations={}))

    states = {r.id: r.state for r in backend.list_replicas()}
    assert states[f"{SERVICE}-2"] is ReplicaState.STOPPED
    assert swarm.services.get(f"{SERVICE}-2").attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 0
