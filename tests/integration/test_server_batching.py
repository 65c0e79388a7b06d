"""Micro-batching, readiness, liveness under load, observations and version on a real server."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re

import httpx
import pytest

from inference.modeldir import default_model_dir
from tests.integration.conftest import RunningServer, TinyModels, running_server
from tests.integration.polling import wait_until

pytestmark = pytest.mark.integration

PHRASES = [
    "I was charged twice for the same order",
    "the app crashes when I open settings",
    "please add a dark mode",
    "I cannot log in to my account",
    "refund my last payment please",
    "error 404 when uploading a photo",
    "love the new dashboard",
    "reset my password",
]


def metrics_text(server: RunningServer) -> str:
    return httpx.get(server.url + "/metrics", timeout=10.0).text


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not found"
    return float(match.group(1))


def test_64_concurrent_requests_are_batched_and_answered_like_single_requests(
    default_server: RunningServer,
) -> None:
    texts = [f"{PHRASES[i % len(PHRASES)]} (ticket {i})" for i in range(64)]
    with httpx.Client(base_url=default_server.url, timeout=60.0) as client:
        alone = [client.post("/predict", json={"inputs": t}).json() for t in texts[:8]]
    before = metrics_text(default_server)

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=default_server.url, timeout=60.0) as client:
            return await asyncio.gather(
                *(client.post("/predict", json={"inputs": t}) for t in texts)
            )

    responses = asyncio.run(together())
    after = metrics_text(default_server)
    assert [r.status_code for r in responses] == [200] * 64
    for single, batched in zip(alone, responses[:8], strict=True):
        (want,), (got,) = single["predictions"], batched.json()["predictions"]
        assert got["label"] == want["label"]
        for label, score in want["scores"].items():
            assert math.isclose(got["scores"][label], score, abs_tol=1e-4)
    batches = sample(after, "inference_batch_size_count") - sample(
        before, "inference_batch_size_count"
    )
    single_item = sample(after, 'inference_batch_size_bucket{le="1.0"}') - sample(
        before, 'inference_batch_size_bucket{le="1.0"}'
    )
    items = sample(after, "inference_batch_size_sum") - sample(before, "inference_batch_size_sum")
    assert items == 64
    assert single_item < batches, "every batch had one item: no batching happened"
    assert batches < 64


def test_health_answers_while_a_batch_is_in_flight(default_server: RunningServer) -> None:
    long_text = "my invoice shows a charge I do not recognise " * 40  # ~1800 chars
    payload = {"inputs": [long_text] * 64}  # two batches of 32 long sequences

    async def scenario() -> tuple[bool, int, int]:
        async with httpx.AsyncClient(base_url=default_server.url, timeout=120.0) as client:
            batch = asyncio.create_task(client.post("/predict", json=payload))
            # Items left waiting in the queue mean the worker is busy with the first batch.
            while True:
                text = (await client.get("/metrics")).text
                if sample(text, "inference_queue_depth") > 0 or batch.done():
                    break
            health = await client.get("/health")
            in_flight = not batch.done()
            return in_flight, health.status_code, (await batch).status_code

    in_flight, health_status, batch_status = asyncio.run(scenario())
    assert health_status == 200
    assert in_flight, "the batch finished before /health answered"
    assert batch_status == 200


def test_ready_is_503_until_the_model_loaded_and_warmed_up(tiny_models: TinyModels) -> None:
    args = ["--model", str(tiny_models.masked_lm), "--load-delay", "2"]
    with running_server(args, wait="health") as server:
        early = httpx.get(server.url + "/ready", timeout=10.0)
        early_predict = httpx.post(server.url + "/predict", json={"inputs": "[MASK]"}, timeout=10)
        wait_until(
            lambda: httpx.get(server.url + "/ready", timeout=10.0).status_code == 200,
            timeout=120,
            what="/ready 200",
            logs=server.logs,
        )
        late = httpx.get(server.url + "/ready", timeout=10.0)
        late_predict = httpx.post(server.url + "/predict", json={"inputs": "[MASK]"}, timeout=10)
    assert early.status_code == 503
    assert early.json() == {
        "ready": False,
        "reason": "waiting 2 s (--load-delay) before loading",
        "failed": False,
        "release": "dev",
    }
    assert early_predict.status_code == 503
    assert early_predict.json()["error"]["code"] == "not_ready"
    assert late.json() == {"ready": True, "release": "dev"}
    assert late_predict.status_code == 200


def test_version_reports_release_model_and_weights_sha256(default_server: RunningServer) -> None:
    version = httpx.get(default_server.url + "/version", timeout=10.0).json()
    weights = default_model_dir() / "model.safetensors"
    assert version["release"] == "v-test"
    assert version["model"] == "all-MiniLM-L6-v2"
    assert version["model_path"] == str(default_model_dir().resolve())
    assert version["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert version["task"] == "classify"
    assert version["device"] == "cpu"
    assert version["max_batch"] == 32
    assert version["max_wait_ms"] == 5.0
    assert isinstance(version["started_at"], float)
    info = [line for line in metrics_text(default_server).splitlines() if "model_info{" in line]
    assert info == [
        'inference_model_info{device="cpu",dtype="float32",model="all-MiniLM-L6-v2",'
        f'quantize="none",release="v-test",sha256="{version["weights_sha256"]}",'
        'task="classify"} 1.0'
    ]


def test_observations_cursor_returns_each_new_item_once_without_text(
    default_server: RunningServer,
) -> None:
    url = default_server.url
    start = httpx.get(url + "/v1/observations", params={"after": -1}, timeout=10).json()
    cursor = start["next"]
    texts = ["my card was declined", "the app will not start", "I love it"]
    response = httpx.post(url + "/predict", json={"inputs": texts}, timeout=60).json()
    first = httpx.get(url + "/v1/observations", params={"after": cursor, "limit": 2}, timeout=10)
    page1 = first.json()
    page2 = httpx.get(url + "/v1/observations", params={"after": page1["next"]}, timeout=10).json()
    empty = httpx.get(url + "/v1/observations", params={"after": page2["next"]}, timeout=10).json()

    seen = page1["observations"] + page2["observations"]
    assert [o["seq"] for o in seen] == [cursor + 1, cursor + 2, cursor + 3]
    assert page1["next"] == cursor + 2 and page2["next"] == cursor + 3
    assert [o["label"] for o in seen] == [p["label"] for p in response["predictions"]]
    assert [o["confidence"] for o in seen] == [p["score"] for p in response["predictions"]]
    assert all(len(o["features"]) == 32 for o in seen)
    assert page1["dim"] == 32
    assert empty["observations"] == [] and empty["next"] == page2["next"]
    assert all(text not in first.text for text in texts)
    assert set(seen[0]) == {"seq", "at", "features", "confidence", "label"}


def test_sigterm_stops_the_server_cleanly(tiny_models: TinyModels) -> None:
    with running_server(["--model", str(tiny_models.masked_lm)]) as server:
        server.process.terminate()
        code = server.process.wait(timeout=30)
    assert code == 0
    assert "stopped" in server.logs()
