"""Background readers of the Docker engine for the Swarm backend: the events stream and stats.

``EventStream`` follows ``GET /events`` on its own connection and hands every event to a
callback; when the stream breaks (engine restart, socket error) it reconnects with ``since`` set to
the last event it saw, so an event that happened in between is still delivered, once.

``StatsSampler`` reads ``docker stats`` one-shot samples of the containers it was asked about, on
its own thread, so ``resources()`` never waits for the engine: it returns the last sample, or None
while none is fresh. CPU is computed between two successive samples of the same container.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from agent.backends.base import ResourceSample
from agent.clock import Clock

logger = logging.getLogger(__name__)

Connect = Callable[[], docker.DockerClient]
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10.0


class EventStream:
    """A thread that delivers engine events matching ``filters`` to ``handle``, reconnecting."""

    def __init__(
        self,
        *,
        connect: Connect,
        filters: Mapping[str, list[str]],
        handle: Callable[[dict[str, Any]], None],
        name: str,
    ) -> None:
        self._connect = connect
        self._filters = dict(filters)
        self._handle = handle
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._client: docker.DockerClient | None = None
        self._stream: Any = None
        self._last_nano = 0
        self.connected = threading.Event()  # set while a stream is open (tests wait on it)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop reading; closing the stream unblocks the reader at once."""
        self._closed.set()
        with self._lock:
            stream, client = self._stream, self._client
        if stream is not None:
            _quietly(stream.close, "closing the events stream")
        if client is not None:
            _quietly(client.close, "closing the events client")
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        backoff = RECONNECT_MIN_S
        while not self._closed.is_set():
            try:
                self._follow()
                backoff = RECONNECT_MIN_S  # a stream that ended cleanly: reconnect at once
            except Exception as exc:  # noqa: BLE001 - any failure means: reconnect later
                if self._closed.is_set():
                    return
                logger.warning("engine events stream failed (%s); reconnecting", exc)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
            finally:
                self.connected.clear()
            self._closed.wait(backoff)

    def _follow(self) -> None:
        client = self._connect()
        since = self._last_nano // 1_000_000_000 if self._last_nano else None
        stream = client.api.events(since=since, filters=self._filters, decode=True)
        with self._lock:
            if self._closed.is_set():
                stream.close()
                client.close()
                return
            self._client, self._stream = client, stream
        self.connected.set()
        try:
            for event in stream:
                nano = int(event.get("timeNano", 0))
                if nano and nano <= self._last_nano:
                    continue  # seen before the reconnect (``since`` has whole seconds)
                self._last_nano = max(self._last_nano, nano)
                self._dispatch(event)
        finally:
            with self._lock:
                self._client, self._stream = None, None
            _quietly(client.close, "closing the events client")

    def _dispatch(self, event: dict[str, Any]) -> None:
        try:
            self._handle(event)
        except Exception:  # a faulty handler must not stop the stream
            logger.exception("handling engine event %r failed", event)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Raw:
    at: float  # clock.monotonic() when read
    cpu_total: int
    system_total: int
    online_cpus: int


class StatsSampler:
    """Samples CPU and memory of the containers ``latest`` was asked about (see module doc)."""

    def __init__(self, *, connect: Connect, clock: Clock, interval_s: float = 2.0) -> None:
        self._connect = connect
        self._clock = clock
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._wanted: dict[str, float] = {}  # container id -> when it was last asked for
        self._raw: dict[str, _Raw] = {}
        self._samples: dict[str, tuple[float, ResourceSample]] = {}
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warden-swarm-stats", daemon=True)
        self._thread.start()

    def latest(self, container_id: str) -> ResourceSample | None:
        """The last sample of ``container_id`` if it is fresh; asks for it to be sampled."""
        now = self._clock.monotonic()
        with self._lock:
            self._wanted[container_id] = now
            found = self._samples.get(container_id)
        if found is None or now - found[0] > 3 * self._interval_s:
            return None
        return found[1]

    def close(self) -> None:
        """Stop sampling."""
        self._closed.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        client: docker.DockerClient | None = None
        while not self._closed.wait(self._interval_s):
            try:
                client = client or self._connect()
                for container_id in self._due():
                    self._sample(client, container_id)
            except docker.errors.DockerException as exc:
                logger.info("container stats unavailable (%s); retrying", exc)
                if client is not None:
                    _quietly(client.close, "closing the stats client")
                client = None
        if client is not None:
            _quietly(client.close, "closing the stats client")

    def _due(self) -> list[str]:
        """Containers asked about recently; the others are forgotten."""
        horizon = self._clock.monotonic() - 10 * self._interval_s
        with self._lock:
            for gone in [c for c, at in self._wanted.items() if at < horizon]:
                del self._wanted[gone]
                self._raw.pop(gone, None)
                self._samples.pop(gone, None)
            return list(self._wanted)

    def _sample(self, client: docker.DockerClient, container_id: str) -> None:
        try:
            stats = client.api.stats(container_id, stream=False, one_shot=True)
        except docker.errors.NotFound:
            with self._lock:
                self._wanted.pop(container_id, None)
                self._samples.pop(container_id, None)
            return
        raw, memory = _parse(stats, self._clock.monotonic())
        with self._lock:
            before = self._raw.get(container_id)
            self._raw[container_id] = raw
            if before is not None and memory is not None:
                sample = ResourceSample(cpu_percent=_cpu_percent(before, raw), **memory)
                self._samples[container_id] = (raw.at, sample)


def _parse(stats: dict[str, Any], at: float) -> tuple[_Raw, dict[str, float] | None]:
    """CPU counters and memory figures of one ``docker stats`` sample (None: not running)."""
    cpu = stats.get("cpu_stats") or {}
    raw = _Raw(
        at=at,
        cpu_total=int((cpu.get("cpu_usage") or {}).get("total_usage", 0)),
        system_total=int(cpu.get("system_cpu_usage", 0)),
        online_cpus=int(cpu.get("online_cpus") or 1),
    )
    mem = stats.get("memory_stats") or {}
    if not mem.get("usage") or not mem.get("limit"):
        return raw, None
    details = mem.get("stats") or {}
    # Like `docker stats`: page cache that can be dropped at once is not counted as used.
    inactive = details.get("total_inactive_file", details.get("inactive_file", 0))
    used = float(max(0, int(mem["usage"]) - int(inactive)))
    return raw, {"memory_bytes": used, "memory_percent": 100.0 * used / float(mem["limit"])}


def _cpu_percent(before: _Raw, after: _Raw) -> float:
    """Percent of one core between two samples, like `top` (and `docker stats`)."""
    system = after.system_total - before.system_total
    used = after.cpu_total - before.cpu_total
    if system <= 0 or used < 0:
        return 0.0
    return 100.0 * used / system * after.online_cpus


def _quietly(close: Callable[[], object], what: str) -> None:
    try:
        close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort; say why it failed
        logger.debug("%s failed: %s", what, exc)
