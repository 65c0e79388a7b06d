"""Collectors: the server's ``/metrics``, derived service signals, GPU (NVML) and process resources.

``scrape`` and the collector classes do I/O; ``derive`` and ``aggregate`` are pure functions of two
scrapes. A series that cannot be measured is absent (no GPU, no requests in the interval), never 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from agent.backends.base import ResourceSample

logger = logging.getLogger(__name__)

PREDICT = "/predict"
_REQUESTS = "inference_requests_total"
_REQUEST_DURATION = "inference_request_duration_seconds"
_BATCH_DURATION = "inference_batch_duration_seconds"
_QUEUE_DEPTH = "inference_queue_depth"


@dataclass(frozen=True, slots=True, kw_only=True)
class Histogram:
    """Cumulative buckets ``(upper bound, count)`` sorted by bound, ending with ``+Inf``."""

    buckets: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsSample:
    """The server metrics the agent uses, from one scrape of one replica."""

    requests: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (endpoint, status)
    request_duration: Histogram | None = None  # endpoint="/predict"
    batch_duration: Histogram | None = None
    queue_depth: float | None = None
    # the part of requests / request_duration the agent's own golden set made (origin="probe")
    probe_requests: Mapping[tuple[str, str], float] = field(default_factory=dict)
    probe_request_duration: Histogram | None = None

    def users_only(self) -> MetricsSample:
        """This sample without the golden set's requests: what users sent."""
        if not self.probe_requests:
            return self
        requests = {k: v - self.probe_requests.get(k, 0.0) for k, v in self.requests.items()}
        duration = self.request_duration
        if duration is not None and self.probe_request_duration is not None:
            probe = dict(self.probe_request_duration.buckets)
            duration = Histogram(
                buckets=tuple((b, n - probe.get(b, 0.0)) for b, n in duration.buckets)
            )
        return MetricsSample(
            requests=requests,
            request_duration=duration,
            batch_duration=self.batch_duration,
            queue_depth=self.queue_depth,
        )


def scrape(client: httpx.Client, base_url: str, timeout_s: float) -> MetricsSample | None:
    """``GET /metrics`` and parse it; None when the replica cannot be scraped (logged)."""
    url = base_url.rstrip("/") + "/metrics"
    try:
        response = client.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        logger.info("cannot scrape %s: %s", url, exc)
        return None
    if response.status_code != 200:
        logger.info("cannot scrape %s: HTTP %d", url, response.status_code)
        return None
    try:
        return parse_metrics(response.text)
    except ValueError as exc:
        logger.warning("cannot parse metrics from %s: %s", url, exc)
        return None


def parse_metrics(text: str) -> MetricsSample:
    """Pick the ``inference_*`` series out of Prometheus text. Raises ValueError if malformed."""
    requests: dict[tuple[str, str], float] = {}
    probes: dict[tuple[str, str], float] = {}
    buckets: dict[str, dict[float, float]] = {_REQUEST_DURATION: {}, _BATCH_DURATION: {}}
    probe_buckets: dict[float, float] = {}
    queue_depth: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            probe = labels.get("origin") == "probe"
            if sample.name == _REQUESTS:
                key = (labels.get("endpoint", ""), labels.get("status", ""))
                requests[key] = requests.get(key, 0.0) + sample.value
                if probe:
                    probes[key] = probes.get(key, 0.0) + sample.value
            elif sample.name == _REQUEST_DURATION + "_bucket":
                if labels.get("endpoint") == PREDICT:
                    le = float(labels["le"])
                    summed = buckets[_REQUEST_DURATION]
                    summed[le] = summed.get(le, 0.0) + sample.value  # over origins
                    if probe:
                        probe_buckets[le] = probe_buckets.get(le, 0.0) + sample.value
            elif sample.name == _BATCH_DURATION + "_bucket":
                buckets[_BATCH_DURATION][float(labels["le"])] = sample.value
            elif sample.name == _QUEUE_DEPTH:
                queue_depth = sample.value
    return MetricsSample(
        requests=requests,
        request_duration=_histogram(buckets[_REQUEST_DURATION]),
        batch_duration=_histogram(buckets[_BATCH_DURATION]),
        queue_depth=queue_depth,
        probe_requests=probes,
        probe_request_duration=_histogram(probe_buckets),
    )


