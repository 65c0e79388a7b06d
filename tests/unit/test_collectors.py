"""Collectors: metrics parsing, derived signals (exact numbers), fake NVML, process resources."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agent.collectors import (
    GpuCollector,
    MetricsSample,
    ProcessSampler,
    aggregate,
    derive,
    histogram_quantile,
    parse_metrics,
    process_resources,
    scrape,
)
from agent.collectors import Histogram as Buckets

INF = math.inf
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)


def server_metrics_text() -> str:
    """Metrics text exactly as the server's prometheus_client would write it."""
    registry = CollectorRegistry()
    requests = Counter("inference_requests_total", "", ["endpoint", "status"], registry=registry)
    duration = Histogram(
        "inference_request_duration_seconds", "", ["endpoint"], buckets=BOUNDS, registry=registry
    )
    batch = Histogram("inference_batch_duration_seconds", "", buckets=BOUNDS, registry=registry)
    depth = Gauge("inference_queue_depth", "", registry=registry)
    requests.labels("/predict", "200").inc(7)
    requests.labels("/predict", "503").inc(2)
    requests.labels("/health", "200").inc(40)
    for seconds in (0.004, 0.02, 0.02, 0.06, 3.0):
        duration.labels("/predict").observe(seconds)
    duration.labels("/health").observe(0.001)
    batch.observe(0.012)
    depth.set(3)
    return generate_latest(registry).decode()


def hist(**counts: float) -> Buckets:
    """Cumulative buckets from keyword bounds like ``b0_05=3`` and ``inf=9``."""
    pairs = [(INF if k == "inf" else float(k[1:].replace("_", ".")), v) for k, v in counts.items()]
    return Buckets(buckets=tuple(sorted(pairs)))


def sample(
    ok: float = 0,
    errors: float = 0,
    duration: Buckets | None = None,
    batch: Buckets | None = None,
) -> MetricsSample:
    return MetricsSample(
        requests={("/predict", "200"): ok, ("/predict", "500"): errors, ("/health", "200"): 99},
        request_duration=duration,
        batch_duration=batch,
    )


# --- parsing and scraping -------------------------------------------------------------------


def test_parse_picks_the_contract_series() -> None:
    parsed = parse_metrics(server_metrics_text())

    assert parsed.requests == {
        ("/predict", "200"): 7.0,
        ("/predict", "503"): 2.0,
        ("/health", "200"): 40.0,
    }
    assert parsed.request_duration is not None
    by_bound = dict(parsed.request_duration.buckets)
    assert (by_bound[0.005], by_bound[0.025], by_bound[0.075], by_bound[5.0], by_bound[INF]) == (
        1.0,
        3.0,
        4.0,
        5.0,
        5.0,
    )
    assert [le for le, _ in parsed.request_duration.buckets] == [*map(float, BOUNDS), INF]
    assert parsed.batch_duration is not None
    assert dict(parsed.batch_duration.buckets)[0.025] == 1.0
    assert parsed.queue_depth == 3.0


def test_scrape_reads_metrics_endpoint() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, text=server_metrics_text())

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        scraped = scrape(client, "http://replica:8000/", 0.5)

    assert scraped == parse_metrics(server_metrics_text())
    assert seen == ["http://replica:8000/metrics"]


@pytest.mark.parametrize(
    "answer",
    [
        lambda request: httpx.Response(500, text="oops"),
        lambda request: httpx.Response(200, text="<html>not metrics</html>"),
        lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused")),
    ],
    ids=["5xx", "not-prometheus-text", "refused"],
)
def test_scrape_failure_is_none(answer: Any) -> None:
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        assert scrape(client, "http://replica:8000", 0.5) is None


# --- quantiles ------------------------------------------------------------------------------

LATENCY = {0.025: 10.0, 0.05: 60.0, 0.075: 90.0, 0.1: 95.0, 0.15: 99.0, 0.2: 100.0, INF: 100.0}


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.045),  # rank 50 in (0.025, 0.05]: 0.025 + 0.025 * 40/50
        (0.95, 0.1),  # rank 95 is the top of (0.075, 0.1]
        (0.99, 0.15),
        (0.96, 0.1125),  # rank 96 in (0.1, 0.15]: 0.1 + 0.05 * 1/4
        (0.05, 0.0125),  # lowest bucket interpolates from 0
    ],
)
def test_histogram_quantile_interpolates_like_promql(q: float, expected: float) -> None:
    assert histogram_quantile(q, LATENCY) == pytest.approx(expected, rel=1e-12)


def test_quantile_in_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.99, {0.1: 50.0, 0.5: 90.0, INF: 100.0}) == 0.5


def test_quantile_needs_observations_and_an_inf_bucket() -> None:
    assert histogram_quantile(0.5, {0.1: 0.0, INF: 0.0}) is None
    assert histogram_quantile(0.5, {0.1: 5.0, 0.2: 9.0}) is None
    assert histogram_quantile(0.5, {}) is None


# --- derived signals ------------------------------------------------------------------------


