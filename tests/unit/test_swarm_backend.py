"""The Swarm backend's pure parts: a slot service and its tasks as a replica, and the refusal of
an engine that is no Swarm manager.
(Everything that talks to an engine is in tests/docker/test_swarm.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agent.backends.docker_swarm import INIT_HINT, SwarmBackend, SwarmSettings
from agent.backends.docker_swarm_tasks import (
    created,
    instance_time,
    replica_from,
    slot_number,
    task_state,
)
from agent.domain import ReplicaState
from agent.errors import BackendError


def _task(at: str, **fields: Any) -> dict[str, Any]:
    return {"CreatedAt": at, **fields}


def _service(replicas: int = 1) -> dict[str, Any]:
    return {
        "Spec": {
            "Name": "inference-2",
            "Labels": {"warden.slot": "inference-2", "warden.release": "v3"},
            "Mode": {"Replicated": {"Replicas": replicas}},
            "EndpointSpec": {"Ports": [{"PublishedPort": 8001, "TargetPort": 8000}]},
        }
    }


def _slot_task(at: str, desired: str, state: str, release: str, **container: Any) -> dict[str, Any]:
    labels = {"warden.release": release, "warden.generation": "2"}
    return _task(
        at,
        DesiredState=desired,
        Status={"State": state, "ContainerStatus": container},
        Spec={"ContainerSpec": {"Labels": labels}},
    )


def test_the_replica_is_the_newest_task_swarm_wants_running() -> None:
    old = _slot_task("2026-11-23T13:00:00Z", "shutdown", "running", "v2", ContainerID="a", PID=7)
    new = _slot_task("2026-11-23T13:01:00Z", "running", "starting", "v3", ContainerID="b", PID=0)

    replica = replica_from(_service(), [old, new], host="127.0.0.1")

    assert (replica.id, replica.url, replica.release, replica.generation) == (
        "inference-2",
        "http://127.0.0.1:8001",
        "v3",
        2,
    )
    assert (replica.state, replica.pid, replica.container_id) == (ReplicaState.STARTING, None, "b")
    assert replica.started_at == created(old)  # no process yet: still the old instance


def test_a_crashed_task_is_an_exited_replica_with_its_exit_code_and_oom() -> None:
    dead = _slot_task(
        "2026-11-23T13:01:00Z", "shutdown", "failed", "v3", ContainerID="b", ExitCode=137
    )

    replica = replica_from(_service(), [dead], host="127.0.0.1", oom={"b"})

    assert (replica.state, replica.exit_code, replica.oom_killed) == (
        ReplicaState.EXITED,
        137,
        True,
    )
    assert replica.started_at == created(dead)


def test_a_service_scaled_to_zero_is_a_stopped_replica_and_a_paused_task_is_paused() -> None:
    running = _slot_task("2026-11-23T13:01:00Z", "running", "running", "v3", ContainerID="b", PID=9)

    assert replica_from(_service(0), [running], host="h").state is ReplicaState.STOPPED
    paused = replica_from(_service(), [running], host="h", paused={"b"})
    assert (paused.state, paused.pid) == (ReplicaState.PAUSED, 9)


@pytest.mark.parametrize(
    ("state", "container", "expected"),
    [
        ("running", {"ContainerID": "c1", "PID": 42}, (ReplicaState.RUNNING, None)),
        ("pending", {}, (ReplicaState.STARTING, None)),
        ("starting", {"ContainerID": "c1", "PID": 0}, (ReplicaState.STARTING, None)),
        ("failed", {"ContainerID": "c1", "ExitCode": 137}, (ReplicaState.EXITED, 137)),
        ("complete", {"ContainerID": "c1"}, (ReplicaState.EXITED, 0)),
        ("rejected", {}, (ReplicaState.EXITED, None)),  # never ran: no exit code
        ("a-state-from-the-future", {}, (ReplicaState.STARTING, None)),
    ],
)
def test_task_state_maps_to_replica_state_and_exit_code(
    state: str, container: dict[str, Any], expected: tuple[ReplicaState, int | None]
) -> None:
    assert task_state(state, container) == expected


def test_created_reads_docker_nanosecond_timestamps() -> None:
    at = created(_task("2026-11-23T13:16:39.426123456Z"))
    assert at == datetime(2026, 11, 23, 13, 16, 39, 426123, tzinfo=UTC).timestamp()
    assert created(_task("2026-11-23T13:16:39Z")) == pytest.approx(at - 0.426123)


def test_a_task_without_a_process_keeps_the_previous_tasks_time() -> None:
    old, new = _task("2026-11-23T13:00:00Z"), _task("2026-11-23T13:05:00Z")
    tasks = [new, old]
    assert instance_time(new, tasks, known=False) == created(old)
    assert instance_time(new, tasks, known=True) == created(new)
    assert instance_time(new, [new], known=False) is None  # first start: no instance yet


def test_slot_names_need_a_number() -> None:
    assert slot_number("inference-12") == 12
    with pytest.raises(BackendError, match="slot 'inference' has no number"):
        slot_number("inference")


class _NotAManager:
    def __init__(self) -> None:
        self.closed = False

    def info(self) -> dict[str, Any]:
        return {"Swarm": {"LocalNodeState": "inactive", "ControlAvailable": False}}

    def close(self) -> None:
        self.closed = True


def test_an_engine_that_is_no_swarm_manager_is_refused_with_the_command_to_run() -> None:
    client = _NotAManager()
    with pytest.raises(BackendError) as raised:
        SwarmBackend(SwarmSettings(), connect=lambda: client)
    assert str(raised.value) == (
        "swarm: this Docker engine is not a Swarm manager (state 'inactive'); "
        f"run `{INIT_HINT}` or use backend kind docker"
    )
    assert client.closed
