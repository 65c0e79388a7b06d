"""Probes: every failure is a result with an exact reason, never an exception."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from agent import probes
from agent.probes import probe_health, probe_ready, run_canaries

BASE = "http://replica:8000"


@dataclass(frozen=True, slots=True, kw_only=True)
class Canary:
    """Stand-in for agent.canaries.Canary (same attributes)."""

    name: str
    input: str
    expected: str
    min_confidence: float


Handler = Callable[[httpx.Request], httpx.Response]


class Server:
    """A MockTransport handler that records requests and answers with a fixed function."""

    def __init__(self, answer: Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


def client_for(answer: Handler) -> tuple[httpx.Client, Server]:
    server = Server(answer)
    return httpx.Client(transport=httpx.MockTransport(server)), server


def raises(exc: Exception) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    return answer


def replies(status: int, body: object = None, text: str | None = None) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=body)

    return answer


@pytest.fixture
def canaries() -> list[Canary]:
    return [
        Canary(name="refund", input="I was charged twice", expected="billing", min_confidence=0.3),
        Canary(name="login", input="cannot log in", expected="account issue", min_confidence=0.3),
    ]


def predictions(*items: tuple[str | None, float | None]) -> Handler:
    body = {"task": "classify", "predictions": [{"label": lb, "score": sc} for lb, sc in items]}
    return replies(200, body)


@pytest.fixture
def no_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


# --- health ---------------------------------------------------------------------------------


def test_health_ok_when_server_says_ok(no_logs: None) -> None:
    client, server = client_for(replies(200, {"status": "ok"}))

    result = probe_health(client, BASE + "/", 0.5)

    assert (result.ok, result.reason, result.status_code) == (True, "", 200)
    assert result.latency_s >= 0
    assert [str(r.url) for r in server.requests] == [BASE + "/health"]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            httpx.ConnectError("[Errno 111] Connection refused"),
            "cannot connect: [Errno 111] Connection refused",
        ),
        (httpx.ConnectTimeout("timed out"), "timeout after 0.5 s (connecting)"),
        (httpx.ReadTimeout("timed out"), "timeout after 0.5 s (waiting for the response)"),
        (httpx.WriteTimeout("timed out"), "timeout after 0.5 s (sending the request)"),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            "RemoteProtocolError: Server disconnected without sending a response.",
        ),
    ],
)
def test_health_transport_failure_is_a_failed_result(
    error: Exception, reason: str, no_logs: None
) -> None:
    client, _ = client_for(raises(error))

    result = probe_health(client, BASE, 0.5)

    assert (result.ok, result.reason, result.status_code) == (False, reason, None)


def test_health_surprise_error_is_a_failed_result_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, _ = client_for(raises(RuntimeError("boom")))

    result = probe_health(client, BASE, 0.5)

    assert (result.ok, result.reason) == (False, "RuntimeError: boom")
    assert "probe GET http://replica:8000/health failed unexpectedly" in caplog.text


def test_health_5xx_names_status_and_server_message() -> None:
    body = {"error": {"code": "model_failure", "message": "model failed", "error_id": "e1"}}
    client, _ = client_for(replies(500, body))

    result = probe_health(client, BASE, 0.5)

    assert (result.ok, result.reason, result.status_code) == (False, "HTTP 500: model failed", 500)


def test_health_5xx_without_json_quotes_the_body() -> None:
    client, _ = client_for(replies(502, text="Bad Gateway"))

    result = probe_health(client, BASE, 0.5)

    assert (result.ok, result.reason) == (False, "HTTP 502: Bad Gateway")


def test_health_non_json_is_a_failure() -> None:
    client, _ = client_for(replies(200, text="<html>ok</html>"))

    result = probe_health(client, BASE, 0.5)

    assert (result.ok, result.reason) == (False, "HTTP 200: response is not JSON: <html>ok</html>")


def test_health_wrong_body_is_a_failure() -> None:
    client, _ = client_for(replies(200, {"status": "starting"}))

    result = probe_health(client, BASE, 0.5)

    assert (result.ok, result.reason) == (False, 'unexpected body: {"status": "starting"}')


def test_oversized_body_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "MAX_BODY_BYTES", 10)
    client, _ = client_for(replies(200, {"status": "ok", "padding": "x" * 100}))

    result = probe_health(client, BASE, 0.5)

    assert (result.ok, result.reason) == (False, "response body larger than 10 bytes")


def test_body_trickling_past_the_deadline_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter(i * 0.3 for i in range(100))  # each perf_counter() reading is 0.3 s later
    monkeypatch.setattr(probes.time, "perf_counter", lambda: next(ticks))
    chunks = [b'{"sta', b'tus":', b' "ok"}']
    client, _ = client_for(lambda request: httpx.Response(200, content=iter(chunks)))

    result = probe_health(client, BASE, 0.5)

    assert (result.ok, result.reason, result.status_code) == (
        False,
        "timeout after 0.5 s (reading the response body)",
        200,
    )


def test_unsupported_url_is_a_failure() -> None:
    with httpx.Client() as client:  # the real transport refuses the scheme before any I/O
        result = probe_health(client, "ftp://replica:8000", 0.5)

    assert result.ok is False
    assert result.reason.startswith("UnsupportedProtocol: ")


# --- readiness ------------------------------------------------------------------------------


def test_ready_ok() -> None:
    client, server = client_for(replies(200, {"ready": True, "release": "v1"}))

    result = probe_ready(client, BASE, 0.5)

    assert (result.ok, result.reason, result.status_code) == (True, "", 200)
    assert [str(r.url) for r in server.requests] == [BASE + "/ready"]


def test_not_ready_gives_the_servers_reason() -> None:
    client, _ = client_for(replies(503, {"ready": False, "reason": "loading model"}))

    result = probe_ready(client, BASE, 0.5)

    assert (result.ok, result.reason, result.status_code) == (
        False,
        "not ready: loading model",
        503,
    )


def test_ready_with_wrong_shape_is_a_failure() -> None:
    client, _ = client_for(replies(200, {"status": "ok"}))

    result = probe_ready(client, BASE, 0.5)

    assert (result.ok, result.reason) == (False, 'unexpected body: {"status": "ok"}')


def test_ready_timeout_is_a_failure() -> None:
    client, _ = client_for(raises(httpx.ReadTimeout("timed out")))

    result = probe_ready(client, BASE, 0.25)

    assert (result.ok, result.reason) == (False, "timeout after 0.25 s (waiting for the response)")


# --- canaries -------------------------------------------------------------------------------


def test_canaries_pass_in_one_request(canaries: list[Canary]) -> None:
    client, server = client_for(predictions(("billing", 0.83), ("account issue", 0.7)))

    result = run_canaries(client, BASE, canaries, 0.5)

    assert [(i.name, i.ok, i.got, i.confidence, i.reason) for i in result.items] == [
        ("refund", True, "billing", 0.83, ""),
        ("login", True, "account issue", 0.7, ""),
    ]
    assert (result.failures, result.accuracy) == (0, 1.0)
    (request,) = server.requests
    assert (request.method, str(request.url)) == ("POST", BASE + "/predict")
    assert json.loads(request.content) == {"inputs": ["I was charged twice", "cannot log in"]}
    # the server counts it as origin="probe": rollout windows leave the golden set out
    assert request.headers["X-Warden-Probe"] == "canary"


def test_canary_with_wrong_label_names_expected_and_got(canaries: list[Canary]) -> None:
    client, _ = client_for(predictions(("account issue", 0.41), ("account issue", 0.9)))

    result = run_canaries(client, BASE, canaries, 0.5)

    first = result.items[0]
    assert (first.ok, first.expected, first.got, first.confidence) == (
        False,
        "billing",
        "account issue",
        0.41,
    )
    assert first.reason == "expected 'billing', got 'account issue' (0.41)"
    assert (result.failures, result.accuracy) == (1, 0.5)


def test_canary_below_min_confidence_fails(canaries: list[Canary]) -> None:
    client, _ = client_for(predictions(("billing", 0.12), ("account issue", 0.3)))

    result = run_canaries(client, BASE, canaries, 0.5)

    assert [(i.ok, i.reason) for i in result.items] == [
        (False, "confidence 0.12 < 0.30"),
        (True, ""),  # exactly the minimum passes
    ]


def test_canary_without_label_or_score(canaries: list[Canary]) -> None:
    client, _ = client_for(predictions((None, None), ("account issue", None)))

    result = run_canaries(client, BASE, canaries, 0.5)

    assert [i.reason for i in result.items] == [
        "expected 'billing', got no label",
        "no confidence score; need >= 0.30",
    ]


def test_canary_score_not_needed_when_min_confidence_is_zero() -> None:
    canary = Canary(
        name="mask", input="床前明月光，疑是地[MASK]霜", expected="上", min_confidence=0
    )
    client, _ = client_for(predictions(("上", None)))

    result = run_canaries(client, BASE, [canary], 0.5)

    assert [(i.ok, i.got) for i in result.items] == [(True, "上")]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            replies(503, {"error": {"code": "queue_full", "message": "queue full"}}),
            "HTTP 503: queue full",
        ),
        (raises(httpx.ReadTimeout("timed out")), "timeout after 0.5 s (waiting for the response)"),
        (replies(200, text="not json"), "HTTP 200: response is not JSON: not json"),
        (replies(200, {"predictions": "x"}), 'unexpected body: {"predictions": "x"}'),
        (replies(200, [1, 2]), "unexpected body: [1, 2]"),
        (predictions(("billing", 0.9)), "1 predictions for 2 inputs"),
    ],
)
def test_canary_request_failure_fails_every_item(
    answer: Handler, reason: str, canaries: list[Canary]
) -> None:
    client, _ = client_for(answer)

    result = run_canaries(client, BASE, canaries, 0.5)

    assert [(i.name, i.ok, i.got, i.confidence, i.reason) for i in result.items] == [
        ("refund", False, None, None, reason),
        ("login", False, None, None, reason),
    ]
    assert result.accuracy == 0.0


def test_no_canaries_sends_nothing() -> None:
    client, server = client_for(predictions())

    result = run_canaries(client, BASE, [], 0.5)

    assert (result.items, result.accuracy, server.requests) == ((), 1.0, [])


def test_ready_probe_marks_a_failed_model_load_as_permanent() -> None:
    body = {"ready": False, "reason": "model load failed: bad config", "failed": True}
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(503, json=body))
    )

    result = probe_ready(client, "http://replica:8000", 0.5)

    assert (result.ok, result.permanent) == (False, True)
    assert result.reason == "not ready: model load failed: bad config"


def test_ready_probe_of_a_loading_server_is_not_permanent() -> None:
    body = {"ready": False, "reason": "loading", "failed": False}
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(503, json=body))
    )

    result = probe_ready(client, "http://replica:8000", 0.5)

    assert (result.ok, result.permanent) == (False, False)


def test_canaries_that_get_no_answer_are_unanswered_not_wrong() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = httpx.Client(transport=httpx.MockTransport(hang))
    canary = Canary(name="billing", input="refund", expected="billing", min_confidence=0.3)

    result = run_canaries(client, "http://replica:8000", [canary], 0.5)

    assert result.unanswered != ""
    assert result.failures == 1


def test_canaries_answered_with_a_server_error_are_failures_not_unanswered() -> None:
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(500, json={"error": {}}))
    )
    canary = Canary(name="billing", input="refund", expected="billing", min_confidence=0.3)

    result = run_canaries(client, "http://replica:8000", [canary], 0.5)

    assert result.unanswered == ""
    assert result.failures == 1
