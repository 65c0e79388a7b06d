"""Drift on real model features: the default MiniLM intent router's projected embeddings and
confidences (as ``/v1/observations`` serves them) go through the agent's ``DriftMonitor`` with
the default ``drift:`` settings. A domain shift (router queries -> unrelated text) must turn
``drift_detected`` on within 2 windows; unshifted traffic must not. Power over many windows and
the other scenarios are measured by ``scripts/bench-drift.sh`` (docs/benchmarks.md)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent.app import drift_monitor
from agent.config import load_config
from agent.domain import Replica, ReplicaState
from agent.drift.monitor import DriftMonitor
from tests.integration import drift_scenarios as sc

pytestmark = pytest.mark.integration
T0 = 1_700_000_000.0


class Ring:
    """One replica's ``/v1/observations``, fed with feature rows (32 features + confidence)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, rows: np.ndarray, at: float) -> None:
        for row in rows:
            self.items.append(
                {"seq": len(self.items) + 1, "at": at, "features": row[:-1].tolist(),
                 "confidence": float(row[-1]), "label": None}
            )  # fmt: skip

    def __call__(self, request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["after"])
        limit = int(request.url.params["limit"])
        page = [o for o in self.items if o["seq"] > after][:limit]
        cursor = page[-1]["seq"] if page else max(after, 0)
        return httpx.Response(200, json={"next": cursor, "oldest": 1, "dim": 32,
                                         "observations": page})  # fmt: skip


@pytest.fixture(scope="module")
def traffic() -> dict[str, np.ndarray]:
    """Featurised once: a reference (1000), an unshifted window, two windows of unrelated text."""
    rng = random.Random(sc.SEED)
    return {
        "reference": sc.features(sc.traffic(sc.REFERENCE, rng)),
        "quiet": sc.features(sc.traffic(sc.WINDOW, rng)),
        "shifted": sc.features(sc.traffic(2 * sc.WINDOW, rng, shifted=1.0)),
    }


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[tuple[DriftMonitor, Ring]]:
    ring = Ring()
    with httpx.Client(transport=httpx.MockTransport(ring)) as client:
        m = drift_monitor(load_config(None, base_dir=tmp_path), client)
        assert isinstance(m, DriftMonitor)
        yield m, ring


def poll(m: DriftMonitor, now: float) -> dict[str, float]:
    replica = Replica(id="inference-1", url="http://replica:8000", release="v1",
                      state=ReplicaState.RUNNING, pid=1, started_at=T0)  # fmt: skip
    m.tick(ready=[replica], release="v1", previous_good=None, now=now)
    m.poll(now)
    return m.signals()


def test_the_features_are_the_servers_layout(traffic: dict[str, np.ndarray]) -> None:
    assert traffic["reference"].shape == (1000, 33)
    confidence = traffic["reference"][:, -1]
    assert ((confidence > 0) & (confidence <= 1)).all()


def test_a_domain_shift_is_detected_within_two_windows_and_quiet_traffic_is_not(
    traffic: dict[str, np.ndarray], monitor: tuple[DriftMonitor, Ring]
) -> None:
    m, ring = monitor
    assert (m.settings.window, m.settings.consecutive) == (500, 2)  # the shipped defaults
    ring.add(traffic["reference"], T0)
    m.promoted("v1", T0)
    poll(m, T0)
    assert m.status == "captured the reference of v1 (1000 observations)"

    ring.add(traffic["quiet"], T0 + 60)
    quiet = poll(m, T0 + 60)
    assert quiet["drift_detected"] == 0.0
    assert quiet["drift_p_value"] >= 0.01

    ring.add(traffic["shifted"][: sc.WINDOW], T0 + 120)
    first = poll(m, T0 + 120)
    assert first["drift_p_value"] < 1e-6  # the first shifted window already drifts
    assert first["drift_detected"] == 0.0  # ... but one window is not enough evidence
    ring.add(traffic["shifted"][sc.WINDOW :], T0 + 180)
    second = poll(m, T0 + 180)
    assert second["drift_detected"] == 1.0  # 1000 observations after the shift began
    assert second["drift_features_fraction"] > 0.5
    assert second["drift_statistic"] > 0.3
