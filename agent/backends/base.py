"""The Backend protocol: the few things the agent asks of an engine (processes, Docker, Swarm).

The reconciler is the only caller that changes anything. Every method is idempotent in effect:
asking for a state that already holds does nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agent.domain import EngineEvent, Replica

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseSpec:
    """What a release is for a backend.

    Process backend: ``model`` is a model directory (empty = the packaged default model) and
    ``args`` are extra server flags. Docker/Swarm: ``image`` is the image reference.
    ``user_traffic`` False: a replica only the agent talks to (a staged rollout's canary
    replicas when Swarm splits traffic by replicas: they stay out of the service's DNS name).
    Backends that route through HAProxy ignore it: HAProxy's weights decide.
    """

    tag: str
    model: str = ""
    task: str = ""
    image: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    user_traffic: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceSample:
    """CPU and memory of one replica, measured by the backend (psutil, docker stats)."""

    cpu_percent: float  # of one core, like `top`
    memory_bytes: float
    memory_percent: float  # of the replica's limit, or of host memory when unlimited


class Backend(Protocol):
    """An engine that runs replicas of the model server."""

    kind: str

    def list_replicas(self) -> list[Replica]:
        """Every replica this agent owns (found by its labels / its own children), any state."""
        ...

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        """Create and start replica ``slot`` running ``release``. Replaces an existing one."""
        ...

    def stop_replica(self, slot: str) -> None:
        """Stop and remove replica ``slot``. No error if it is already gone."""
        ...

    def restart_replica(self, slot: str) -> None:
        """Restart replica ``slot`` in place (same release)."""
        ...

    def resources(self, replica: Replica) -> ResourceSample | None:
        """CPU/memory of a replica, or None when it cannot be measured now."""
        ...

    def drain_events(self) -> list[EngineEvent]:
        """Engine events that arrived since the last call (never blocks)."""
        ...

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        """Call ``callback`` (from any thread) as soon as an event arrives, so the agent can
        run a tick at once instead of waiting for the next interval."""
        ...

    def close(self) -> None:
        """Release engine resources. Replicas keep running unless the backend owns them."""
        ...


class EventInbox:
    """Engine events waiting for the next tick, and the callbacks that wake the agent at once.

    Every backend reports events the same way: ``put`` from its watcher thread, ``drain`` from
    the tick, ``subscribe`` from the runtime. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[EngineEvent] = []
        self._callbacks: list[Callable[[EngineEvent], None]] = []

    def put(self, event: EngineEvent) -> None:
        """Queue ``event`` and call every subscriber (outside the lock)."""
        with self._lock:
            self._events.append(event)
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # a faulty subscriber must not stop events being reported
                log.exception("event callback %r failed for %s", callback, event)

    def drain(self) -> list[EngineEvent]:
        """The events queued since the last call."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def subscribe(self, callback: Callable[[EngineEvent], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)
