"""The Docker backend on a real engine: labels, replace, stop, events, OOM, what it leaves alone.

Replicas here only need to be *started* (most tests never wait for the model to load), so each
test costs a container start, not a model load.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from agent.backends.base import ReleaseSpec
from agent.backends.docker_backend import ContainerSettings, DockerBackend
from agent.domain import EngineEvent, Replica, ReplicaState
from agent.errors import BackendError
from tests.docker.conftest import SESSION_ID, TEST_LABEL
from tests.docker.helpers import pause_container
from tests.integration.polling import wait_until

SLOT = "inference-1"
GOOD = ReleaseSpec(tag="good")


class Recorder:
    """Collects the events a backend reports through ``on_event``."""

    def __init__(self) -> None:
        self.events: list[EngineEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: EngineEvent) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self, slot: str = SLOT) -> list[str]:
        with self._lock:
            return [e.kind for e in self.events if e.replica_id == slot]

    def of(self, kind: str) -> list[EngineEvent]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]


@pytest.fixture
def make_backend(
    docker_env: dict[str, str], backend_project: str, test_network: str, tmp_path: Path
) -> Iterator[Callable[..., tuple[DockerBackend, Recorder]]]:
    """Factory: a DockerBackend in this test's project (containers removed at teardown)."""
    made: list[DockerBackend] = []

    def make(**overrides: Any) -> tuple[DockerBackend, Recorder]:
        client = docker.DockerClient(base_url=docker_env["DOCKER_HOST"], version="1.41")
        settings = ContainerSettings(
            project=backend_project,
            service="inference",
            network=test_network,
            labels={TEST_LABEL: SESSION_ID},
            **overrides,
        )
        backend = DockerBackend(client, settings, state_dir=tmp_path)
        recorder = Recorder()
        backend.on_event(recorder)
        made.append(backend)
        return backend, recorder

    yield make
    for backend in made:
        backend.close()


def only(backend: DockerBackend, slot: str = SLOT) -> Replica:
    (replica,) = [r for r in backend.list_replicas() if r.id == slot]
    return replica


def wait_state(backend: DockerBackend, state: ReplicaState, timeout: float = 30.0) -> Replica:
    wait_until(lambda: only(backend).state is state, timeout=timeout, what=f"{SLOT} {state}")
    return only(backend)


