"""The server tells probe requests (``X-Warden-Probe``) from users' (``origin`` label), and a
staged rollout's windows leave probes out (the agent's golden set sends the header:
``agent.probes.PROBE``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from starlette.testclient import TestClient

from agent.collectors import parse_metrics
from inference.metrics import ServerMetrics
from inference.middleware import MetricsMiddleware


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_requests_with_the_probe_header_are_counted_as_probes() -> None:
    metrics = ServerMetrics(release="v1")
    client = TestClient(MetricsMiddleware(_ok, metrics=metrics))
    for _ in range(3):
        client.post("/predict", json={"inputs": ["hi"]})
    client.post("/predict", json={"inputs": ["hi"]}, headers={"X-Warden-Probe": "canary"})
    parsed = parse_metrics(generate_latest(metrics.registry).decode())
    assert parsed.requests[("/predict", "200")] == 4.0
    assert parsed.probe_requests == {("/predict", "200"): 1.0}
    assert parsed.users_only().requests == {("/predict", "200"): 3.0}
