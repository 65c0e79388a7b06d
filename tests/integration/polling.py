"""Polling with a deadline: the way tests wait for a process, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_INTERVAL_S = 0.05


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    logs: Callable[[], str] | None = None,
) -> None:
    """Call ``condition`` until it is true; ``AssertionError`` naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = f"\n--- server log ---\n{logs()}" if logs else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(POLL_INTERVAL_S)  # pacing between polls, not synchronisation
