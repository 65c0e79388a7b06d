"""Observe: probe every replica and turn the results into this tick's signals.

The ``Observer`` keeps the little memory that signals need between ticks (consecutive health
failures, the last metrics samples for rates and percentiles, the last canary result, restart
times). Probes of different replicas run in parallel so a hung replica does not delay the others.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace

import httpx

from agent.backends.base import Backend, ResourceSample
from agent.collectors import GpuCollector, MetricsSample, aggregate, scrape
from agent.domain import SERVICE, CanaryResult, ProbeResult, Replica, ReplicaState
from agent.probes import CanaryInput, probe_health, probe_ready, run_canaries

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaView:
    """One replica as observed this tick (what status pages and verification read)."""

    replica: Replica
    health: ProbeResult | None
    ready: ProbeResult | None
    canary: CanaryResult | None
    canary_at: float | None
    resources: ResourceSample | None
    metrics: MetricsSample | None = None  # this tick's scrape of its /metrics (cumulative)


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    at: float
    views: tuple[ReplicaView, ...]
    signals: dict[str, dict[str, float]]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def ready_slots(self) -> frozenset[str]:
        return frozenset(v.replica.id for v in self.views if v.ready is not None and v.ready.ok)

    def view(self, slot: str) -> ReplicaView | None:
        return next((v for v in self.views if v.replica.id == slot), None)


@dataclass(slots=True)
class _Memory:
    """What the observer remembers about one slot."""

    instance: tuple[int | None, float | None] = (None, None)  # (pid, started_at)
    first_seen: float = 0.0  # when this instance was first observed
    healthy_once: bool = False  # answered /health since it started
    ready_once: bool = False  # answered /ready with 200 since it started
    health_failures: int = 0
    samples: deque[tuple[float, MetricsSample]] = field(default_factory=deque)
    canary: CanaryResult | None = None
    canary_at: float | None = None
    restarts: deque[float] = field(default_factory=deque)
    release: str | None = None  # release the remembered instance ran


@dataclass(frozen=True, slots=True, kw_only=True)
class _Probed:
    health: ProbeResult | None = None
    ready: ProbeResult | None = None
    metrics: MetricsSample | None = None
    canary: CanaryResult | None = None
    resources: ResourceSample | None = None


class Observer:
    """Turns the backend's replicas and HTTP probes into signals, one call per tick."""

    def __init__(
        self,
        *,
        backend: Backend,
        client: httpx.Client,
        canaries: Callable[[], Sequence[CanaryInput]],
        timeout_s: float,
        canary_interval_s: float,
        metrics_window_s: float = 10.0,
        restart_window_s: float = 600.0,
        startup_grace_s: float = 120.0,
        gpu: GpuCollector | None = None,
    ) -> None:
        self._backend = backend
        self._client = client
        self._canaries = canaries
        self._timeout_s = timeout_s
        self._canary_interval_s = canary_interval_s
        self._window_s = metrics_window_s
        self._restart_window_s = restart_window_s
        self._startup_grace_s = startup_grace_s
        # A canary is one batch of real predictions: give it more than a liveness probe.
        self._canary_timeout_s = max(5.0, timeout_s * 4)
        self._gpu = gpu or GpuCollector()
        self._memory: dict[str, _Memory] = {}
        self._canary_runs: dict[
            str, tuple[tuple[int | None, float | None], Future[CanaryResult]]
        ] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="warden-probe")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._gpu.close()

    def observe(
        self,
        replicas: Sequence[Replica],
        now: float,
        *,
        force_canaries: bool = False,
        canary_interval_s: float | None = None,
        outside_service: Collection[str] = (),
    ) -> Observation:
        """Probe ``replicas`` (in parallel) and compute every signal for this tick.

        ``canary_interval_s`` overrides the configured canary interval (shorter while a
        candidate release bakes); ``force_canaries`` runs them on every replica now. Slots in
        ``outside_service`` (a staged rollout's candidates) are probed but left out of the
        service's signals: the rollout judges them against the stable release on its own.
        """
        interval = canary_interval_s or self._canary_interval_s
        watched = [r for r in replicas if r.state is not ReplicaState.STOPPED]
        for gone in set(self._memory) - {r.id for r in watched}:
            del self._memory[gone]
        futures = {r.id: self._pool.submit(self._probe, r) for r in watched}
        probed = {slot: f.result() for slot, f in futures.items()}
        due = [
            r
            for r in watched
            if _is_ready(probed[r.id]) and self._canaries_due(r, now, force_canaries, interval)
        ]
        canaries = self._canary_results(due, {r.id: (r.pid, r.started_at) for r in watched})
        probed = {
            slot: replace(p, canary=canaries[slot]) if slot in canaries else p
            for slot, p in probed.items()
        }
        signals: dict[str, dict[str, float]] = {}
        reasons: dict[str, str] = {}
        views = []
        for r in watched:
            mem = self._remember(r, probed[r.id], now)
            signals[r.id] = self._replica_signals(r, probed[r.id], mem, now)
            reason = _unhealthy_reason(r, probed[r.id])
            if reason:
                reasons[r.id] = reason
            views.append(
                ReplicaView(
                    replica=r,
                    health=probed[r.id].health,
                    ready=probed[r.id].ready,
                    canary=mem.canary,
                    canary_at=mem.canary_at,
                    resources=probed[r.id].resources,
                    metrics=probed[r.id].metrics,
                )
            )
        gpu = self._gpu.collect({r.id: r.pid for r in watched if r.pid is not None})
        for slot, values in gpu.items():
            signals[slot].update(values)
        in_service = [r for r in watched if r.id not in outside_service]
        signals[SERVICE] = self._service_signals(in_service, signals, now)
        return Observation(at=now, views=tuple(views), signals=signals, reasons=reasons)

    def _canaries_due(self, r: Replica, now: float, force: bool, interval: float) -> bool:
        mem = self._memory.get(r.id)
        if mem is None or mem.canary_at is None or force:
            return True
        if mem.instance != (r.pid, r.started_at):
            return True  # a new process: its old canary result says nothing about it
        return now - mem.canary_at >= interval

    def _canary_results(
        self, due: Sequence[Replica], instances: Mapping[str, tuple[int | None, float | None]]
    ) -> dict[str, CanaryResult]:
        """Canary runs that finished, by slot; starts the runs that are ``due``.

        A canary is a real batch of predictions and can take seconds on a struggling replica, so
        it runs off the tick: a run is waited for only up to the probe timeout, and a slower one
        is collected by a later tick. A hung replica therefore never delays the health probes
        that detect it. A result is used only for the process instance it was run against.
        """
        for r in due:
            if r.id not in self._canary_runs:
                future = self._pool.submit(
                    run_canaries, self._client, r.url, self._canaries(), self._canary_timeout_s
                )
                self._canary_runs[r.id] = ((r.pid, r.started_at), future)
        running = [future for _, future in self._canary_runs.values()]
        if running:
            wait(running, timeout=self._timeout_s)
        results = {}
        for slot, (instance, future) in list(self._canary_runs.items()):
            if not future.done():
                continue
            del self._canary_runs[slot]
            if instances.get(slot) == instance:
                results[slot] = future.result()
        return results

    def _probe(self, r: Replica) -> _Probed:
        resources = self._backend.resources(r) if r.state is not ReplicaState.EXITED else None
        if r.state in (ReplicaState.EXITED, ReplicaState.MISSING):
            return _Probed(resources=resources)
        health = probe_health(self._client, r.url, self._timeout_s)
        if not health.ok:
            return _Probed(health=health, resources=resources)
        ready = probe_ready(self._client, r.url, self._timeout_s)
        metrics = scrape(self._client, r.url, self._timeout_s)
        return _Probed(health=health, ready=ready, metrics=metrics, resources=resources)

    def _remember(self, r: Replica, p: _Probed, now: float) -> _Memory:
        mem = self._memory.setdefault(r.id, _Memory())
        instance = (r.pid, r.started_at)
        if instance != mem.instance:
            if mem.release is not None and r.release != mem.release:
                # A new release in the slot is a deployment (a deploy, a rollout step, a
                # rollback), not a crash: the release now running starts its own count. Counting
                # across it would put a failed candidate's restarts, and the agent's own revert
                # of it, on the release it was reverted to, and crash-loop would freeze the
                # service the revert just healed.
                mem.restarts.clear()
            elif mem.instance != (None, None) and r.pid is not None:
                mem.restarts.append(now)
            mem.instance = instance
            mem.release = r.release
            mem.first_seen = now
            mem.healthy_once = False
            mem.ready_once = False
            mem.health_failures = 0
            mem.samples.clear()
            mem.canary, mem.canary_at = None, None
        while mem.restarts and now - mem.restarts[0] > self._restart_window_s:
            mem.restarts.popleft()
        if p.health is not None:
            mem.healthy_once = mem.healthy_once or p.health.ok
            # Like a Kubernetes startup probe: a process still starting (it has never answered
            # /health, within the grace period) is not failing, it is not up yet.
            starting = not mem.healthy_once and now - mem.first_seen < self._startup_grace_s
            mem.health_failures = 0 if p.health.ok or starting else mem.health_failures + 1
        mem.ready_once = mem.ready_once or _is_ready(p)
        if p.metrics is not None:
            mem.samples.append((now, p.metrics))
            while len(mem.samples) > 2 and now - mem.samples[1][0] >= self._window_s:
                mem.samples.popleft()
        if p.canary is not None and not p.canary.unanswered:
            mem.canary, mem.canary_at = p.canary, now
        elif p.canary is not None:
            mem.canary_at = now  # try again after the interval; keep the last real verdict
            log.info(
                "%s: canaries got no answer (%s); health and latency rules cover that",
                r.id,
                p.canary.unanswered,
            )
        return mem

    def _replica_signals(
        self, r: Replica, p: _Probed, mem: _Memory, now: float
    ) -> dict[str, float]:
        exited = r.state in (ReplicaState.EXITED, ReplicaState.MISSING)
        s: dict[str, float] = {
            "exited": float(r.state is ReplicaState.EXITED),
            "oom": float(r.oom_killed),
            "restarts_recent": float(len(mem.restarts)),
            "health_failures": float(mem.health_failures),
        }
        if exited:
            s.update(up=0.0, ready=0.0)
        elif p.health is not None:
            s["up"] = float(p.health.ok)
            s["load_failed"] = float(p.ready is not None and p.ready.permanent)
            # Still loading within the startup grace: not "not ready" yet, only not ready *yet*
            # (a slow load on a busy host must not be restarted from scratch by `not-ready`).
            # A load that failed says so at once (load_failed); one that hangs counts after it.
            loading = (
                not mem.ready_once
                and not s["load_failed"]
                and now - mem.first_seen < self._startup_grace_s
            )
            if not loading:
                s["ready"] = float(p.ready is not None and p.ready.ok)
        if mem.canary is not None and mem.canary.items:
            s["canary_failures"] = float(mem.canary.failures)
            s["canary_accuracy"] = mem.canary.accuracy
        if p.resources is not None:
            s["cpu_percent"] = p.resources.cpu_percent
            s["memory_percent"] = p.resources.memory_percent
            s["memory_bytes"] = p.resources.memory_bytes
        return s

    def _service_signals(
        self, replicas: Sequence[Replica], signals: Mapping[str, Mapping[str, float]], now: float
    ) -> dict[str, float]:
        pairs = []
        spans = []
        for r in replicas:
            mem = self._memory.get(r.id)
            if mem is not None and len(mem.samples) >= 2:
                (t0, first), (t1, last) = mem.samples[0], mem.samples[-1]
                pairs.append((first, last))
                spans.append(t1 - t0)
        out = aggregate(pairs, max(spans)) if pairs else {}
        out["replicas_ready"] = float(sum(signals[r.id].get("ready", 0.0) for r in replicas))
        return out


def _is_ready(p: _Probed) -> bool:
    return p.ready is not None and p.ready.ok


def _unhealthy_reason(r: Replica, p: _Probed) -> str:
    if r.state is ReplicaState.EXITED:
        what = "was OOM-killed" if r.oom_killed else f"exited (code {r.exit_code})"
        return f"{r.id} {what}"
    if r.state is ReplicaState.MISSING:
        return f"{r.id} is missing"
    if p.health is not None and not p.health.ok:
        return f"{r.id} health probe failed: {p.health.reason}"
    if p.ready is not None and not p.ready.ok:
        return f"{r.id} not ready: {p.ready.reason}"
    return ""