def answers_health(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_started_replica_is_labelled_published_on_loopback_and_not_restarted_by_docker(
    make_backend: Callable[..., tuple[DockerBackend, Recorder]],
    docker_client: Any,
    backend_project: str,
    test_network: str,
) -> None:
    backend, _ = make_backend(memory_limit_bytes=600 * 2**20, cpus=1.5)
    replica = backend.start_replica(SLOT, GOOD, 3)
    assert (replica.id, replica.release, replica.generation) == (SLOT, "good", 3)
    assert replica.state is ReplicaState.RUNNING and replica.pid
    assert replica.url.startswith("http://127.0.0.1:")
    info = docker_client.api.inspect_container(replica.container_id)
    labels = info["Config"]["Labels"]
    assert {
        k: labels[k] for k in labels if k.startswith("warden.") and k != "warden.source-hash"
    } == {
        "warden.project": backend_project,
        "warden.service": "inference",
        "warden.slot": SLOT,
        "warden.release": "good",
        "warden.generation": "3",
        "warden.component": "inference",  # from the image
        TEST_LABEL: SESSION_ID,
    }
    assert info["Name"] == f"/{backend_project}-{SLOT}-g3"
    host = info["HostConfig"]
    assert host["RestartPolicy"]["Name"] == "no"
    assert host["Memory"] == host["MemorySwap"] == 600 * 2**20
    assert host["NanoCpus"] == 1_500_000_000
    assert host["PortBindings"]["8000/tcp"][0]["HostIp"] == "127.0.0.1"
    assert (host["ReadonlyRootfs"], host["CapDrop"], host["SecurityOpt"]) == (
        True,
        ["ALL"],
        ["no-new-privileges"],
    )
    assert info["Config"]["User"] == "10001:10001"  # the image's user: never root
    assert "WARDEN_RELEASE=good" in info["Config"]["Env"]
    endpoint = info["NetworkSettings"]["Networks"][test_network]
    assert "inference" in endpoint["Aliases"]
    wait_until(lambda: answers_health(replica.url), timeout=120, what="/health on the URL")


def test_start_replaces_the_slots_container_and_stop_removes_it(
    make_backend: Callable[..., tuple[DockerBackend, Recorder]], docker_client: Any
) -> None:
    backend, recorder = make_backend()
    first = backend.start_replica(SLOT, GOOD, 0)
    second = backend.start_replica(SLOT, ReleaseSpec(tag="bad"), 1)
    assert second.container_id != first.container_id
    (listed,) = backend.list_replicas()
    assert (listed.container_id, listed.release, listed.generation) == (
        second.container_id,
        "bad",
        1,
    )
    assert not docker_client.containers.list(
        ignore_removed=True, all=True, filters={"id": first.container_id}
    )
    backend.stop_replica(SLOT)
    assert backend.list_replicas() == []
    backend.stop_replica(SLOT)  # already gone: no error
    assert "die" not in recorder.kinds()  # Warden's own stops are not crashes


def test_docker_kill_is_a_die_event_at_once_and_the_replica_exited(
    make_backend: Callable[..., tuple[DockerBackend, Recorder]], docker_client: Any
) -> None:
    backend, recorder = make_backend()
    replica = backend.start_replica(SLOT, GOOD, 0)
    killed_at = time.monotonic()
    docker_client.containers.get(replica.container_id).kill()
    wait_until(lambda: "die" in recorder.kinds(), timeout=10, what="the die event")
    took = time.monotonic() - killed_at
    (die,) = recorder.of("die")
    assert die.exit_code == 137
    assert die.detail == f"container {replica.container_id} exited with code 137"
    exited = only(backend)
    assert exited.state is ReplicaState.EXITED and exited.exit_code == 137
    assert not exited.oom_killed and exited.pid is None
    assert backend.drain_events()[-1] == die
    assert took < 3.0, f"die event after {took:.2f} s"


def test_docker_stop_by_a_person_is_stopped_and_left_alone(
    make_backend: Callable[..., tuple[DockerBackend, Recorder]],
    docker_env: dict[str, str],
    tmp_path: Path,
) -> None:
    backend, recorder = make_backend()
    replica = backend.start_replica(SLOT, GOOD, 0)
    assert replica.container_id is not None
    subprocess.run(["docker", "stop", "-t", "2", replica.container_id], env=docker_env, check=True)
    stopped = wait_state(backend, ReplicaState.STOPPED)
    assert stopped.container_id == replica.container_id
    wait_until(lambda: "stop" in recorder.kinds(), timeout=10, what="the stop event")
    assert "die" not in recorder.kinds()
    again, _ = make_backend()  # a restarted agent still knows who stopped it
    assert only(again).state is ReplicaState.STOPPED
    subprocess.run(["docker", "start", replica.container_id], env=docker_env, check=True)
    assert wait_state(backend, ReplicaState.RUNNING).container_id == replica.container_id


def test_tiny_memory_limit_is_an_oom_event_and_an_oom_killed_replica(
    make_backend: Callable[..., tuple[DockerBackend, Recorder]],
) -> None:
    backend, recorder = make_backend(memory_limit_bytes=64 * 2**20)
    backend.start_replica(SLOT, GOOD, 0)
    wait_until(lambda: "die" in recorder.kinds(), timeout=120, what="the OOM kill")
    assert recorder.kinds()[-2:] == ["oom", "die"]
    assert recorder.of("die")[0].exit_code == 137
    replica = wait_state(backend, ReplicaState.EXITED)
    assert replica.oom_killed and replica.exit_code == 137


def test_paused_replica_is_paused_with_events(
    make_backend: Callable[..., tuple[DockerBackend, Recorder]], docker_client: Any
) -> None:
    backend, recorder = make_backend()
    replica = backend.start_replica(SLOT, GOOD, 0)
    container = docker_client.containers.get(replica.container_id)
    pause_container(container)
    assert wait_state(backend, ReplicaState.PAUSED).pid == replica.pid
    wait_until(lambda: "pause" in recorder.kinds(), timeout=10, what="the pause event")
    container.unpause()
    wait_state(backend, ReplicaState.RUNNING)
    wait_until(lambda: "unpause" in recorder.kinds(), timeout=10, what="the unpause event")
    restarted_from = only(backend).started_at
    backend.restart_replica(SLOT)
    after = only(backend)
    assert after.container_id == replica.container_id and after.started_at != restarted_from
    assert "die" not in recorder.kinds()


def test_resources_come_from_docker_stats_without_blocking(
    make_backend: Callable[..., tuple[DockerBackend, Recorder]],
) -> None:
    backend, _ = make_backend(memory_limit_bytes=900 * 2**20)
    replica = backend.start_replica(SLOT, GOOD, 0)
    started = time.monotonic()
    backend.resources(replica)
    assert time.monotonic() - started < 0.5
    wait_until(lambda: backend.resources(replica) is not None, timeout=15, what="a stats sample")
    sample = backend.resources(replica)
    assert sample is not None and sample.memory_bytes > 1e6
    assert sample.memory_percent == pytest.approx(100 * sample.memory_bytes / (900 * 2**20))


def test_containers_without_our_labels_are_never_touched(
    make_backend: Callable[..., tuple[DockerBackend, Recorder]],
    docker_client: Any,
    images: dict[str, str],
    backend_project: str,
    test_network: str,
) -> None:
    # Same image, same project and service, but no slot label: a container someone else runs.
    stranger = docker_client.containers.run(
        images["good"],
        ["python", "-c", "import time; time.sleep(600)"],
        detach=True,
        name=f"{backend_project}-stranger",
        network=test_network,
        labels={
            TEST_LABEL: SESSION_ID,
            "warden.project": backend_project,
            "warden.service": "inference",
        },
    )
    # And one with no labels at all: the same image is not enough to be ours.
    unlabelled = docker_client.containers.run(
        images["good"],
        ["python", "-c", "import time; time.sleep(600)"],
        detach=True,
        name=f"{backend_project}-unlabelled",
        labels={TEST_LABEL: SESSION_ID},
    )
    for other in (stranger, unlabelled):
        other.reload()
    started = {c.id: c.attrs["State"]["StartedAt"] for c in (stranger, unlabelled)}
    backend, _ = make_backend()
    backend.start_replica(SLOT, GOOD, 0)
    assert [r.id for r in backend.list_replicas()] == [SLOT]
    backend.start_replica(SLOT, GOOD, 1)
    backend.stop_replica(SLOT)
    for other in (stranger, unlabelled):  # still there, still running, never restarted
        other.reload()
        state = other.attrs["State"]
        assert (other.status, state["StartedAt"]) == ("running", started[other.id])
        assert other.attrs["RestartCount"] == 0
    unlabelled.remove(force=True)
    stranger.kill()  # its events are not ours either
    assert backend.list_replicas() == []
    stranger.reload()
    assert stranger.status == "exited"
    assert [e.replica_id for e in backend.drain_events() if e.kind == "die"] == []


def test_unreachable_engine_is_a_backend_error_that_says_what_to_set(tmp_path: Path) -> None:
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    backend = DockerBackend(client, ContainerSettings(project="none", service="inference"))
    try:
        with pytest.raises(BackendError) as caught:
            backend.list_replicas()
        message = str(caught.value)
        assert message.startswith("list containers: Docker engine at ")
        assert "is not reachable" in message and "DOCKER_HOST" in message
        assert "the agent keeps retrying" in message
    finally:
        backend.close()
