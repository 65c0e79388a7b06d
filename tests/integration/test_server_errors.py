"""Bad input never gets a bare 500 or a hang: each case asserts status, code, field and limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningServer, TinyModels, running_server
from tests.integration.polling import wait_until

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def post(server: RunningServer, payload: Any = None, **kwargs: Any) -> httpx.Response:
    if payload is not None:
        kwargs["json"] = payload
    return httpx.post(server.url + "/predict", timeout=60.0, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    return error


def metric_value(server: RunningServer, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10.0).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def broken_server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    """A masked LM whose tokenizer knows "boom" but whose embeddings stop one short of it."""
    args = ["--model", str(tiny_models.broken_masked_lm), "--max-wait-ms", "50"]
    with running_server(args) as server:
        yield server


@pytest.mark.parametrize(
    ("body", "code", "field", "message"),
    [
        (b"this is not json", "invalid_json", "body", "body: not valid JSON"),
        (b'{"inputs": ["a"', "invalid_json", "body", "body: not valid JSON"),
        (b"[1, 2]", "invalid_type", "body", "body: must be a JSON object"),
        (b"", "missing_body", "body", "body: the request has no body"),
        (b"{}", "missing_field", "inputs", "inputs: required field is missing"),
        (b'{"inputs": 3}', "invalid_type", "inputs", "inputs: must be a string or a list"),
        (b'{"inputs": ["ok", 7]}', "invalid_type", "inputs[1]", "inputs[1]: must be a string"),
        (b'{"inputs": "x", "top_k": "5"}', "invalid_type", "top_k", "top_k: must be a whole"),
        (b'{"inputs": "x", "extra": 1}', "unknown_field", "extra", "extra: unknown field"),
        (b'{"inputs": []}', "empty_inputs", "inputs", "inputs: the list is empty"),
        (b'{"inputs": ["ok", "  "]}', "empty_text", "inputs[1]", "inputs[1]: text is empty"),
    ],
)
def test_malformed_request_gets_422_naming_the_field(
    default_server: RunningServer, body: bytes, code: str, field: str, message: str
) -> None:
    response = post(default_server, content=body)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"].startswith(message), error["message"]


def test_text_over_the_character_limit_gets_422_with_the_limit(
    default_server: RunningServer,
) -> None:
    response = post(default_server, {"inputs": ["fine", "x" * 2001]})
    assert response.status_code == 422
    assert error_of(response) == {
        "code": "text_too_long",
        "message": "inputs[1]: text has 2001 characters; the limit is 2000",
        "field": "inputs[1]",
        "limit": 2000,
    }


def test_too_many_inputs_gets_422_with_the_limit(default_server: RunningServer) -> None:
    response = post(default_server, {"inputs": ["a"] * 65})
    assert response.status_code == 422
    assert error_of(response) == {
        "code": "too_many_inputs",
        "message": "inputs: 65 texts in one request; the limit is 64",
        "field": "inputs",
        "limit": 64,
    }


def test_top_k_out_of_range_gets_422_with_the_limit(default_server: RunningServer) -> None:
    response = post(default_server, {"inputs": "a", "top_k": 51})
    assert response.status_code == 422
    error = error_of(response)
    assert (error["code"], error["field"], error["limit"]) == ("top_k_out_of_range", "top_k", 50)


def test_body_over_the_size_limit_by_content_length_gets_413(
    default_server: RunningServer,
) -> None:
    body = json.dumps({"inputs": "a" * MIB}).encode()
    response = post(default_server, content=body)
    assert response.status_code == 413
    error = error_of(response)
    assert (error["code"], error["field"], error["limit"]) == ("body_too_large", "body", MIB)
    assert (
        error["message"] == f"body: Content-Length is {len(body)} bytes; the limit is {MIB} bytes"
    )


def test_streamed_body_over_the_size_limit_gets_413(default_server: RunningServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"inputs": "'
        for _ in range(11):
            yield b"a" * 100_000
        yield b'"}'

    response = post(default_server, content=chunks())
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "body_too_large"
    assert error["message"] == f"body: more than {MIB} bytes received; the limit is {MIB} bytes"


def test_unknown_path_and_wrong_method_get_json_errors(
    default_server: RunningServer,
) -> None:
    missing = httpx.get(default_server.url + "/nope", timeout=10.0)
    assert (missing.status_code, error_of(missing)["code"]) == (404, "not_found")
    wrong = httpx.get(default_server.url + "/predict", timeout=10.0)
    assert (wrong.status_code, error_of(wrong)["code"]) == (405, "method_not_allowed")


def test_observations_limit_out_of_range_gets_422(default_server: RunningServer) -> None:
    response = httpx.get(default_server.url + "/v1/observations?limit=0", timeout=10.0)
    assert response.status_code == 422
    error = error_of(response)
    assert (error["code"], error["field"], error["limit"]) == ("out_of_range", "limit", 4096)
    assert error["message"] == "limit: 0 is out of range; it must be from 1 to 4096"


def test_fill_mask_without_mask_gets_422(fill_mask_server: RunningServer) -> None:
    response = post(fill_mask_server, {"inputs": ["床前[MASK]月光", "no mask here"]})
    assert response.status_code == 422
    assert error_of(response) == {
        "code": "missing_mask",
        "message": "inputs[1]: fill-mask needs at least one [MASK] token in the text",
        "field": "inputs[1]",
    }


def test_model_exception_gets_500_with_error_id_and_server_keeps_serving(
    broken_server: RunningServer,
) -> None:
    errors_before = metric_value(broken_server, "inference_model_errors_total")
    broken = post(broken_server, {"inputs": ["boom [MASK]"]})
    assert broken.status_code == 500
    error = error_of(broken)
    assert error["code"] == "model_error"
    assert error["error_id"] in error["message"]
    wait_until(
        lambda: error["error_id"] in broken_server.logs(),
        timeout=10,
        what="the error id in the server log",
    )
    assert metric_value(broken_server, "inference_model_errors_total") == errors_before + 1
    healthy = post(broken_server, {"inputs": ["床前明月光，疑是地[MASK]霜"]})
    assert healthy.status_code == 200


def test_one_poisonous_input_in_a_batch_fails_only_its_own_request(
    broken_server: RunningServer,
) -> None:
    async def send_together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=broken_server.url, timeout=60.0) as client:
            texts = ["boom [MASK]" if i == 3 else f"床 [MASK] {i}" for i in range(12)]
            return await asyncio.gather(
                *(client.post("/predict", json={"inputs": t}) for t in texts)
            )

    responses = asyncio.run(send_together())
    assert [r.status_code for r in responses] == [500 if i == 3 else 200 for i in range(12)]


def test_queue_full_gets_503_with_retry_after(classifier_server: RunningServer) -> None:
    # classifier_server runs --max-batch 2 --max-queue 8.
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=classifier_server.url, timeout=60.0) as client:
            payload = {"inputs": ["i love this movie", "awful service", "great", "bad"]}
            return await asyncio.gather(*(client.post("/predict", json=payload) for _ in range(30)))

    too_big = post(classifier_server, {"inputs": ["a"] * 9})  # can never fit in 8 places
    responses = asyncio.run(flood())
    assert too_big.status_code == 503
    assert too_big.headers["retry-after"] == "1"
    assert error_of(too_big) == {
        "code": "queue_full",
        "message": "queue full: 9 item(s) asked for, 8 of 8 place(s) free; retry shortly",
    }
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            assert error_of(response)["code"] == "queue_full"
        else:
            assert len(response.json()["predictions"]) == 4


def test_model_that_cannot_load_keeps_ready_503_with_the_reason(tmp_path: Any) -> None:
    missing = tmp_path / "no-such-model"
    with running_server(["--model", str(missing)], wait="health") as server:
        wait_until(
            lambda: "model load failed" in server.logs(),
            timeout=60,
            what="the load failure to be logged",
            logs=server.logs,
        )
        ready = httpx.get(server.url + "/ready", timeout=10.0)
        predict = post(server, {"inputs": "hello"})
        health = httpx.get(server.url + "/health", timeout=10.0)
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert ready.json()["failed"] is True  # will not become ready without a fix and restart
    assert ready.json()["reason"] == (
        f"model load failed: model directory {missing} does not exist or is not a directory"
    )
    assert predict.status_code == 503
    assert predict.headers["retry-after"] == "1"
    assert error_of(predict)["code"] == "not_ready"
    assert "model load failed" in error_of(predict)["message"]
    assert health.status_code == 200
    assert "ERROR" in server.logs()
