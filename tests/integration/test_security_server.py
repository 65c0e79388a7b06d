"""Hostile clients against a real model server process on loopback: slowloris (headers or body
trickled one byte a second), many slow clients at once, deeply nested JSON, invalid UTF-8.

Each gets a clear, bounded answer: a trickling client is disconnected after ``--request-timeout``
while everyone else is served; bad bodies get a 422 naming the problem. (Oversized bodies: 413,
tests/integration/test_server_errors.py.)
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.integration.conftest import RunningServer, TinyModels, running_server
from tests.integration.slow_client import host_port, seconds_until_cut_off

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT_S = 1.0
CUT_OFF_WITHIN_S = REQUEST_TIMEOUT_S + 3  # the deadline, plus a busy machine's slack
SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
PREDICT_HEAD = (
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 40\r\n\r\n"
)


@pytest.fixture(scope="module")
def server(tiny_models: TinyModels) -> Iterator[RunningServer]:
    args = [
        *("--model", str(tiny_models.sequence_classifier)),
        *("--request-timeout", str(REQUEST_TIMEOUT_S)),
    ]
    with running_server(args) as running:
        yield running


def predict(server: RunningServer, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return httpx.post(server.url + "/predict", content=body, headers=headers, timeout=30.0)


def test_a_client_sending_its_headers_one_byte_a_second_is_cut_off(server: RunningServer) -> None:
    seconds = seconds_until_cut_off(*host_port(server.url), SLOW_HEAD)

    assert seconds is not None, "the server waited for the whole trickled request"
    assert seconds < CUT_OFF_WITHIN_S


def test_a_client_sending_its_body_one_byte_a_second_is_cut_off(server: RunningServer) -> None:
    body = b'{"inputs": "hello"}' + b" " * 21
    seconds = seconds_until_cut_off(*host_port(server.url), body, head=PREDICT_HEAD)

    assert seconds is not None, "the server waited for the whole trickled body"
    assert seconds < CUT_OFF_WITHIN_S


def test_slow_clients_hold_no_connection_and_do_not_block_others(server: RunningServer) -> None:
    host, port = host_port(server.url)
    process = psutil.Process(server.process.pid)
    slow = [socket.create_connection((host, port), timeout=5.0) for _ in range(50)]
    try:
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
        served = httpx.get(server.url + "/health", timeout=5.0)
        for sock in slow:  # each is hung up on after the deadline: recv sees EOF
            sock.settimeout(CUT_OFF_WITHIN_S)
            assert sock.recv(1024) == b""
        open_now = [c for c in process.net_connections() if c.status == psutil.CONN_ESTABLISHED]
    finally:
        for sock in slow:
            sock.close()

    assert served.status_code == 200
    assert len(open_now) < 5  # the 50 slow clients' connections are gone on the server's side


def test_a_prompt_client_on_a_kept_alive_connection_is_served(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        answers = [client.post("/predict", json={"inputs": "hello"}) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]


def test_deeply_nested_json_gets_422_saying_it_is_nested_too_deeply(server: RunningServer) -> None:
    depth = 100_000  # ~200 KB: under the body limit, far past the parser's depth limit
    response = predict(server, b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}")

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_json", "body")
    assert "recursion limit exceeded" in error["message"]
    assert server.process.poll() is None


def test_nesting_within_the_parser_limit_gets_422_naming_the_field(server: RunningServer) -> None:
    response = predict(server, b'{"inputs": ' + b"[" * 50 + b"]" * 50 + b"}")

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_type", "inputs[0]")


def test_deeply_nested_json_as_the_whole_body_gets_422(server: RunningServer) -> None:
    response = predict(server, b"[" * 200_000 + b"]" * 200_000)

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "body"


def test_invalid_utf8_gets_422_saying_the_body_is_not_valid_json(server: RunningServer) -> None:
    response = predict(server, b'{"inputs": "caf\xe9 \xff\xfe"}')

    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_json", "body")


def test_a_lone_surrogate_escape_is_refused_or_answered_never_a_500(server: RunningServer) -> None:
    response = predict(server, b'{"inputs": "half a pair \\ud800 here"}')

    assert response.status_code in (200, 422)
    assert server.process.poll() is None
