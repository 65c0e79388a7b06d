"""A small in-memory ring of service signals over the last hour, for the status page's charts.

Prometheus keeps the real history; this ring exists so that a person who just ran ``warden up``
(with no monitoring stack) still sees how canaries, drift and latency moved. It keeps one point
per ``resolution_s``; a tick inside the newest point's interval is kept aside as the latest
value (replaced by the next such tick), so the newest value is always shown and the ring never
holds more than ``span_s / resolution_s`` points.
Nothing is persisted: a restarted agent starts with an empty chart.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from agent.domain import SERVICE
from agent.observe import Observation

CANARY_PASS_RATE = "canary_pass_rate"  # noqa: S105 (a signal name)
"""The mean canary accuracy over replicas that ran canaries (a service-level view of them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPoint:
    at: float
    values: Mapping[str, float]


class SignalHistory:
    """Service signals over time. Thread-safe: the tick thread writes, the API thread reads."""

    def __init__(self, *, span_s: float = 3600.0, resolution_s: float = 10.0) -> None:
        self.span_s = span_s
        self.resolution_s = resolution_s
        self._points: deque[HistoryPoint] = deque(maxlen=int(span_s / resolution_s) + 1)
        self._latest: HistoryPoint | None = None  # the newest tick inside the last interval
        self._lock = threading.Lock()

    def record(self, obs: Observation | None) -> None:
        """Add the service signals of ``obs`` (None, before the first tick: nothing)."""
        if obs is not None:
            self.add(obs.at, service_values(obs))

    def add(self, at: float, values: Mapping[str, float]) -> None:
        point = HistoryPoint(at=at, values=dict(values))
        with self._lock:
            newest = self._latest or (self._points[-1] if self._points else None)
            if newest is not None and at < newest.at:
                return  # the clock went back (a test's fake clock, NTP): keep the ring ordered
            if self._points and at - self._points[-1].at < self.resolution_s:
                self._latest = point
                return
            self._points.append(point)
            self._latest = None
            while self._points and self._points[0].at < at - self.span_s:
                self._points.popleft()

    def points(self) -> list[HistoryPoint]:
        """Every point, oldest first (the newest tick last, when it started no point)."""
        with self._lock:
            return [*self._points, *([self._latest] if self._latest else [])]

    def series(self, name: str) -> list[tuple[float, float]]:
        """``(at, value)`` for every point that has ``name``, oldest first."""
        return [(p.at, p.values[name]) for p in self.points() if name in p.values]

    def to_json(self) -> dict[str, object]:
        return {
            "span_s": self.span_s,
            "resolution_s": self.resolution_s,
            "points": [{"at": p.at, **p.values} for p in self.points()],
        }


def service_values(obs: Observation) -> dict[str, float]:
    """The service signals of one observation, plus the canary pass rate over replicas."""
    values = dict(obs.signals.get(SERVICE, {}))
    accuracies = [v.canary.accuracy for v in obs.views if v.canary is not None and v.canary.items]
    if accuracies:
        values[CANARY_PASS_RATE] = sum(accuracies) / len(accuracies)
    return values
