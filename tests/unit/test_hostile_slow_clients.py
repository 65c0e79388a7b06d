"""The slow-client guard (agent/slow_clients.py) on both of uvicorn's HTTP parsers: httptools
(what a development install picks) and h11 (what the images have). A tiny app on a loopback
port: a trickled request is cut off at the deadline; a request that arrived whole is answered
however long the answer takes; a kept-alive connection gets a fresh allowance per request."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agent.slow_clients import guarded_http
from tests.integration.polling import wait_until
from tests.integration.slow_client import seconds_until_cut_off

DEADLINE_S = 0.5
SLOW_ANSWER_S = 3 * DEADLINE_S
REPO = Path(__file__).resolve().parents[2]


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(SLOW_ANSWER_S)  # a model that takes longer than the deadline
    return PlainTextResponse("done")


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


APP = Starlette(routes=[Route("/slow", slow), Route("/echo", echo, methods=["POST"])])


@pytest.fixture(params=[H11Protocol, HttpToolsProtocol], ids=["h11", "httptools"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(
            APP,
            host="127.0.0.1",
            port=free,
            log_level="warning",
            lifespan="off",
            http=guarded_http(DEADLINE_S, base=request.param),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="the test server to listen")
    yield free
    server.should_exit = True
    thread.join(timeout=10)


def test_trickled_headers_are_cut_off_at_the_deadline(port: int) -> None:
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20 + b"\r\n\r\n"

    seconds = seconds_until_cut_off("127.0.0.1", port, head, pace_s=0.2)

    assert seconds is not None and DEADLINE_S - 0.05 <= seconds < DEADLINE_S + 2


def test_a_trickled_body_is_cut_off_at_the_deadline(port: int) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"

    seconds = seconds_until_cut_off("127.0.0.1", port, b"b" * 20, head=head, pace_s=0.2)

    assert seconds is not None and seconds < DEADLINE_S + 2


def test_a_whole_request_is_answered_however_long_the_answer_takes(port: int) -> None:
    response = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=10.0)

    assert (response.status_code, response.text) == (200, "done")


def test_each_request_on_a_kept_alive_connection_gets_its_own_allowance(port: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
        answers = [client.get("/slow").text, client.post("/echo", content=b"abc").text]

    assert answers == ["done", "3"]


def test_the_agent_and_the_server_carry_the_same_guard() -> None:
    def code(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        return text[text.index('"""', 3) :]  # without the module docstring

    assert code(REPO / "agent" / "slow_clients.py") == code(REPO / "inference" / "slow_clients.py")
