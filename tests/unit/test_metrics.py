"""The agent's warden_* metrics: per-tick gauges are replaced whole, never seen half-written."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics


def _signals(metrics: AgentMetrics) -> set[tuple[str, str, float]]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.labels["subject"], s.labels["signal"], s.value)
        for family in text_string_to_metric_families(text)
        if family.name == "warden_signal"
        for s in family.samples
    }


def test_set_signals_replaces_the_whole_set() -> None:
    metrics = AgentMetrics()
    metrics.set_signals({"inference-1": {"up": 1.0, "ready": 1.0}, "service": {"error_rate": 0.0}})
    metrics.set_signals({"inference-2": {"up": 0.0}})
    assert _signals(metrics) == {("inference-2", "up", 0.0)}
    assert metrics.signal.value("inference-2", "up") == 0.0
    assert metrics.signal.value("inference-1", "up") is None


def test_a_scrape_during_updates_sees_one_complete_tick() -> None:
    """Scrapes racing with per-tick updates see all of one tick's series, never a partial set."""
    metrics = AgentMetrics()
    ticks = [
        {f"inference-{i}": {"up": float(t), "ready": float(t)} for i in range(1, 6)}
        for t in range(2)
    ]
    expected = [
        {(subject, name, v) for subject, values in tick.items() for name, v in values.items()}
        for tick in ticks
    ]
    metrics.set_signals(ticks[0])
    stop = threading.Event()

    def update() -> None:
        n = 0
        while not stop.is_set() and n < 200_000:
            metrics.set_signals(ticks[n % 2])
            n += 1

    writer = threading.Thread(target=update)
    writer.start()
    try:
        seen = [_signals(metrics) for _ in range(300)]
    finally:
        stop.set()
        writer.join()
    assert all(s in expected for s in seen), [s for s in seen if s not in expected][:1]


def test_releases_and_firing_and_replica_states() -> None:
    metrics = AgentMetrics()
    metrics.set_releases("v2", "candidate", "v1")
    metrics.set_releases("v2", "good", None)
    assert metrics.release_info.value("v2", "good") == 1.0
    assert metrics.release_info.value("v2", "candidate") is None
    assert metrics.last_good_info.value("v1") is None
    metrics.set_firing([("replica-exited", "inference-1", "critical")])
    assert metrics.rule_firing.value("replica-exited", "inference-1", "critical") == 1.0
    metrics.set_replica_states(["ready", "ready", "starting"])
    assert metrics.replicas.value("ready") == 2.0
    assert metrics.replicas.value("starting") == 1.0


def test_wrong_label_arity_is_refused() -> None:
    metrics = AgentMetrics()
    with pytest.raises(ValueError, match="do not match"):
        metrics.signal.replace({("only-one",): 1.0})
