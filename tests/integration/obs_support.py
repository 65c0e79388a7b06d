"""Helpers for the observability tests: a loopback HTTP receiver that records what it gets,
processes started and stopped for a test, and Prometheus HTTP API queries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil

MARKER = "WARDEN_OBS_TEST_MARKER"  # set on the agent (and so its replicas) for teardown


# --- a loopback HTTP receiver -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the sink answered
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class Sink:
    """A small HTTP server that records every POST. ``fail_first`` requests get a 500."""

    def __init__(self, port: int = 0, *, fail_first: int = 0) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._fail_left = fail_first
        sink = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # else keep-alive costs ~40 ms (Nagle + delayed ACK)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = sink._answer()
                sink._record(
                    Received(
                        path=self.path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        body=body,
                        status=status,
                        at=time.time(),
                    )
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the test reports what it received

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answer(self) -> int:
        with self._lock:
            if self._fail_left > 0:
                self._fail_left -= 1
                return 500
            return 200

    def _record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-20000:]


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=log_dir,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Proc(name=name, process=process, log_path=log_path)


def stop(proc: Proc, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    if proc.process.poll() is None:
        proc.process.send_signal(signal.SIGTERM)
        try:
            proc.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait(timeout=timeout)


def kill_marked(marker: str) -> None:
    """SIGKILL every process carrying ``MARKER=marker`` (replicas an agent left behind)."""
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == marker:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def get_json(url: str, **params: Any) -> Any:
    response = httpx.get(url, params=params, timeout=5.0)
    response.raise_for_status()
    return response.json()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def alive(proc: Proc) -> Callable[[Callable[[], bool]], Callable[[], bool]]:
    """Wrap a condition so that it raises (with the logs) when ``proc`` died meanwhile."""

    def wrap(condition: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            if proc.process.poll() is not None:
                raise AssertionError(
                    f"{proc.name} exited ({proc.process.returncode}):\n{proc.logs()}"
                )
            return condition()

        return check

    return wrap


# --- Prometheus ---------------------------------------------------------------------------------


def prometheus_query(base: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """``/api/v1/query``: the result vector (raises on a query error)."""
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = at
    data = get_json(f"{base}/api/v1/query", **params)
    assert data["status"] == "success", data
    return list(data["data"]["result"])


def prometheus_range(
    base: str, expr: str, start: float, end: float, step: float = 1.0
) -> list[dict[str, Any]]:
    """``/api/v1/query_range``: the result matrix (raises on a query error)."""
    data = get_json(f"{base}/api/v1/query_range", query=expr, start=start, end=end, step=step)
    assert data["status"] == "success", data
    return list(data["data"]["result"])
