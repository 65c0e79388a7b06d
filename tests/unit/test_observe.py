"""Observe: probes of every replica become this tick's signals, with memory between ticks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import httpx
import pytest

from agent.backends.base import ReleaseSpec, ResourceSample
from agent.canaries import Canary
from agent.collectors import GpuCollector
from agent.domain import SERVICE, EngineEvent, Replica, ReplicaState
from agent.observe import Observer
from tests.unit.fakes import NoGpu

T0 = 1_700_000_000.0
CANARIES = (
    Canary(name="refund", input="refund me", expected="billing", min_confidence=0.3),
    Canary(name="crash", input="the app crashes", expected="technical support"),
)


def metrics_text(ok: int, errors: int, fast: int, slow: int) -> str:
    """Server /metrics: ``fast`` requests took <= 25 ms, ``slow`` ones 50-100 ms."""
    total = fast + slow
    buckets = [
        ("0.005", 0),
        ("0.01", 0),
        ("0.025", fast),
        ("0.05", fast),
        ("0.1", total),
        ("+Inf", total),
    ]
    lines = [
        "# HELP inference_requests_total Requests by endpoint and status.",
        "# TYPE inference_requests_total counter",
        f'inference_requests_total{{endpoint="/predict",status="200"}} {ok}.0',
        f'inference_requests_total{{endpoint="/predict",status="500"}} {errors}.0',
        'inference_requests_total{endpoint="/health",status="200"} 999.0',
        "# HELP inference_request_duration_seconds Request latency.",
        "# TYPE inference_request_duration_seconds histogram",
        *(
            f'inference_request_duration_seconds_bucket{{endpoint="/predict",le="{le}"}} {n}.0'
            for le, n in buckets
        ),
        f'inference_request_duration_seconds_count{{endpoint="/predict"}} {total}.0',
        f'inference_request_duration_seconds_sum{{endpoint="/predict"}} {total * 0.03}',
    ]
    return "\n".join(lines) + "\n"


class FakeServer:
    """One replica's HTTP API; attributes say how it answers, ``paths`` records what was asked."""

    def __init__(self) -> None:
        self.healthy = True
        self.ready = True
        self.labels: list[str] = ["billing", "technical support"]
        self.metrics = metrics_text(ok=0, errors=0, fast=0, slow=0)
        self.paths: list[str] = []

    def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        if path == "/health":
            if not self.healthy:
                return httpx.Response(500, json={"error": {"code": "x", "message": "wedged"}})
            return httpx.Response(200, json={"status": "ok"})
        if path == "/ready":
            if self.ready:
                return httpx.Response(200, json={"ready": True, "release": "v1"})
            return httpx.Response(503, json={"ready": False, "reason": "loading model"})
        if path == "/metrics":
            return httpx.Response(200, text=self.metrics)
        if path == "/predict":
            predictions = [{"label": label, "score": 0.9} for label in self.labels]
            return httpx.Response(200, json={"task": "classify", "predictions": predictions})
        return httpx.Response(404, json={"detail": "not found"})


class Servers:
    """Routes requests to a FakeServer by host:port."""

    def __init__(self) -> None:
        self.by_address: dict[str, FakeServer] = {}

    def add(self, port: int) -> FakeServer:
        server = FakeServer()
        self.by_address[f"127.0.0.1:{port}"] = server
        return server

    def __call__(self, request: httpx.Request) -> httpx.Response:
        server = self.by_address.get(f"{request.url.host}:{request.url.port}")
        if server is None:
            raise httpx.ConnectError("connection refused", request=request)
        return server.answer(request)


class FakeBackend:
    """Reports ``replicas``; ``resources`` answers from ``samples`` and records who was asked."""

    kind = "fake"

    def __init__(self) -> None:
        self.samples: dict[str, ResourceSample] = {}
        self.resources_asked: list[str] = []

    def list_replicas(self) -> list[Replica]:
        return []

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        raise AssertionError("the observer never starts replicas")

    def stop_replica(self, slot: str) -> None:
        raise AssertionError("the observer never stops replicas")

    def restart_replica(self, slot: str) -> None:
        raise AssertionError("the observer never restarts replicas")

    def resources(self, replica: Replica) -> ResourceSample | None:
        self.resources_asked.append(replica.id)
        return self.samples.get(replica.id)

    def drain_events(self) -> list[EngineEvent]:
        return []

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        return None

    def close(self) -> None:
        return None


def replica(
    slot: str = "inference-1",
    port: int = 8000,
    *,
    state: ReplicaState = ReplicaState.RUNNING,
    pid: int | None = 100,
    started_at: float | None = T0,
    exit_code: int | None = None,
    oom_killed: bool = False,
    release: str = "v1",
) -> Replica:
    return Replica(
        id=slot,
        url=f"http://127.0.0.1:{port}",
        release=release,
        state=state,
        pid=pid,
        started_at=started_at,
        exit_code=exit_code,
        oom_killed=oom_killed,
    )


