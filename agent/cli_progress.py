"""Progress of long operations on the command line: ``warden deploy --wait`` follows a release
from candidate start through canaries and bake to good or bad.

On a terminal the progress is one line that updates in place (rich's status spinner); piped into
a file or CI log it is a new line only when something changed (a stage, a replica becoming
ready, every 30 s of bake), so logs stay short and greppable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from rich.console import Console

from agent.web.rollout import FINAL_STAGES

POLL_S = 0.5
BAKE_LINE_EVERY_S = 30


def rollout_line(doc: dict[str, Any]) -> str:
    """One line saying where a release is on its way to good."""
    tag, stage = doc["release"], doc["stage"]
    if stage == "starting":
        return (
            f"{tag} starting: {doc['replicas_ready']} of {doc['desired_replicas']} replicas ready"
        )
    if stage == "baking":
        return (
            f"{tag} baking: {doc['baked_s']:.0f} s of {doc['bake_s']:.0f} s clean, "
            f"{doc['bake_left_s']:.0f} s left"
        )
    if stage == "bad":
        return f"{tag} is bad, serving {doc['current_release']} again: {doc['reason']}"
    return str(doc["reason"] or f"{tag} {stage}")


def _progress_key(doc: dict[str, Any]) -> tuple[object, ...]:
    """What must change for a piped log to get a new line."""
    baked = doc.get("baked_s") or 0.0
    reason = "" if doc["stage"] == "baking" else doc["reason"]  # a baking reason counts seconds
    return (doc["stage"], doc["replicas_ready"], int(baked // BAKE_LINE_EVERY_S), reason)


def follow_rollout(
    fetch: Callable[[], dict[str, Any]],
    console: Console,
    *,
    timeout_s: float,
    poll_s: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> tuple[int, str]:
    """Poll ``fetch`` (a rollout document) until the release is good, bad or replaced.

    Returns ``(exit code, last line)``: 0 when it became good, 1 otherwise (bad, replaced by
    another deploy, or still not decided after ``timeout_s``).
    """
    poll_s = POLL_S if poll_s is None else poll_s
    sleep = sleep or time.sleep
    deadline = monotonic() + timeout_s
    printed: tuple[object, ...] | None = None
    live = console.status("", spinner="dots") if console.is_terminal else nullcontext()
    with live as status:
        while True:
            doc = fetch()
            line = rollout_line(doc)
            if doc["stage"] in FINAL_STAGES:
                return (0 if doc["stage"] == "good" else 1), line
            if status is not None:
                status.update(line)
            elif _progress_key(doc) != printed:
                printed = _progress_key(doc)
                console.print(line, markup=False, highlight=False)
            if monotonic() > deadline:
                return 1, f"gave up waiting after {timeout_s:.0f} s: {line}"
            sleep(poll_s)
