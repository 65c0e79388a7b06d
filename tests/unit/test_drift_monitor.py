"""agent.drift.monitor: observations by cursor, reference capture, windows, consecutive windows,
drift since a deploy, persistence - on an httpx MockTransport serving seeded observations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent.domain import Replica, ReplicaState
from agent.drift.detector import DriftSettings
from agent.drift.monitor import DriftMonitor, MonitorSettings
from agent.drift.reference import Reference, ReferenceStore

T0 = 1_700_000_000.0
DIM = 4


class FakeServers:
    """``/v1/observations`` of several replicas (by host), as the inference server pages them."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.rings: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, int]] = []

    def add(self, host: str, n: int, *, shift: float = 0.0, at: float = T0) -> None:
        ring = self.rings.setdefault(host, [])
        for _ in range(n):
            features = (self.rng.standard_normal(DIM) + shift).round(6).tolist()
            ring.append(
                {"seq": len(ring) + 1, "at": at, "features": features, "confidence": 0.9,
                 "label": "billing"}
            )  # fmt: skip

    def handler(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        after = int(request.url.params.get("after", "-1"))
        limit = int(request.url.params.get("limit", "1000"))
        self.requests.append((host, after))
        ring = self.rings.get(host, [])
        page = [o for o in ring if o["seq"] > after][:limit]
        cursor = page[-1]["seq"] if page else max(after, 0)
        body = {"next": cursor, "oldest": 1, "dim": DIM, "observations": page}
        return httpx.Response(200, json=body)


def replica(host: str, release: str, pid: int = 1) -> Replica:
    return Replica(
        id=f"inference-{host[-1]}",
        url=f"http://{host}:8000",
        release=release,
        state=ReplicaState.RUNNING,
        pid=pid,
        started_at=T0,
    )


def monitor(
    servers: FakeServers, state: Path, **overrides: Any
) -> tuple[DriftMonitor, ReferenceStore]:
    values: dict[str, Any] = {
        "window": 100,
        "min_window": 50,
        "reference_size": 200,
        "min_reference": 200,
        "consecutive": 2,
        "deploy_windows": 4,
        "detector": DriftSettings(alpha=0.01, min_statistic=0.1),
    }
    settings = MonitorSettings(**(values | overrides))
    client = httpx.Client(transport=httpx.MockTransport(servers.handler))
    store = ReferenceStore(state / "drift")
    return DriftMonitor(client=client, store=store, settings=settings), store


def step(
    m: DriftMonitor, ready: list[Replica], release: str, previous: str | None, now: float
) -> dict[str, float]:
    m.tick(ready=ready, release=release, previous_good=previous, now=now)
    m.poll(now)
    return dict(m.tick(ready=ready, release=release, previous_good=previous, now=now))


def test_reference_is_captured_at_promotion_and_saved(tmp_path: Path) -> None:
    servers = FakeServers()
    m, store = monitor(servers, tmp_path)
    r1 = replica("host1", "v1")
    servers.add("host1", 250)
    step(m, [r1], "v1", None, T0)
    m.promoted("v1", T0)
    step(m, [r1], "v1", None, T0 + 1)
    saved = store.load("v1")
    assert saved is not None and saved.n == 200 and saved.width == DIM + 1  # + confidence
    meta = json.loads((tmp_path / "drift" / "reference-v1.json").read_text())
    assert meta["n"] == 200 and meta["release"] == "v1"


def test_capture_waits_for_enough_traffic_and_says_so(tmp_path: Path) -> None:
    servers = FakeServers()
    m, store = monitor(servers, tmp_path, window=500)
    r1 = replica("host1", "v1")
    servers.add("host1", 120)
    m.promoted("v1", T0)
    step(m, [r1], "v1", None, T0)
    assert store.load("v1") is None
    assert m.status == "capturing the reference of v1: 120/200 observations so far"
    servers.add("host1", 100)
    step(m, [r1], "v1", None, T0 + 1)
    assert store.load("v1") is not None


def test_observations_are_read_by_cursor_not_twice(tmp_path: Path) -> None:
    servers = FakeServers()
    m, _ = monitor(servers, tmp_path)
    r1 = replica("host1", "v1")
    servers.add("host1", 30)
    step(m, [r1], "v1", None, T0)
    servers.add("host1", 5)
    step(m, [r1], "v1", None, T0 + 1)
    assert servers.requests == [("host1", -1), ("host1", 30)]


def _good_v1(servers: FakeServers, m: DriftMonitor, r1: Replica) -> None:
    servers.add("host1", 200)
    m.promoted("v1", T0)
    step(m, [r1], "v1", None, T0)


def test_drift_needs_two_consecutive_drifting_windows(tmp_path: Path) -> None:
    servers = FakeServers()
    m, _ = monitor(servers, tmp_path)
    r1 = replica("host1", "v1")
    _good_v1(servers, m, r1)
    servers.add("host1", 100)
    quiet = step(m, [r1], "v1", None, T0 + 10)
    assert quiet["drift_detected"] == 0.0 and quiet["drift_p_value"] > 0.01
    servers.add("host1", 100, shift=1.0)
    first = step(m, [r1], "v1", None, T0 + 20)
    assert first["drift_detected"] == 0.0 and first["drift_p_value"] < 1e-6
    assert first["drift_features_fraction"] == pytest.approx(4 / 5)  # confidence did not move
    servers.add("host1", 100, shift=1.0)
    second = step(m, [r1], "v1", None, T0 + 30)
    assert second["drift_detected"] == 1.0
    assert second["drift_statistic"] > 0.3
    assert second["drift_since_deploy"] == 0.0  # judged by its own reference


def test_small_windows_closed_by_age_are_skipped_and_said(tmp_path: Path) -> None:
    servers = FakeServers()
    m, _ = monitor(servers, tmp_path, max_age_s=60.0)
    r1 = replica("host1", "v1")
    _good_v1(servers, m, r1)
    tested = m.last_result
    servers.add("host1", 20, at=T0 + 100)
    step(m, [r1], "v1", None, T0 + 100)
    step(m, [r1], "v1", None, T0 + 200)
    assert m.last_result is tested
    assert m.status == "skipped a window of 20 observations older than 60 s: below min_window 50"
    servers.add("host1", 60, at=T0 + 300)
    step(m, [r1], "v1", None, T0 + 300)
    step(m, [r1], "v1", None, T0 + 400)
    assert m.last_result is not tested  # 60 >= min_window: tested
    assert m.last_result is not None and m.last_result.n_current == 60


def test_a_deploy_whose_features_drift_from_the_quiet_previous_release_is_drift_since_deploy(
    tmp_path: Path,
) -> None:
    servers = FakeServers()
    m, _ = monitor(servers, tmp_path)
    r1 = replica("host1", "v1")
    _good_v1(servers, m, r1)
    servers.add("host1", 100)
    assert step(m, [r1], "v1", None, T0 + 10)["drift_detected"] == 0.0  # v1 quiet
    r2 = replica("host2", "v2", pid=2)  # the candidate: same traffic, different features
    servers.add("host2", 100, shift=1.0)
    switched = step(m, [r2], "v2", "v1", T0 + 20)
    assert switched["drift_since_deploy"] == 0.0  # one window: not yet
    servers.add("host2", 100, shift=1.0)
    signals = step(m, [r2], "v2", "v1", T0 + 30)
    assert signals["drift_detected"] == 1.0
    assert signals["drift_since_deploy"] == 1.0
    m.promoted("v2", T0 + 30)
    step(m, [r2], "v2", "v1", T0 + 31)
    assert m.status.startswith("not capturing a reference for v2")


def test_drift_that_was_there_before_the_deploy_is_not_blamed_on_it(tmp_path: Path) -> None:
    servers = FakeServers()
    m, _ = monitor(servers, tmp_path)
    r1 = replica("host1", "v1")
    _good_v1(servers, m, r1)
    servers.add("host1", 200, shift=1.0)  # the inputs moved while v1 served
    assert step(m, [r1], "v1", None, T0 + 10)["drift_detected"] == 1.0
    r2 = replica("host2", "v2", pid=2)
    servers.add("host2", 200, shift=1.0)
    signals = step(m, [r2], "v2", "v1", T0 + 20)
    assert signals["drift_detected"] == 1.0
    assert signals["drift_since_deploy"] == 0.0


def test_switching_release_resets_the_verdicts_so_firing_rules_resolve(tmp_path: Path) -> None:
    servers = FakeServers()
    m, _ = monitor(servers, tmp_path)
    r1 = replica("host1", "v1")
    _good_v1(servers, m, r1)
    servers.add("host1", 200, shift=1.0)
    assert step(m, [r1], "v1", None, T0 + 10)["drift_detected"] == 1.0
    signals = step(m, [replica("host2", "v2", pid=2)], "v2", "v1", T0 + 20)
    assert signals == {"drift_detected": 0.0, "drift_since_deploy": 0.0}


def test_references_and_verdicts_survive_a_restart_of_the_agent(tmp_path: Path) -> None:
    servers = FakeServers()
    m, _ = monitor(servers, tmp_path)
    r1 = replica("host1", "v1")
    _good_v1(servers, m, r1)
    servers.add("host1", 100)
    step(m, [r1], "v1", None, T0 + 10)
    again, _ = monitor(servers, tmp_path)  # a new agent process: same state_dir
    servers.add("host1", 100, shift=1.0)
    r2 = replica("host2", "v2", pid=2)
    servers.add("host2", 200, shift=1.0)
    signals = step(again, [r2], "v2", "v1", T0 + 20)
    assert signals["drift_since_deploy"] == 1.0  # v1's reference and quiet verdict were kept


def test_a_reference_file_is_used_for_every_release_and_nothing_is_captured(
    tmp_path: Path,
) -> None:
    servers = FakeServers()
    rng = np.random.default_rng(3)
    ref = np.column_stack([rng.standard_normal((300, DIM)), np.full(300, 0.9)])
    file_ref = Reference(release="*", features=ref, captured_at=T0, source="ref.npy")
    settings = MonitorSettings(window=100, min_window=50, reference_size=200, min_reference=200)
    client = httpx.Client(transport=httpx.MockTransport(servers.handler))
    store = ReferenceStore(tmp_path / "drift")
    m = DriftMonitor(client=client, store=store, settings=settings, reference_file=file_ref)
    r1 = replica("host1", "v1")
    servers.add("host1", 100)
    m.promoted("v1", T0)
    signals = step(m, [r1], "v1", None, T0)
    assert signals["drift_detected"] == 0.0 and "drift_p_value" in signals
    assert store.load("v1") is None


def test_an_unreachable_replica_leaves_the_signals_alone(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    store = ReferenceStore(tmp_path / "drift")
    client = httpx.Client(transport=httpx.MockTransport(down))
    m = DriftMonitor(client=client, store=store, settings=MonitorSettings())
    signals = step(m, [replica("host1", "v1")], "v1", None, T0)
    assert signals == {"drift_detected": 0.0, "drift_since_deploy": 0.0}
    assert m.status.startswith("observations of inference-1 unavailable")


def test_repeated_identical_requests_like_canary_runs_are_left_out(tmp_path: Path) -> None:
    servers = FakeServers()
    m, store = monitor(servers, tmp_path)
    r1 = replica("host1", "v1")
    golden = np.random.default_rng(5).standard_normal((8, DIM)).round(6)
    ring = servers.rings.setdefault("host1", [])
    for run in range(50):  # 50 canary runs: the same 8 items, one timestamp per run
        for row in golden + 1e-7 * (run % 2):  # batch composition may change the last digits
            ring.append({"seq": len(ring) + 1, "at": T0 + run, "features": row.tolist(),
                         "confidence": 0.99, "label": "billing"})  # fmt: skip
    servers.add("host1", 200, at=T0 + 60)
    m.promoted("v1", T0)
    step(m, [r1], "v1", None, T0 + 60)
    assert m.repeated == 49 * 8
    reference = store.load("v1")
    assert reference is not None and reference.n == 200
    assert int((np.abs(reference.features[:, :DIM] - golden[0]).max(axis=1) < 1e-3).sum()) <= 1
