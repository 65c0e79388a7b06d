"""What a container event means: who stopped a container (Warden, a person, nobody: a crash).

Docker does not record who stopped a container, so the Docker backend keeps this ledger from the
events it sees:

- *planned*: containers Warden itself is stopping, removing or restarting. Their ``kill``/``die``/
  ``stop`` events are not crashes. A mark lasts until the container is destroyed or started
  again, or ``PLANNED_TTL_S`` at most.
- *a person's stop*: a ``kill`` with SIGTERM that Warden did not send makes the container
  *stopping* (``docker stop`` sends ``kill`` then ``die`` then ``stop``); the ``stop`` event
  confirms it. Confirmed stops are written to ``state_dir/docker-stopped.json``, so a restarted
  agent still leaves the container alone. ``docker start`` (a ``start`` event) clears the mark.
- the engine going away: dockerd stopping its containers on shutdown looks exactly like
  ``docker stop``; stops seen in the ``ENGINE_SHUTDOWN_WINDOW_S`` before the event stream broke
  are therefore forgotten (``engine_lost``): those containers are crashes to heal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from agent.backends.docker_events import ContainerEvent
from agent.clock import Clock

log = logging.getLogger(__name__)

PLANNED_TTL_S = 120.0
ENGINE_SHUTDOWN_WINDOW_S = 30.0  # dockerd's default shutdown timeout is 15 s
STOP_SIGNALS = frozenset({"15", "SIGTERM", "TERM"})
# Docker event actions reported as engine events, by the name Warden records them under.
REPORTED = {
    "die": "die",
    "oom": "oom",
    "health_status: unhealthy": "unhealthy",
    "pause": "pause",
    "unpause": "unpause",
    "start": "start",
}


class StopLedger:
    """Thread-safe record of planned operations and people's stops (see module docstring)."""

    def __init__(self, path: Path | None, clock: Clock) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._planned: dict[str, float] = {}  # container id -> monotonic expiry
        self._stopping: dict[str, float] = {}  # person's kill seen, stop not yet: id -> at
        self._stopped: dict[str, float] = {}  # person's stop confirmed: id -> monotonic at
        self._load()

    # --- Warden's own operations ----------------------------------------------------------------

    def plan(self, container_id: str) -> None:
        """Warden is about to stop, remove or restart ``container_id``."""
        with self._lock:
            self._planned[container_id] = self._clock.monotonic() + PLANNED_TTL_S
            self._stopping.pop(container_id, None)

    def is_planned(self, container_id: str) -> bool:
        with self._lock:
            expiry = self._planned.get(container_id)
            if expiry is not None and expiry < self._clock.monotonic():
                del self._planned[container_id]
                return False
            return expiry is not None

    # --- what events say ------------------------------------------------------------------------

    def killed(self, container_id: str, signal: str) -> bool:
        """A ``kill`` event. True when it starts a person's stop (SIGTERM Warden did not send)."""
        if signal not in STOP_SIGNALS or self.is_planned(container_id):
            return False
        with self._lock:
            self._stopping[container_id] = self._clock.monotonic()
        return True

    def stopped(self, container_id: str) -> bool:
        """A ``stop`` event. True when it confirms a person's stop."""
        if self.is_planned(container_id):
            return False
        with self._lock:
            self._stopping.pop(container_id, None)
            self._stopped[container_id] = self._clock.monotonic()
            self._save()
        return True

    def started(self, container_id: str) -> None:
        """A ``start`` event: running again, whoever stopped it before."""
        with self._lock:
            self._planned.pop(container_id, None)
            self._stopping.pop(container_id, None)
            if self._stopped.pop(container_id, None) is not None:
                self._save()

    def destroyed(self, container_id: str) -> None:
        """A ``destroy`` event: the container is gone for good."""
        with self._lock:
            self._planned.pop(container_id, None)
            self._stopping.pop(container_id, None)
            if self._stopped.pop(container_id, None) is not None:
                self._save()

    def engine_lost(self) -> list[str]:
        """The event stream broke: forget stops that may have been dockerd shutting down."""
        now = self._clock.monotonic()
        with self._lock:
            recent = [c for c, at in self._stopped.items() if now - at < ENGINE_SHUTDOWN_WINDOW_S]
            recent += list(self._stopping)
            for container_id in recent:
                self._stopped.pop(container_id, None)
            self._stopping.clear()
            if recent:
                self._save()
        return recent

    # --- queries ----------------------------------------------------------------------------------

    def left_alone(self, container_id: str) -> bool:
        """Stopped by a person (or being stopped): report STOPPED, do not heal."""
        with self._lock:
            return container_id in self._stopped or container_id in self._stopping

    def by_person(self, container_id: str) -> bool:
        """Whether a ``die`` of ``container_id`` is part of a person's stop (no crash event)."""
        return self.left_alone(container_id)

    def prune(self, existing: Iterable[str]) -> None:
        """Forget containers that no longer exist (removed while the agent was not looking)."""
        keep = set(existing)
        with self._lock:
            gone = [c for c in self._stopped if c not in keep]
            for container_id in gone:
                del self._stopped[container_id]
            if gone:
                self._save()

    # --- persistence ------------------------------------------------------------------------------

    def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            ids = json.loads(self._path.read_text(encoding="utf-8"))["stopped_by_person"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(
                "%s unreadable (%r): containers stopped by people may be restarted", self._path, exc
            )
            return
        # Loaded stops are old: never mistaken for an engine shutdown.
        self._stopped = {str(c): float("-inf") for c in ids}

    def _save(self) -> None:
        """Write the confirmed stops atomically (caller holds the lock)."""
        if self._path is None:
            return
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"stopped_by_person": sorted(self._stopped)}), encoding="utf-8")
        os.replace(tmp, self._path)


def interpret(event: ContainerEvent, ledger: StopLedger) -> tuple[str, str] | None:
    """Apply ``event`` to ``ledger``; the (kind, detail) to report as an engine event, if any.

    ``kill`` and ``destroy`` only update the ledger; ``stop`` is reported when it confirms a
    person's stop; ``die`` and ``oom`` are not reported for Warden's own or a person's stop.
    """
    cid = event.container_id
    if event.action == "kill":
        if ledger.killed(cid, event.signal):
            log.info("%s (%s): stop requested by someone else than Warden", event.slot, cid[:12])
        return None
    if event.action == "stop":
        if not ledger.stopped(cid):
            return None
        return "stop", f"{cid[:12]} stopped by a person (docker stop): left alone until started"
    if event.action == "start":
        ledger.started(cid)
    elif event.action == "destroy":
        ledger.destroyed(cid)
        return None
    kind = REPORTED.get(event.action)
    if kind is None:
        return None
    if kind in ("die", "oom") and (ledger.is_planned(cid) or ledger.by_person(cid)):
        return None
    return kind, _describe(event, kind)


def _describe(event: ContainerEvent, kind: str) -> str:
    cid = event.container_id[:12]
    if kind == "die":
        return f"container {cid} exited with code {event.exit_code}"
    if kind == "oom":
        return f"container {cid} ran out of memory (OOM kill)"
    if kind == "unhealthy":
        return f"container {cid} failed its Docker HEALTHCHECK"
    return f"container {cid}: {kind}"