def test_derive_error_rate_throughput_and_latency_from_deltas() -> None:
    prev = sample(ok=1000, errors=5, duration=hist(b0_025=500, b0_05=600, b0_1=700, inf=705))
    cur = sample(
        ok=1090,
        errors=15,
        duration=hist(b0_025=510, b0_05=660, b0_1=800, inf=805),
        batch=hist(b0_01=20, b0_025=40, inf=40),
    )

    signals = derive(prev, cur, 10.0)

    # 100 requests in 10 s, 10 of them 5xx; buckets gained 10 / 60 / 100 / 100.
    assert signals == pytest.approx(
        {
            "error_rate": 0.1,
            "throughput_rps": 10.0,
            "latency_p50_ms": 45.0,  # 25 + 25 * 40/50
            "latency_p95_ms": 93.75,  # 50 + 50 * 35/40
            "latency_p99_ms": 98.75,  # 50 + 50 * 39/40
            "inference_time_p95_ms": 23.5,  # 10 + 15 * 18/20
        },
        rel=1e-12,
    )


def test_no_requests_in_interval_leaves_rate_and_latency_absent() -> None:
    same = sample(ok=10, duration=hist(b0_1=10, inf=10))

    assert derive(same, same, 5.0) == {"throughput_rps": 0.0}


def test_counter_reset_takes_current_values_as_the_delta() -> None:
    prev = sample(ok=5000, errors=50, duration=hist(b0_05=4000, b0_1=5000, inf=5050))
    restarted = sample(ok=8, errors=2, duration=hist(b0_05=5, b0_1=10, inf=10))

    signals = derive(prev, restarted, 2.0)

    assert signals["error_rate"] == pytest.approx(0.2)
    assert signals["throughput_rps"] == pytest.approx(5.0)
    assert signals["latency_p50_ms"] == pytest.approx(50.0)  # rank 5 = top of (0, 0.05]


def test_series_missing_after_restart_counts_as_reset() -> None:
    prev = MetricsSample(requests={("/predict", "200"): 3, ("/predict", "500"): 1})
    cur = MetricsSample(requests={("/predict", "200"): 4})  # "500" not seen since the restart

    assert derive(prev, cur, 1.0) == {"error_rate": 0.0, "throughput_rps": 4.0}


def test_aggregate_sums_deltas_before_quantiles() -> None:
    fast_prev = sample(ok=0, duration=hist(b0_01=0, b0_1=0, b1=0, inf=0))
    fast_cur = sample(ok=90, duration=hist(b0_01=90, b0_1=90, b1=90, inf=90))
    slow_prev = sample(ok=0, errors=0, duration=hist(b0_01=0, b0_1=0, b1=0, inf=0))
    slow_cur = sample(ok=5, errors=5, duration=hist(b0_01=0, b0_1=0, b1=10, inf=10))

    signals = aggregate([(fast_prev, fast_cur), (slow_prev, slow_cur)], 10.0)

    assert signals["throughput_rps"] == pytest.approx(10.0)
    assert signals["error_rate"] == pytest.approx(0.05)
    assert signals["latency_p50_ms"] == pytest.approx(50 / 9)  # 10 ms * 50/90
    assert signals["latency_p95_ms"] == pytest.approx(550.0)  # 100 + 900 * 5/10
    assert "inference_time_p95_ms" not in signals


def test_aggregate_handles_a_replica_that_restarted() -> None:
    steady = (sample(ok=100, duration=hist(b0_1=100, inf=100)),) * 2
    restarted = (
        sample(ok=900, duration=hist(b0_1=900, inf=900)),
        sample(ok=20, duration=hist(b0_1=20, inf=20)),
    )

    signals = aggregate([steady, restarted], 4.0)

    assert signals["throughput_rps"] == pytest.approx(5.0)
    assert signals["latency_p50_ms"] == pytest.approx(50.0)


def test_aggregate_of_nothing_is_empty() -> None:
    assert aggregate([], 1.0) == {"throughput_rps": 0.0}


# --- GPU ------------------------------------------------------------------------------------


class FakeNvmlError(Exception):
    pass


@dataclass
class FakeDevice:
    util: int
    total: int
    used: int
    processes: list[tuple[int, int | None]]  # (pid, used bytes)
    broken: bool = False


