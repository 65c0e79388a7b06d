"""Following the engine's container events, through engine restarts.

``EventFollower`` runs one daemon thread that reads ``/events`` (filtered to our labels) and
hands each container event to a callback as a ``ContainerEvent``. When the stream breaks or
ends (dockerd stopped or restarted) it tells the owner, waits with exponential backoff and
connects again, for as long as the backend lives.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.2
BACKOFF_MAX_S = 2.0


class EventStream(Protocol):
    """What ``client.events(decode=True, ...)`` returns: an iterator that can be cancelled."""

    def __iter__(self) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerEvent:
    """One container event, with the parts Warden uses."""

    action: str  # "die", "oom", "kill", "stop", "start", "pause", "health_status: unhealthy"...
    container_id: str
    slot: str
    at: float  # engine time, seconds since the epoch
    exit_code: int | None = None
    signal: str = ""


def parse_event(raw: Mapping[str, Any], slot_label: str) -> ContainerEvent | None:
    """A ``ContainerEvent`` from the engine's JSON, or None for other kinds of event."""
    if raw.get("Type") != "container":
        return None
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    code = attributes.get("exitCode")
    nano = raw.get("timeNano")
    return ContainerEvent(
        action=str(raw.get("Action") or raw.get("status") or ""),
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        slot=str(attributes.get(slot_label, "")),
        at=nano / 1e9 if isinstance(nano, int) else float(raw.get("time") or 0),
        exit_code=int(code) if code is not None and str(code).lstrip("-").isdigit() else None,
        signal=str(attributes.get("signal", "")),
    )


class EventFollower:
    """One thread: connect, read events, and on a break reconnect with backoff (until close)."""

    def __init__(
        self,
        *,
        connect: Callable[[], EventStream],
        on_event: Callable[[Mapping[str, Any]], None],
        on_connected: Callable[[bool], None],
        on_lost: Callable[[str], None],
    ) -> None:
        """``on_connected(again)`` runs after each connection, ``on_lost(why)`` after a break."""
        self._connect = connect
        self._on_event = on_event
        self._on_connected = on_connected
        self._on_lost = on_lost
        self._closed = threading.Event()
        self._stream: EventStream | None = None
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warden-docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # noqa: BLE001 - closing a dead stream may fail; we are done
                log.debug("closing the event stream: %r", exc)
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        delay, attempts, was_connected = BACKOFF_INITIAL_S, 0, False
        while not self._closed.is_set():
            try:
                stream = self._connect()
            except Exception as exc:  # noqa: BLE001 - engine down: wait and retry, say so once
                attempts += 1
                level = logging.ERROR if attempts == 1 else logging.DEBUG
                log.log(level, "Docker events: cannot connect (%s); retrying with backoff", exc)
                self._closed.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            with self._lock:
                self._stream = stream
            if attempts or was_connected:
                log.warning("Docker events: connected again after %d failed attempt(s)", attempts)
            self.connected.set()
            self._on_connected(was_connected)
            delay, attempts, was_connected = BACKOFF_INITIAL_S, 0, True
            why = self._read(stream)
            self.connected.clear()
            if self._closed.is_set():
                return
            log.warning("Docker events: stream lost (%s); reconnecting", why)
            self._on_lost(why)

    def _read(self, stream: Iterable[Mapping[str, Any]]) -> str:
        try:
            for raw in stream:
                try:
                    self._on_event(raw)
                except Exception:  # a bad event or handler must not stop the stream
                    log.exception("Docker events: handling %r failed", raw)
        except Exception as exc:  # noqa: BLE001 - the engine went away mid-stream
            return repr(exc)
        return "the engine closed the stream"
