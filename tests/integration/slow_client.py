"""A slowloris client: sends a request one byte per second and says when the server hung up."""

from __future__ import annotations

import socket
import time


def seconds_until_cut_off(
    host: str, port: int, payload: bytes, *, head: bytes = b"", pace_s: float = 1.0
) -> float | None:
    """Send ``head`` at once, then ``payload`` one byte every ``pace_s`` (paced by the read
    timeout, not a sleep). Seconds until the server closed the connection, or None if it was
    still waiting when every byte had been sent."""
    with socket.create_connection((host, port), timeout=5.0) as sock:
        sock.sendall(head)
        started = time.monotonic()
        sock.settimeout(pace_s)
        for byte in payload:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1024) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue  # the server is still waiting for us: the next byte
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - started
    return None


def host_port(url: str) -> tuple[str, int]:
    """``("127.0.0.1", 8000)`` from ``http://127.0.0.1:8000``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)