def _histogram(by_bound: Mapping[float, float]) -> Histogram | None:
    if not by_bound:
        return None
    return Histogram(buckets=tuple(sorted(by_bound.items())))


# --- derived signals (pure) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Delta:
    """What happened between two scrapes: counter increases and histogram bucket increases."""

    requests: Mapping[tuple[str, str], float]
    request_duration: Mapping[float, float]
    batch_duration: Mapping[float, float]


def derive(prev: MetricsSample, cur: MetricsSample, dt_s: float) -> dict[str, float]:
    """Signals of one replica over the interval between two scrapes ``dt_s`` seconds apart."""
    return _signals(_delta(prev, cur), dt_s)


def aggregate(
    pairs: Sequence[tuple[MetricsSample, MetricsSample]], dt_s: float
) -> dict[str, float]:
    """Service signals: the per-replica deltas are summed before rates and quantiles."""
    deltas = [_delta(prev, cur) for prev, cur in pairs]
    total = _Delta(
        requests=_sum_maps(d.requests for d in deltas),
        request_duration=_sum_cumulative([d.request_duration for d in deltas]),
        batch_duration=_sum_cumulative([d.batch_duration for d in deltas]),
    )
    return _signals(total, dt_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowStats:
    """``/predict`` traffic of a set of replicas between two scrapes of each."""

    requests: int
    errors: int  # 5xx answers
    p50_ms: float | None
    p95_ms: float | None


def window_stats(pairs: Sequence[tuple[MetricsSample, MetricsSample]]) -> WindowStats:
    """Requests, 5xx and latency quantiles summed over replicas, each from its ``(start, now)``."""
    deltas = [_delta(prev, cur) for prev, cur in pairs]
    counts = _sum_maps(d.requests for d in deltas)
    durations = _sum_cumulative([d.request_duration for d in deltas])
    predict = {status: n for (endpoint, status), n in counts.items() if endpoint == PREDICT}
    p50, p95 = histogram_quantile(0.5, durations), histogram_quantile(0.95, durations)
    return WindowStats(
        requests=round(sum(predict.values())),
        errors=round(sum(n for s, n in predict.items() if s.startswith("5"))),
        p50_ms=None if p50 is None else p50 * 1000.0,
        p95_ms=None if p95 is None else p95 * 1000.0,
    )


def _signals(delta: _Delta, dt_s: float) -> dict[str, float]:
    out: dict[str, float] = {}
    predict = {status: n for (endpoint, status), n in delta.requests.items() if endpoint == PREDICT}
    total = sum(predict.values())
    if total > 0:
        out["error_rate"] = sum(n for s, n in predict.items() if s.startswith("5")) / total
    if dt_s > 0:
        out["throughput_rps"] = total / dt_s
    for name, q in (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95), ("latency_p99_ms", 0.99)):
        value = histogram_quantile(q, delta.request_duration)
        if value is not None:
            out[name] = value * 1000.0
    inference_p95 = histogram_quantile(0.95, delta.batch_duration)
    if inference_p95 is not None:
        out["inference_time_p95_ms"] = inference_p95 * 1000.0
    return out


def _delta(prev: MetricsSample, cur: MetricsSample) -> _Delta:
    """Increase from ``prev`` to ``cur``. After a restart (reset) the current values are the delta.

    A reset is any counter that went down or disappeared: a restarted server starts every series
    from zero, and labelled series reappear only when first used.
    """
    if _was_reset(prev, cur):
        prev = MetricsSample()
    return _Delta(
        requests={k: v - prev.requests.get(k, 0.0) for k, v in cur.requests.items()},
        request_duration=_bucket_delta(prev.request_duration, cur.request_duration),
        batch_duration=_bucket_delta(prev.batch_duration, cur.batch_duration),
    )


