"""Serving options on a real server process: int8 + length buckets, and a refused precision."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import httpx
import pytest

from tests.integration.conftest import RunningServer, TinyModels
from tests.integration.polling import wait_until

pytestmark = pytest.mark.integration

WORDS = ("the", "movie", "was", "very", "good", "bad", "i", "love", "this", "service")


def text_of(words: int, seed: int) -> str:
    """A text of ``words`` vocabulary words (one token each), varied by ``seed``."""
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(words))


def metric_lines(server: RunningServer, name: str) -> list[str]:
    text = httpx.get(server.url + "/metrics", timeout=10.0).text
    return [line for line in text.splitlines() if line.startswith(name)]


def test_int8_server_with_length_buckets_answers_every_request_in_input_order(
    launch_server: Callable[..., RunningServer], tiny_models: TinyModels
) -> None:
    args = ["--model", str(tiny_models.sequence_classifier), "--release", "v-int8"]
    args += ["--quantize", "dynamic-int8", "--length-buckets", "6,12", "--max-batch", "4"]
    server = launch_server(args)
    version = httpx.get(server.url + "/version", timeout=10.0).json()
    assert (version["quantize"], version["dtype"], version["device"]) == (
        "dynamic-int8",
        "float32",
        "cpu",
    )
    assert (version["length_buckets"], version["max_tokens"]) == ([6, 12], 4096)
    (info,) = metric_lines(server, "inference_model_info")
    assert 'quantize="dynamic-int8"' in info
    assert 'dtype="float32"' in info
    assert metric_lines(server, "inference_model_load_duration_seconds_count") == [
        'inference_model_load_duration_seconds_count{outcome="success",release="v-int8"} 1.0',
        'inference_model_load_duration_seconds_count{outcome="failure",release="v-int8"} 0.0',
    ]

    # Requests mixing 1..30-word texts, sent together so their items share (bucketed) batches.
    requests = [[text_of(1 + (r * 5 + i * 11) % 30, r + i) for i in range(4)] for r in range(6)]
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        alone = {
            text: client.post("/predict", json={"inputs": text}).json()["predictions"][0]
            for request in requests
            for text in request
        }

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60.0) as client:
            return await asyncio.gather(
                *(client.post("/predict", json={"inputs": request}) for request in requests)
            )

    # int8 activations are quantized per batch, so a score moves slightly (~1e-4) with its
    # batch-mates: compare every label's score with a tolerance, not near-tie top-1 labels.
    for request, response in zip(requests, asyncio.run(together()), strict=True):
        assert response.status_code == 200
        predictions = response.json()["predictions"]
        assert len(predictions) == len(request)
        for prediction, text in zip(predictions, request, strict=True):
            for label, score in alone[text]["scores"].items():
                assert math.isclose(prediction["scores"][label], score, abs_tol=2e-3), text


def test_half_precision_without_a_gpu_fails_the_load_with_the_reason_and_counts_it(
    launch_server: Callable[..., RunningServer], tiny_models: TinyModels
) -> None:
    args = ["--model", str(tiny_models.sequence_classifier), "--release", "v-half"]
    server = launch_server(
        [*args, "--dtype", "float16"], env={"CUDA_VISIBLE_DEVICES": ""}, wait="health"
    )

    def failed() -> bool:
        return bool(httpx.get(server.url + "/ready", timeout=5.0).json().get("failed"))

    wait_until(failed, timeout=120.0, what="/ready to report the failed load", logs=server.logs)
    ready = httpx.get(server.url + "/ready", timeout=5.0).json()
    assert ready["reason"] == (
        "model load failed: --dtype float16 needs a CUDA device and torch sees none (--device "
        "auto resolved to cpu); on CPU use --quantize dynamic-int8 or float32"
    )
    assert metric_lines(server, "inference_model_load_duration_seconds_count") == [
        'inference_model_load_duration_seconds_count{outcome="success",release="v-half"} 0.0',
        'inference_model_load_duration_seconds_count{outcome="failure",release="v-half"} 1.0',
    ]
    assert metric_lines(server, "inference_model_info") == []