@dataclass
class FakeNvml:
    """A hand-written stand-in for the pynvml module."""

    devices: list[FakeDevice]
    init_error: str = ""
    calls: list[str] = field(default_factory=list)
    NVMLError: type[Exception] = FakeNvmlError

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error:
            raise FakeNvmlError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return self.devices[index]

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        if handle.broken:
            raise FakeNvmlError("Not Supported")
        return Record(gpu=handle.util, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return Record(total=handle.total, used=handle.used, free=handle.total - handle.used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> Any:
        return [Record(pid=pid, usedGpuMemory=used) for pid, used in handle.processes]


class Record:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


GIB = 1024**3


def test_gpu_maps_replica_pids_to_their_devices() -> None:
    nvml = FakeNvml(
        devices=[
            FakeDevice(util=80, total=16 * GIB, used=8 * GIB, processes=[(101, 4 * GIB)]),
            FakeDevice(util=30, total=8 * GIB, used=2 * GIB, processes=[(202, 2 * GIB), (9, 1)]),
        ]
    )
    collector = GpuCollector(nvml)

    first = collector.collect({"inference-1": 101, "inference-2": 202, "inference-3": 303})
    collector.collect({"inference-1": 101})
    collector.close()

    assert first == {
        "inference-1": {"gpu_util_percent": 80.0, "gpu_memory_percent": 25.0},
        "inference-2": {"gpu_util_percent": 30.0, "gpu_memory_percent": 25.0},
    }
    assert nvml.calls == ["init", "shutdown"]


def test_gpu_process_on_two_devices_reports_the_busiest() -> None:
    nvml = FakeNvml(
        devices=[
            FakeDevice(util=10, total=100, used=50, processes=[(7, 10)]),
            FakeDevice(util=90, total=100, used=50, processes=[(7, 40)]),
        ]
    )

    assert GpuCollector(nvml).collect({"r": 7}) == {
        "r": {"gpu_util_percent": 90.0, "gpu_memory_percent": 40.0}
    }


def test_gpu_memory_falls_back_to_device_use_when_not_reported() -> None:
    nvml = FakeNvml(devices=[FakeDevice(util=5, total=200, used=50, processes=[(7, None)])])

    assert GpuCollector(nvml).collect({"r": 7}) == {
        "r": {"gpu_util_percent": 5.0, "gpu_memory_percent": 25.0}
    }


def test_gpu_device_that_fails_is_skipped() -> None:
    nvml = FakeNvml(
        devices=[
            FakeDevice(util=5, total=100, used=0, processes=[(7, 10)], broken=True),
            FakeDevice(util=60, total=100, used=0, processes=[(8, 20)]),
        ]
    )

    assert GpuCollector(nvml).collect({"a": 7, "b": 8}) == {
        "b": {"gpu_util_percent": 60.0, "gpu_memory_percent": 20.0}
    }


def test_no_nvml_driver_means_no_gpu_series_and_no_retry() -> None:
    nvml = FakeNvml(devices=[], init_error="NVML Shared Library Not Found")
    collector = GpuCollector(nvml)

    assert collector.collect({"r": 7}) == {}
    assert collector.collect({"r": 7}) == {}
    assert nvml.calls == ["init"]


def test_no_gpu_means_no_gpu_series() -> None:
    assert GpuCollector(FakeNvml(devices=[])).collect({"r": 7}) == {}


def test_missing_pynvml_module_means_no_gpu_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError

    assert GpuCollector().collect({"r": os.getpid()}) == {}


def test_real_pynvml_without_gpu_process_gives_no_series() -> None:
    collector = GpuCollector()

    assert collector.collect({"r": os.getpid()}) == {}
    collector.close()


# --- process resources ----------------------------------------------------------------------


def test_process_resources_of_a_live_process() -> None:
    result = process_resources(os.getpid())

    assert result is not None
    assert result.memory_bytes > 0
    assert 0 < result.memory_percent < 100
    assert result.cpu_percent >= 0


def test_first_sample_has_no_interval_and_reads_zero_cpu() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        sampler = ProcessSampler()
        first = sampler.sample(child.pid)
        second = sampler.sample(child.pid)
    finally:
        child.kill()
        child.wait()

    assert first is not None and second is not None
    assert first.cpu_percent == 0.0
    assert second.cpu_percent >= 0.0


def test_children_memory_counts_towards_the_parent() -> None:
    script = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'input()'])"
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        proc = psutil.Process(parent.pid)
        deadline = time.monotonic() + 10
        while not proc.children() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for the grandchild, with a deadline
        assert proc.children(), "grandchild did not start"
        own = proc.memory_info().rss
        sampled = ProcessSampler().sample(parent.pid)
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()

    assert sampled is not None
    assert sampled.memory_bytes > own


def test_gone_process_gives_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    sampler = ProcessSampler()

    assert sampler.sample(child.pid) is None


def test_the_golden_set_s_requests_are_told_apart_from_users() -> None:
    from inference.metrics import ServerMetrics

    server = ServerMetrics(release="v2")
    for seconds in (0.02, 0.02, 0.03):  # users
        server.observe_request("/predict", 200, seconds)
    server.observe_request("/predict", 500, 0.04)
    for _ in range(2):  # the agent's 8-input golden-set batches: slow, origin=probe
        server.observe_request("/predict", 200, 0.4, origin="probe")
    parsed = parse_metrics(generate_latest(server.registry).decode())
    assert parsed.requests[("/predict", "200")] == 5.0  # every request, as before
    assert parsed.request_duration is not None and dict(parsed.request_duration.buckets)[INF] == 6
    users = parsed.users_only()
    assert users.requests == {("/predict", "200"): 3.0, ("/predict", "500"): 1.0}
    assert users.request_duration is not None
    assert dict(users.request_duration.buckets)[0.05] == dict(users.request_duration.buckets)[INF]
    p95 = histogram_quantile(0.95, dict(users.request_duration.buckets))
    assert p95 is not None and p95 < 0.05  # the batches are gone
    assert parse_metrics(server_metrics_text()).users_only().requests[("/predict", "200")] == 7.0
