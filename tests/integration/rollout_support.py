"""Helpers for staged-rollout tests and the rollout benchmark: a bounded load client that records
where every request went, step boundaries from the agent's events, and a CPU quota (cgroup) to make
a real candidate process slow.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.agent_harness import RunningAgent
from tests.integration.conftest import free_port
from tests.integration.polling import wait_until


@dataclass
class Traffic:
    """``POST /predict`` from ``threads`` clients until stopped (or ``max_s``/``max_requests``).

    Each answer is recorded as ``(time, release)``; a 5xx, a timeout or a refused connection is
    recorded as ``"error"`` with its detail in ``errors``.
    """

    url: str
    threads: int = 3
    max_s: float = 300.0
    max_requests: int = 100_000
    seen: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]

    def __enter__(self) -> Traffic:
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(base_url=self.url, timeout=15.0) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if len(self.seen) >= self.max_requests:
                        return
                started = time.perf_counter()
                try:
                    reply = client.post("/predict", json={"inputs": ["I want a refund"]})
                    release = reply.json()["release"] if reply.status_code == 200 else "error"
                    detail = "" if reply.status_code == 200 else f"HTTP {reply.status_code}"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    release, detail = "error", f"{type(exc).__name__}: {exc}"
                took = (time.perf_counter() - started) * 1000.0
                with self._lock:
                    self.seen.append((time.time(), release))
                    self.latencies_ms.append(took)
                    if detail:
                        self.errors.append(detail)

    def count(self) -> Counter[str]:
        with self._lock:
            return Counter(r for _, r in self.seen)

    def share(self, release: str, start: float, end: float) -> tuple[float, int]:
        """Fraction of answers in ``[start, end)`` that came from ``release``, and how many."""
        with self._lock:
            window = [r for t, r in self.seen if start <= t < end]
        return (window.count(release) / len(window) if window else 0.0), len(window)


def step_starts(events: Sequence[dict[str, Any]], release: str) -> list[tuple[float, int]]:
    """``(time, percent)`` of each traffic step of ``release``'s rollout, from its events."""
    out = []
    for e in events:
        if e["kind"] == "rollout" and e["subject"] == release and "% of traffic to" in e["message"]:
            percent = int(e["message"].split("% of traffic to")[0].rsplit(":", 1)[1].strip())
            out.append((float(e["at"]), percent))
    return out


@contextmanager
def cpu_quota(pid: int, cpus: float) -> Iterator[Path]:
    """Put process ``pid`` (all its threads) under a CPU quota of ``cpus`` cores, like
    ``docker update --cpus``: cgroup v1 ``cpu`` controller or cgroup v2 ``cpu.max``."""
    name = f"warden-test-{os.getpid()}-{pid}"
    period = 100_000
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        group = v1 / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(int(period * cpus)))
        parent = v1
    else:
        parent = Path("/sys/fs/cgroup")
        group = parent / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{int(period * cpus)} {period}")
    try:
        (group / "cgroup.procs").write_text(str(pid))
        yield group
    finally:
        for task in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # already gone
                (parent / "cgroup.procs").write_text(task)
        group.rmdir()


def rollout_config(step: str) -> dict[str, Any]:
    """``warden.yaml`` keys for an agent with HAProxy in front of real servers.

    Servers run ``--threads 1``: two 2-thread torch pools on this 2-core machine make the newer
    process look 2-3x slower, which is contention between the test's processes, not the release.
    """
    return {
        "backend": {
            "kind": "process",
            "replicas": 1,
            "port": free_port(),
            "extra_args": ["--threads", "1"],
        },
        "balancer": {"kind": "haproxy"},
        "rollout": {"step_duration": step, "drain_timeout": "10s"},
    }


def rollout_doc(agent: RunningAgent, tag: str) -> dict[str, Any]:
    """``GET /api/rollout?release=TAG``; {} while the agent does not answer (restarting)."""
    try:
        doc: dict[str, Any] = agent.get(f"/api/rollout?release={tag}")
    except (httpx.HTTPError, ValueError):
        return {}
    return doc


def wait_finished(agent: RunningAgent, tag: str, timeout: float = 300.0) -> dict[str, Any]:
    """Until the staged rollout of ``tag`` is done or aborted; its last rollout document."""
    found: dict[str, Any] = {}

    def finished() -> bool:
        doc = rollout_doc(agent, tag)
        if (doc.get("staged") or {}).get("stage") in ("done", "aborted"):
            found.update(doc)
            return True
        return False

    wait_until(finished, timeout=timeout, what=f"rollout of {tag} finished", logs=agent.logs)
    return found


def candidate_replica(agent: RunningAgent, tag: str) -> tuple[int, int]:
    """``(pid, port)`` of release ``tag``'s candidate replica once it is ready (not the previous
    rollout's, which may still be draining in the same slot)."""
    found: list[tuple[int, int]] = []

    def ready() -> bool:
        for r in agent.status()["replicas"]:
            mine = r["id"] == "inference-canary-1" and r["release"] == tag
            if mine and r["ready"] and r["pid"]:
                found.append((r["pid"], int(r["url"].rsplit(":", 1)[1])))
                return True
        return False

    wait_until(ready, timeout=180, what="candidate replica ready", logs=agent.logs)
    return found[0]