def _was_reset(prev: MetricsSample, cur: MetricsSample) -> bool:
    for key, before in prev.requests.items():
        if cur.requests.get(key, -1.0) < before:
            return True
    for before_h, after_h in (
        (prev.request_duration, cur.request_duration),
        (prev.batch_duration, cur.batch_duration),
    ):
        if before_h is None:
            continue
        after = dict(after_h.buckets) if after_h else {}
        if any(after.get(le, -1.0) < n for le, n in before_h.buckets):
            return True
    return False


def _bucket_delta(prev: Histogram | None, cur: Histogram | None) -> dict[float, float]:
    if cur is None:
        return {}
    before = dict(prev.buckets) if prev else {}
    return {le: n - before.get(le, 0.0) for le, n in cur.buckets}


def _sum_maps(maps: Iterable[Mapping[tuple[str, str], float]]) -> dict[tuple[str, str], float]:
    total: dict[tuple[str, str], float] = {}
    for counts in maps:
        for key, n in counts.items():
            total[key] = total.get(key, 0.0) + n
    return total


def _sum_cumulative(histograms: Sequence[Mapping[float, float]]) -> dict[float, float]:
    """Sum cumulative bucket counts over replicas.

    Replicas normally share one bucket layout; if one lacks a bound, its count at the nearest
    lower bound is used (a cumulative count is never smaller there), so sums stay cumulative.
    """
    bounds = sorted({le for h in histograms for le in h})
    total = dict.fromkeys(bounds, 0.0)
    for h in histograms:
        running = 0.0
        for le in bounds:
            running = h.get(le, running)
            total[le] += running
    return total


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly like PromQL.

    None when there are no observations or no ``+Inf`` bucket. A rank in the ``+Inf`` bucket gives
    the highest finite bound; the lowest bucket interpolates from 0 (if its bound is positive).
    """
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return None
    counts: list[float] = []
    for le in bounds:  # a delta can be jagged if a scrape raced an observation; flatten it
        counts.append(max(buckets[le], counts[-1] if counts else 0.0))
    observations = counts[-1]
    if observations <= 0:
        return None
    rank = q * observations
    index = next(i for i, n in enumerate(counts) if n >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    lower = 0.0 if index == 0 else bounds[index - 1]
    below = 0.0 if index == 0 else counts[index - 1]
    in_bucket = counts[index] - below
    if in_bucket <= 0:
        return bounds[index]
    return lower + (bounds[index] - lower) * (rank - below) / in_bucket


# --- GPU via NVML ------------------------------------------------------------------------------


class Nvml(Protocol):
    """The part of ``pynvml`` the GPU collector uses (tests pass a hand-written fake)."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...  # has .gpu (%)
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...  # has .total, .used (bytes)
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Any: ...  # .pid, .usedGpuMemory


