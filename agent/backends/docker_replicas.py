"""What a container looks like to the agent: a ``Replica`` from the engine's list and inspect.

Pure functions of the engine's JSON (``GET /containers/json`` and ``/containers/{id}/json``), so
the mapping is tested without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.domain import Replica, ReplicaState

PROJECT, SERVICE_LABEL, SLOT = "warden.project", "warden.service", "warden.slot"
RELEASE, GENERATION = "warden.release", "warden.generation"
SERVER_PORT = 8000
STATES = {
    "running": ReplicaState.RUNNING,
    "paused": ReplicaState.PAUSED,
    "exited": ReplicaState.EXITED,
    "dead": ReplicaState.EXITED,
    "created": ReplicaState.STARTING,
    "restarting": ReplicaState.STARTING,
    "removing": ReplicaState.STOPPED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Details:
    """What only ``inspect`` tells (the list lags an exit briefly; inspect does not)."""

    status: str  # State.Status
    pid: int | None
    started_at: float | None
    exit_code: int | None
    oom_killed: bool


def details_from(inspect: Mapping[str, Any], listed_state: str) -> Details:
    """``Details`` from an ``inspect`` document."""
    s = inspect.get("State") or {}
    return Details(
        status=str(s.get("Status") or listed_state),
        pid=int(s["Pid"]) if s.get("Pid") else None,
        started_at=timestamp(s.get("StartedAt")),
        exit_code=int(s["ExitCode"]) if s.get("ExitCode") is not None else None,
        oom_killed=bool(s.get("OOMKilled")),
    )


def replica_from(
    summary: Mapping[str, Any], details: Details, *, url: str, stopped_by_person: bool
) -> Replica:
    """The replica a listed container is. A container a person stopped is STOPPED."""
    labels = summary["Labels"]
    state = STATES.get(details.status, ReplicaState.STARTING)
    if stopped_by_person and state in (ReplicaState.EXITED, ReplicaState.STARTING):
        state = ReplicaState.STOPPED
    alive = state in (ReplicaState.RUNNING, ReplicaState.PAUSED)
    exited = state is ReplicaState.EXITED
    generation = str(labels.get(GENERATION, ""))
    return Replica(
        id=labels[SLOT],
        url=url,
        release=labels.get(RELEASE, ""),
        state=state,
        generation=int(generation) if generation.isdigit() else 0,
        pid=details.pid if alive else None,
        container_id=str(summary["Id"])[:12],
        started_at=details.started_at,
        exit_code=details.exit_code if exited else None,
        oom_killed=details.oom_killed and exited,
    )


def url_from(summary: Mapping[str, Any], network: str | None) -> str:
    """The container's IP on ``network`` when given, else its published loopback port; "" when
    it has neither (not running)."""
    if network:
        networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
        address = (networks.get(network) or {}).get("IPAddress")
        return f"http://{address}:{SERVER_PORT}" if address else ""
    for port in summary.get("Ports") or ():
        if port.get("PrivatePort") == SERVER_PORT and port.get("PublicPort"):
            return f"http://127.0.0.1:{port['PublicPort']}"
    return ""


def timestamp(text: Any) -> float | None:
    """Docker's RFC 3339 time with nanoseconds (``2026-11-23T13:14:36.123456789Z``)."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    head, _, rest = text.partition(".")
    fraction = rest.rstrip("Z")[:6] if rest else "0"
    try:
        return datetime.fromisoformat(f"{head.rstrip('Z')}.{fraction:0<6}+00:00").timestamp()
    except ValueError:
        return None


def slot_order(replica: Replica) -> tuple[int, str]:
    """``inference-2`` before ``inference-10``."""
    number = replica.id.rpartition("-")[2]
    return (int(number) if number.isdigit() else 1 << 30, replica.id)