@pytest.fixture
def servers() -> Servers:
    return Servers()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def observer(servers: Servers, backend: FakeBackend) -> Iterator[Observer]:
    client = httpx.Client(transport=httpx.MockTransport(servers))
    obs = Observer(
        backend=backend,
        client=client,
        canaries=lambda: CANARIES,
        timeout_s=1.0,
        canary_interval_s=30.0,
        metrics_window_s=10.0,
        gpu=GpuCollector(nvml=NoGpu()),
    )
    yield obs
    obs.close()
    client.close()


def observe_at(observer: Observer, replicas: Sequence[Replica], at: float) -> Mapping[str, float]:
    """Signals of the first replica after observing ``replicas`` at ``at``."""
    return observer.observe(replicas, at).signals[replicas[0].id]


def test_a_healthy_ready_replica_is_up_ready_and_passes_its_canaries(
    observer: Observer, servers: Servers
) -> None:
    servers.add(8000)

    obs = observer.observe([replica()], T0)

    assert obs.signals == {
        "inference-1": {
            "exited": 0.0,
            "oom": 0.0,
            "restarts_recent": 0.0,
            "health_failures": 0.0,
            "up": 1.0,
            "ready": 1.0,
            "load_failed": 0.0,
            "canary_failures": 0.0,
            "canary_accuracy": 1.0,
        },
        SERVICE: {"replicas_ready": 1.0},
    }
    assert obs.reasons == {}
    assert obs.ready_slots == frozenset({"inference-1"})


