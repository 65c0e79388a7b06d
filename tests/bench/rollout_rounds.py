"""What the two staged-rollout benchmarks share (HAProxy: bench_rollout.py; Swarm split by
replicas: bench_rollout_swarm.py): their rounds and the common lines of their report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Row = dict[str, Any]


def run_rounds(
    runs: int, full: Callable[[str], Row], abort: Callable[[str], Row]
) -> tuple[list[Row], list[Row]]:
    """``runs`` rounds of one full rollout (tag ``good-N``) then one abort (``slow-N``), each
    printed as it finishes."""
    full_rows: list[Row] = []
    abort_rows: list[Row] = []
    for i in range(1, runs + 1):
        full_rows.append(full(f"good-{i}"))
        print(f"round {i} full: {full_rows[-1]}", flush=True)
        abort_rows.append(abort(f"slow-{i}"))
        print(f"round {i} abort: {abort_rows[-1]}", flush=True)
    return full_rows, abort_rows


def measured(started: float, load_start: tuple[float, float, float], rounds: int) -> str:
    """The report's first lines: when, on how many CPUs, the load, how long ``rounds`` took."""
    when = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f"Measured {when} UTC on {os.cpu_count()} CPUs; load average {load_start[0]:.2f} at the "
        f"start,\n{os.getloadavg()[0]:.2f} at the end; {rounds} round(s) in "
        f"{(time.time() - started) / 60:.1f} min."
    )


def failed_per_round(rows: list[Row]) -> str:
    """``failed/requests`` of each round."""
    return ", ".join(f"{r['failed']}/{r['requests']}" for r in rows)
