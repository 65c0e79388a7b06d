"""How a Swarm slot service and its tasks read as a Warden ``Replica`` (pure functions).

The slot's *current* task is the newest one Swarm wants running (or ready to run); when there is
none (a crash with restart condition ``none``), the newest task says how the slot ended.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import replace
from datetime import datetime
from typing import Any

from agent.domain import Replica, ReplicaState
from agent.errors import BackendError

LABEL_SERVICE = "warden.service"
LABEL_SLOT = "warden.slot"
LABEL_RELEASE = "warden.release"
LABEL_GENERATION = "warden.generation"

_STARTING = {
    "new",
    "allocated",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
}
_EXITED = {"complete", "failed", "rejected", "shutdown", "remove", "orphaned"}
_CURRENT = {"ready", "running"}  # desired states of the task that is (or will be) the slot's


def replica_from(
    service: Mapping[str, Any],
    tasks: list[dict[str, Any]],
    *,
    host: str,
    paused: Set[str] = frozenset(),
    oom: Set[str] = frozenset(),
) -> Replica:
    """The replica a slot service is, from its spec and tasks; ``paused`` and ``oom`` are
    containers the events stream saw paused or OOM-killed (the task list does not say)."""
    spec = service["Spec"]
    labels = spec.get("Labels", {})
    slot = labels.get(LABEL_SLOT, spec["Name"])
    ports = spec.get("EndpointSpec", {}).get("Ports") or [{}]
    url = f"http://{host}:{ports[0].get('PublishedPort', 0)}"
    if spec["Mode"].get("Replicated", {}).get("Replicas", 1) == 0:
        return _from_labels(slot, url, labels, ReplicaState.STOPPED)
    tasks = sorted(tasks, key=created, reverse=True)
    current = next((t for t in tasks if t.get("DesiredState") in _CURRENT), None)
    current = current or (tasks[0] if tasks else None)
    if current is None:  # just created: no task scheduled yet
        return _from_labels(slot, url, labels, ReplicaState.STARTING)
    return _from_task(slot, url, current, tasks, paused=paused, oom=oom)


def _from_task(
    slot: str,
    url: str,
    task: dict[str, Any],
    tasks: list[dict[str, Any]],
    *,
    paused: Set[str],
    oom: Set[str],
) -> Replica:
    status = task.get("Status", {})
    container = status.get("ContainerStatus") or {}
    found = container_id(task)
    state, exit_code = task_state(status.get("State", ""), container)
    if state is ReplicaState.RUNNING and found in paused:
        state = ReplicaState.PAUSED
    live = state in (ReplicaState.RUNNING, ReplicaState.PAUSED)
    pid = int(container.get("PID") or 0) if live else 0
    labels = task["Spec"].get("ContainerSpec", {}).get("Labels", {})
    return replace(
        _from_labels(slot, url, labels, state),
        pid=pid or None,
        container_id=found,
        started_at=instance_time(task, tasks, known=bool(pid) or state is ReplicaState.EXITED),
        exit_code=exit_code,
        oom_killed=found in oom,
    )


def task_state(state: str, container: Mapping[str, Any]) -> tuple[ReplicaState, int | None]:
    """Replica state and exit code of a task's ``Status.State``."""
    if state == "running":
        return ReplicaState.RUNNING, None
    if state in _STARTING:
        return ReplicaState.STARTING, None
    if state in _EXITED:
        ran = bool(container.get("ContainerID"))
        return ReplicaState.EXITED, int(container.get("ExitCode", 0)) if ran else None
    return ReplicaState.STARTING, None  # a state newer than this code: not an exit


def instance_time(
    task: dict[str, Any], tasks: list[dict[str, Any]], *, known: bool
) -> float | None:
    """``started_at`` that changes exactly once per new task, when its process appears.

    A task without a process yet keeps the previous task's time, so the observer counts one
    restart when the new process shows up, and none on the very first start.
    """
    if known:
        return created(task)
    older = [t for t in tasks if created(t) < created(task)]
    return created(older[0]) if older else None


def _from_labels(slot: str, url: str, labels: Mapping[str, str], state: ReplicaState) -> Replica:
    return Replica(
        id=slot,
        url=url,
        release=labels.get(LABEL_RELEASE, ""),
        state=state,
        generation=int(labels.get(LABEL_GENERATION, 0)),
    )


def live_containers(tasks: list[dict[str, Any]]) -> set[str]:
    """Containers of ``tasks`` that run (or are being started) now."""
    live = {"starting", "running"}
    return {c for t in tasks if t["Status"].get("State") in live and (c := container_id(t))}


def container_id(task: dict[str, Any]) -> str | None:
    container = task.get("Status", {}).get("ContainerStatus") or {}
    found = container.get("ContainerID")
    return str(found) if found else None


def created(task: dict[str, Any]) -> float:
    """A task's creation time in epoch seconds (Docker gives nanoseconds; Python takes micro)."""
    text = str(task.get("CreatedAt", ""))
    if not text:
        return 0.0
    head, _, rest = text.rstrip("Z").partition(".")
    fraction = rest[:6].ljust(6, "0") if rest else "000000"
    return datetime.fromisoformat(f"{head}.{fraction}+00:00").timestamp()


def slot_number(slot: str) -> int:
    number = slot.rpartition("-")[2]
    if not number.isdigit() or int(number) < 1:
        raise BackendError(f"slot {slot!r} has no number; slots are named <service>-<n>")
    return int(number)