def test_a_replica_that_answers_health_but_not_ready_is_up_not_ready_with_the_reason(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    observer.observe([replica()], T0)  # ready once: from now on "not ready" is news
    server.ready = False

    obs = observer.observe([replica()], T0 + 1)

    assert (obs.signals["inference-1"]["up"], obs.signals["inference-1"]["ready"]) == (1.0, 0.0)
    assert obs.reasons == {"inference-1": "inference-1 not ready: not ready: loading model"}
    assert servers.by_address["127.0.0.1:8000"].paths[-3:] == ["/health", "/ready", "/metrics"]


def test_a_replica_still_loading_within_the_startup_grace_has_no_ready_signal_yet(
    observer: Observer, servers: Servers
) -> None:
    """``not-ready`` (ready == 0 for 60 s) must not restart a slow first load from scratch; the
    signal appears when the grace (120 s here) is over, or at once when the load failed."""
    servers.add(8000).ready = False

    loading = [observe_at(observer, [replica()], T0 + at) for at in (0.0, 119.0)]
    after_grace = observe_at(observer, [replica()], T0 + 120.0)

    assert [("ready" in s, s["up"], s["load_failed"]) for s in loading] == [(False, 1.0, 0.0)] * 2
    assert after_grace["ready"] == 0.0
    assert observer.observe([replica()], T0 + 121).reasons  # the page still says why


def test_health_failures_count_consecutive_failed_probes_and_reset_on_success(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    observer.observe([replica()], T0)  # answered /health once: it has started
    server.healthy = False
    counts = []
    for tick in range(1, 4):
        counts.append(observe_at(observer, [replica()], T0 + tick)["health_failures"])
    server.healthy = True
    counts.append(observe_at(observer, [replica()], T0 + 4)["health_failures"])

    assert counts == [1.0, 2.0, 3.0, 0.0]


def test_a_starting_process_is_not_failing_health_within_the_startup_grace(
    observer: Observer, servers: Servers
) -> None:
    servers.add(8000).healthy = False  # never answered /health yet

    counts = [observe_at(observer, [replica()], T0 + at)["health_failures"] for at in (0.0, 119.0)]

    assert counts == [0.0, 0.0]


def test_a_process_that_never_answers_health_fails_after_the_startup_grace(
    observer: Observer, servers: Servers
) -> None:
    servers.add(8000).healthy = False
    observer.observe([replica()], T0)

    signals = observe_at(observer, [replica()], T0 + 120.0)

    assert (signals["up"], signals["health_failures"]) == (0.0, 1.0)


def test_a_new_process_instance_starts_its_health_failures_from_zero(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    observer.observe([replica()], T0)
    server.healthy = False
    observer.observe([replica()], T0 + 1)
    observer.observe([replica()], T0 + 2)

    signals = observe_at(observer, [replica(pid=101, started_at=T0 + 3)], T0 + 3)

    assert signals["health_failures"] == 0.0


def test_a_failed_health_probe_gives_up_0_ready_0_and_the_probe_reason(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    observer.observe([replica()], T0)  # up and ready once
    server.healthy = False
    server.paths.clear()

    obs = observer.observe([replica()], T0 + 1)

    assert (obs.signals["inference-1"]["up"], obs.signals["inference-1"]["ready"]) == (0.0, 0.0)
    assert obs.reasons == {"inference-1": "inference-1 health probe failed: HTTP 500: wedged"}
    assert server.paths == ["/health"]  # a failed /health is not followed by /ready


def test_an_unreachable_replica_is_down_with_the_connection_error(observer: Observer) -> None:
    obs = observer.observe([replica(port=8009)], T0)  # nothing listens on 8009

    assert obs.signals["inference-1"]["up"] == 0.0
    assert obs.reasons == {
        "inference-1": "inference-1 health probe failed: cannot connect: connection refused"
    }


def test_an_exited_replica_is_not_probed_and_reports_exited(
    observer: Observer, servers: Servers, backend: FakeBackend
) -> None:
    server = servers.add(8000)

    obs = observer.observe([replica(state=ReplicaState.EXITED, exit_code=1)], T0)

    assert obs.signals["inference-1"] == {
        "exited": 1.0,
        "oom": 0.0,
        "restarts_recent": 0.0,
        "health_failures": 0.0,
        "up": 0.0,
        "ready": 0.0,
    }
    assert obs.reasons == {"inference-1": "inference-1 exited (code 1)"}
    assert server.paths == []
    assert backend.resources_asked == []


def test_an_oom_killed_replica_reports_oom_and_the_reason(
    observer: Observer, servers: Servers
) -> None:
    servers.add(8000)
    dead = replica(state=ReplicaState.EXITED, exit_code=137, oom_killed=True)

    obs = observer.observe([dead], T0)

    assert (obs.signals["inference-1"]["exited"], obs.signals["inference-1"]["oom"]) == (1.0, 1.0)
    assert obs.reasons == {"inference-1": "inference-1 was OOM-killed"}


def test_a_missing_replica_is_down_but_not_exited(observer: Observer) -> None:
    obs = observer.observe([replica(state=ReplicaState.MISSING, pid=None)], T0)

    assert obs.signals["inference-1"]["exited"] == 0.0
    assert (obs.signals["inference-1"]["up"], obs.signals["inference-1"]["ready"]) == (0.0, 0.0)
    assert obs.reasons == {"inference-1": "inference-1 is missing"}


def test_failing_canaries_give_canary_failures_and_accuracy(
    observer: Observer, servers: Servers
) -> None:
    servers.add(8000).labels = ["billing", "billing"]

    signals = observe_at(observer, [replica()], T0)

    assert (signals["canary_failures"], signals["canary_accuracy"]) == (1.0, 0.5)


def test_canaries_are_not_rerun_before_the_canary_interval(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    observer.observe([replica()], T0)
    server.labels = ["wrong", "wrong"]  # would fail, but is not asked yet

    signals = observe_at(observer, [replica()], T0 + 29.0)

    assert server.paths.count("/predict") == 1
    assert signals["canary_failures"] == 0.0


def test_canaries_are_rerun_once_the_interval_has_passed(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    observer.observe([replica()], T0)
    server.labels = ["wrong", "wrong"]

    signals = observe_at(observer, [replica()], T0 + 30.0)

    assert server.paths.count("/predict") == 2
    assert signals["canary_failures"] == 2.0


def test_canaries_are_rerun_at_once_when_the_process_instance_changes(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    observer.observe([replica(pid=100)], T0)
    server.labels = ["wrong", "wrong"]

    signals = observe_at(observer, [replica(pid=101, started_at=T0 + 1.0)], T0 + 2.0)

    assert server.paths.count("/predict") == 2
    assert signals["canary_failures"] == 2.0


def test_forced_canaries_run_even_within_the_interval(observer: Observer, servers: Servers) -> None:
    server = servers.add(8000)
    observer.observe([replica()], T0)

    observer.observe([replica()], T0 + 1.0, force_canaries=True)

    assert server.paths.count("/predict") == 2


def test_a_new_process_instance_counts_as_a_recent_restart(
    observer: Observer, servers: Servers
) -> None:
    servers.add(8000)
    observer.observe([replica(pid=100)], T0)
    observer.observe([replica(pid=101, started_at=T0 + 5.0)], T0 + 5.0)

    signals = observe_at(observer, [replica(pid=102, started_at=T0 + 9.0)], T0 + 9.0)

    assert signals["restarts_recent"] == 2.0


def test_a_release_change_is_a_deployment_and_starts_the_new_releases_own_count(
    observer: Observer, servers: Servers
) -> None:
    # A candidate that cannot load its model is restarted, then the agent reverts it: neither
    # the candidate's restarts nor the revert may count as restarts of the release reverted to
    # (crash-loop would freeze the service the revert just healed).
    servers.add(8000)
    observer.observe([replica(pid=100)], T0)
    observer.observe([replica(pid=101, started_at=T0 + 5.0, release="v2")], T0 + 5.0)
    observer.observe([replica(pid=102, started_at=T0 + 6.0, release="v2")], T0 + 6.0)
    bad = observe_at(observer, [replica(pid=103, started_at=T0 + 7.0, release="v2")], T0 + 7.0)

    reverted = observe_at(observer, [replica(pid=104, started_at=T0 + 8.0)], T0 + 8.0)
    crashed = observe_at(observer, [replica(pid=105, started_at=T0 + 9.0)], T0 + 9.0)

    assert bad["restarts_recent"] == 2.0
    assert reverted["restarts_recent"] == 0.0
    assert crashed["restarts_recent"] == 1.0


def test_restarts_older_than_the_window_are_forgotten(observer: Observer, servers: Servers) -> None:
    servers.add(8000)
    observer.observe([replica(pid=100)], T0)
    observer.observe([replica(pid=101, started_at=T0 + 5.0)], T0 + 5.0)

    signals = observe_at(observer, [replica(pid=101, started_at=T0 + 5.0)], T0 + 606.0)

    assert signals["restarts_recent"] == 0.0


def test_stopped_replicas_are_neither_probed_nor_reported(
    observer: Observer, servers: Servers, backend: FakeBackend
) -> None:
    servers.add(8000)
    stopped = servers.add(8001)

    obs = observer.observe(
        [replica(), replica("inference-2", 8001, state=ReplicaState.STOPPED)], T0
    )

    assert set(obs.signals) == {"inference-1", SERVICE}
    assert [v.replica.id for v in obs.views] == ["inference-1"]
    assert stopped.paths == []
    assert backend.resources_asked == ["inference-1"]


def test_backend_resources_become_cpu_and_memory_signals(
    observer: Observer, servers: Servers, backend: FakeBackend
) -> None:
    servers.add(8000)
    backend.samples["inference-1"] = ResourceSample(
        cpu_percent=150.0, memory_bytes=512.0 * 2**20, memory_percent=12.5
    )

    signals = observe_at(observer, [replica()], T0)

    assert (signals["cpu_percent"], signals["memory_bytes"], signals["memory_percent"]) == (
        150.0,
        512.0 * 2**20,
        12.5,
    )


def test_service_signals_come_from_metric_deltas_over_two_observations(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    server.metrics = metrics_text(ok=100, errors=0, fast=100, slow=0)
    first = observer.observe([replica()], T0)
    server.metrics = metrics_text(ok=190, errors=10, fast=150, slow=50)

    second = observer.observe([replica()], T0 + 10.0)

    assert first.signals[SERVICE] == {"replicas_ready": 1.0}
    service = second.signals[SERVICE]
    assert service["error_rate"] == 0.1  # 10 of 100 new /predict requests
    assert service["throughput_rps"] == 10.0  # 100 requests in 10 s
    assert service["replicas_ready"] == 1.0
    # 50 fast (<= 25 ms) and 50 slow (50-100 ms): the median is the edge of the fast bucket
    assert service["latency_p50_ms"] == pytest.approx(25.0)
    assert service["latency_p95_ms"] == pytest.approx(95.0)
    assert service["latency_p99_ms"] == pytest.approx(99.0)


def test_service_signals_sum_the_deltas_of_every_replica(
    observer: Observer, servers: Servers
) -> None:
    one, two = servers.add(8000), servers.add(8001)
    one.metrics = two.metrics = metrics_text(ok=0, errors=0, fast=0, slow=0)
    replicas = [replica(), replica("inference-2", 8001, pid=200)]
    observer.observe(replicas, T0)
    one.metrics = metrics_text(ok=40, errors=0, fast=40, slow=0)
    two.metrics = metrics_text(ok=50, errors=10, fast=60, slow=0)

    service = observer.observe(replicas, T0 + 5.0).signals[SERVICE]

    assert (service["error_rate"], service["throughput_rps"], service["replicas_ready"]) == (
        0.1,
        20.0,
        2.0,
    )


def test_a_restarted_replica_starts_its_metric_window_again(
    observer: Observer, servers: Servers
) -> None:
    server = servers.add(8000)
    server.metrics = metrics_text(ok=100, errors=0, fast=100, slow=0)
    observer.observe([replica(pid=100)], T0)
    server.metrics = metrics_text(ok=5, errors=0, fast=5, slow=0)

    service = observer.observe([replica(pid=101, started_at=T0 + 9)], T0 + 10.0).signals[SERVICE]

    assert service == {"replicas_ready": 1.0}  # one sample of the new process: no rate yet
