"""Container CPU and memory from the engine's stats stream, sampled off the tick's thread.

``docker stats`` needs two readings a second apart to compute CPU, so a one-shot request blocks
for 1-2 s. Instead one daemon thread per container follows the engine's stats stream (one
reading a second) and keeps the last sample; ``sample()`` returns it at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.backends.base import ResourceSample

log = logging.getLogger(__name__)

StatsStream = Callable[[str], Iterator[Mapping[str, Any]]]


@dataclass(slots=True, kw_only=True)
class _Follower:
    thread: threading.Thread | None = None
    last: ResourceSample | None = None
    stop: threading.Event = field(default_factory=threading.Event)


class StatsSampler:
    """Last CPU/memory sample per container, each followed by its own thread."""

    def __init__(self, open_stream: StatsStream) -> None:
        self._open = open_stream
        self._lock = threading.Lock()
        self._followers: dict[str, _Follower] = {}

    def sample(self, container_id: str) -> ResourceSample | None:
        """The latest sample (None until the first two readings); starts following if needed."""
        with self._lock:
            follower = self._followers.get(container_id)
            if follower is None or follower.thread is None or not follower.thread.is_alive():
                last = follower.last if follower is not None else None
                follower = _Follower(last=last)
                follower.thread = threading.Thread(
                    target=self._follow,
                    args=(container_id, follower),
                    name=f"warden-stats-{container_id[:12]}",
                    daemon=True,
                )
                self._followers[container_id] = follower
                follower.thread.start()
            return follower.last

    def keep(self, container_ids: Iterable[str]) -> None:
        """Stop following containers not in ``container_ids`` (they are gone)."""
        keep = set(container_ids)
        with self._lock:
            for container_id in [c for c in self._followers if c not in keep]:
                self._followers.pop(container_id).stop.set()

    def close(self) -> None:
        self.keep(())

    def _follow(self, container_id: str, follower: _Follower) -> None:
        try:
            for stats in self._open(container_id):
                if follower.stop.is_set():
                    return
                sample = resource_sample(stats)
                if sample is not None:
                    follower.last = sample
        except Exception as exc:  # noqa: BLE001 - engine gone or container removed: next sample() retries
            log.debug("stats of %s stopped: %r", container_id[:12], exc)


def resource_sample(stats: Mapping[str, Any]) -> ResourceSample | None:
    """CPU (% of one core, like ``top``) and memory (usage minus page cache) from one reading."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    if "system_cpu_usage" not in cpu or "system_cpu_usage" not in pre:
        return None  # the first reading has nothing to compare with
    cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
    system_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or ()) or 1
    cpu_percent = 100.0 * online * cpu_delta / system_delta if system_delta > 0 else 0.0
    memory = stats.get("memory_stats") or {}
    if "usage" not in memory:
        return None
    details = memory.get("stats") or {}
    cache = details.get("cache", details.get("inactive_file", 0))  # cgroup v1, v2
    used = float(max(0, memory["usage"] - cache))
    limit = float(memory.get("limit") or 0)
    return ResourceSample(
        cpu_percent=max(0.0, cpu_percent),
        memory_bytes=used,
        memory_percent=100.0 * used / limit if limit > 0 else 0.0,
    )