class GpuCollector:
    """GPU utilisation and memory of the replicas' processes, via NVML.

    No NVML library, no driver or no GPU means no GPU series (``collect`` returns ``{}``); it is
    logged once and never raised. ``nvml`` defaults to ``pynvml``, imported on first use.
    """

    def __init__(self, nvml: Nvml | None = None) -> None:
        self._nvml = nvml
        self._started = False
        self._unavailable = False

    def collect(self, pids: Mapping[str, int]) -> dict[str, dict[str, float]]:
        """Map replica id -> ``gpu_util_percent`` / ``gpu_memory_percent`` for replicas whose pid
        runs on a GPU. A process on several devices reports the busiest one."""
        nvml = self._start()
        if nvml is None or not pids:
            return {}
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            logger.warning("NVML query failed, no GPU series this time: %s", exc)
            return {}
        devices = []
        for index in range(count):
            try:
                devices.append(self._device(nvml, index))
            except nvml.NVMLError as exc:
                logger.warning("NVML query of GPU %d failed, skipping it: %s", index, exc)
        out: dict[str, dict[str, float]] = {}
        for replica_id, pid in pids.items():
            on = [(util, mem[pid]) for util, mem in devices if pid in mem]
            if on:
                out[replica_id] = {
                    "gpu_util_percent": max(util for util, _ in on),
                    "gpu_memory_percent": max(mem for _, mem in on),
                }
        return out

    def close(self) -> None:
        """Shut NVML down if it was started."""
        if self._started and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                logger.info("NVML shutdown failed: %s", exc)
            self._started = False

    def _device(self, nvml: Nvml, index: int) -> tuple[float, dict[int, float]]:
        """Device utilisation and each process's share of device memory (percent)."""
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        util = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        total = float(memory.total) or 1.0
        shares: dict[int, float] = {}
        for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            used = getattr(proc, "usedGpuMemory", None)
            if used is None:  # not reported (e.g. some drivers): fall back to the device's use
                used = memory.used
            shares[int(proc.pid)] = shares.get(int(proc.pid), 0.0) + 100.0 * float(used) / total
        return util, shares

    def _start(self) -> Nvml | None:
        if self._unavailable:
            return None
        if self._started:
            return self._nvml
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - no GPU series is the answer, never an error
            self._give_up(exc)
            return None
        self._started = True
        return self._nvml

    def _give_up(self, exc: Exception) -> None:
        # ImportError / NVMLError_LibraryNotFound / DriverNotLoaded are the normal "no GPU" cases.
        logger.info("no GPU metrics: NVML unavailable (%s: %s)", type(exc).__name__, exc)
        self._unavailable = True


# --- process CPU and memory -------------------------------------------------------------------


class ProcessSampler:
    """CPU and memory of processes by pid, with ``psutil.Process`` objects cached per pid.

    ``cpu_percent`` is measured over the interval since the previous sample of the same pid
    (percent of one core, like ``top``, summed over the process and its children); the first
    sample of a process has no interval yet and reads 0.
    """

    def __init__(self) -> None:
        self._families: dict[int, dict[int, psutil.Process]] = {}  # root pid -> pid -> process

    def sample(self, pid: int) -> ResourceSample | None:
        """Resources of ``pid`` plus its children; None when the process is gone or hidden."""
        family = self._families.get(pid, {})
        root = family.get(pid)
        try:
            if root is None or not root.is_running():
                root = psutil.Process(pid)
            children = root.children(recursive=True)
            cpu = root.cpu_percent(None)
            rss = float(root.memory_info().rss)
        except psutil.NoSuchProcess:  # includes zombies: a dead replica has no resources
            self._families.pop(pid, None)
            return None
        except psutil.AccessDenied as exc:
            logger.info("cannot read resources of pid %d: %s", pid, exc)
            return None
        current = {pid: root}
        for child in children:
            cached = family.get(child.pid)
            current[child.pid] = cached if cached is not None and cached.is_running() else child
            child_cpu, child_rss = _usage(current[child.pid])
            cpu += child_cpu
            rss += child_rss
        self._families[pid] = current  # children that exited are dropped here
        total = float(psutil.virtual_memory().total)
        return ResourceSample(cpu_percent=cpu, memory_bytes=rss, memory_percent=100.0 * rss / total)

    def forget(self, pid: int) -> None:
        """Drop the cached processes of ``pid`` (it was stopped or replaced)."""
        self._families.pop(pid, None)


def _usage(proc: psutil.Process) -> tuple[float, float]:
    try:
        return proc.cpu_percent(None), float(proc.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0, 0.0  # a child that just exited has nothing left to count


_default_sampler = ProcessSampler()


def process_resources(pid: int) -> ResourceSample | None:
    """CPU and memory of ``pid`` (with children) using a shared ``ProcessSampler``."""
    return _default_sampler.sample(pid)
