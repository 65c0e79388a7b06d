"""A bounded load test of one replica: a fixed number of ``POST /predict`` at a fixed concurrency.

Used before a candidate gets user traffic: the candidate alone, then a stable replica under the
same load, and the two are compared (p95 ratio, error rate). Bounded in count and time; it never
runs against anything but the replicas' own addresses.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    url: str
    requests: int
    errors: int  # 5xx, connection errors and timeouts
    p50_ms: float
    p95_ms: float
    seconds: float

    def to_json(self) -> dict[str, float | int | str]:
        return {
            "url": self.url,
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "seconds": round(self.seconds, 2),
        }


def run_load(
    url: str,
    texts: Sequence[str],
    *,
    requests: int,
    concurrency: int,
    timeout_s: float = 10.0,
    budget_s: float = 120.0,
    cancel: threading.Event | None = None,
) -> LoadResult:
    """``requests`` single-input predictions against ``url`` (stops early after ``budget_s``
    or once ``cancel`` is set)."""
    endpoint = url.rstrip("/") + "/predict"
    deadline = time.monotonic() + budget_s
    latencies: list[float] = []
    errors = 0
    inputs = list(texts) or ["hello"]

    def one(i: int, client: httpx.Client) -> tuple[float, bool]:
        if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
            return math.nan, False
        started = time.perf_counter()
        try:
            reply = client.post(endpoint, json={"inputs": [inputs[i % len(inputs)]]})
            ok = reply.status_code < 500
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - started, ok

    started = time.perf_counter()
    with (
        httpx.Client(timeout=timeout_s) as client,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="warden-load") as pool,
    ):
        for seconds, ok in pool.map(lambda i: one(i, client), range(requests)):
            if math.isnan(seconds):
                continue
            latencies.append(seconds * 1000.0)
            errors += not ok
    latencies.sort()
    return LoadResult(
        url=url,
        requests=len(latencies),
        errors=errors,
        p50_ms=_quantile(latencies, 0.5),
        p95_ms=_quantile(latencies, 0.95),
        seconds=time.perf_counter() - started,
    )


def _quantile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
