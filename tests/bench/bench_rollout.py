"""Staged rollout benchmark: failed requests during a rollout and an abort, time from breach to
weight 0, and the latency HAProxy adds.

One real agent (``warden agent``, process backend, ``balancer.kind: haproxy``) with real model
servers (``--threads 1``: two torch pools on 2 cores otherwise fight each other). Per round:

- *full rollout*: a healthy candidate (same model, new tag) staged 10 -> 50 -> 100 under a
  steady load of 4 client threads through HAProxy; every failed request is counted (5xx,
  refused, reset, timeout).
- *abort*: a candidate put under a 0.1-CPU cgroup quota (paused at its canary stage, quota
  applied, resumed) under the same load. "Breach -> weight 0" is from the abort event's timestamp
  (the tick that decided) to the first moment a poller reading HAProxy's admin socket every
  10 ms sees the candidate's weight at 0; "slow -> weight 0" is from the quota being applied to
  that moment (it includes the step's 10 % of traffic reaching ``min_requests``).
- *hop*: ``/health`` and ``/predict`` latency, one client, direct to the replica vs through
  HAProxy, interleaved in chunks of 50 so both see the same machine.

Writes the "Staged rollout" section of docs/benchmarks.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.docs_section import write_marked_section  # noqa: E402
from tests.bench.rollout_rounds import failed_per_round, measured, run_rounds  # noqa: E402
from tests.integration.agent_harness import RunningAgent, running_agent  # noqa: E402
from tests.integration.polling import wait_until  # noqa: E402
from tests.integration.rollout_support import (  # noqa: E402
    Traffic,
    candidate_replica,
    cpu_quota,
    rollout_config,
    wait_finished,
)

START, END = "<!-- bench-rollout:start -->", "<!-- bench-rollout:end -->"


def deploy(agent: RunningAgent, tag: str, **body: Any) -> None:
    reply = agent.post("/api/deploy", {"tag": tag, "steps": [10, 50, 100], **body})
    assert reply.status_code == 202, reply.text


def candidate_weight(sock_path: Path, port: int) -> int | None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(sock_path))
        sock.sendall(b"show servers state replicas\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    for line in text.splitlines()[2:]:
        cols = line.split()
        if len(cols) > 18 and cols[18] == str(port):
            return int(cols[7])
    return None


class WeightWatch:
    """Polls HAProxy every 10 ms; remembers when a server's weight was first seen at 0."""

    def __init__(self, sock_path: Path, port: int) -> None:
        self.sock_path, self.port = sock_path, port
        self.zero_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._seen_positive = False

    def __enter__(self) -> WeightWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set() and self.zero_at is None:
            weight = candidate_weight(self.sock_path, self.port)
            if weight:
                self._seen_positive = True
            elif weight == 0 and self._seen_positive:
                self.zero_at = time.time()
            time.sleep(0.01)


def full_rollout(agent: RunningAgent, public: str, tag: str) -> dict[str, Any]:
    with Traffic(public, threads=4) as traffic:
        deploy(agent, tag)
        doc = wait_finished(agent, tag)
    assert doc["staged"]["stage"] == "done", doc["staged"]
    return {"requests": len(traffic.seen), "failed": len(traffic.errors)}


def abort(agent: RunningAgent, public: str, tag: str) -> dict[str, Any]:
    sock = agent.root / "state" / "haproxy" / "haproxy.sock"
    with Traffic(public, threads=4) as traffic:
        deploy(agent, tag)
        assert agent.post("/api/rollout/pause", {}).status_code == 200
        pid, port = candidate_replica(agent, tag)
        with WeightWatch(sock, port) as watch, cpu_quota(pid, 0.1):
            slowed = time.time()
            assert agent.post("/api/rollout/resume", {}).status_code == 200
            doc = wait_finished(agent, tag)
            wait_until(lambda: watch.zero_at is not None, timeout=30, what="weight 0 seen")
    assert doc["staged"]["stage"] == "aborted", doc["staged"]
    events = agent.get("/api/events?limit=1000")["events"]
    decided = next(
        e["at"] for e in events if e["kind"] == "rollout-aborted" and e["subject"] == tag
    )
    assert watch.zero_at is not None
    return {
        "requests": len(traffic.seen),
        "failed": len(traffic.errors),
        "breach_to_zero_s": max(0.0, watch.zero_at - decided),
        "slow_to_zero_s": watch.zero_at - slowed,
        "reason": doc["staged"]["status"],
    }


def hop(direct: str, public: str, rounds: int = 10, chunk: int = 50) -> dict[str, float]:
    """p50/p95 in ms of /health and /predict, direct vs through HAProxy (keep-alive clients)."""
    samples: dict[str, list[float]] = {k: [] for k in ("hd", "hh", "pd", "ph")}
    with httpx.Client(base_url=direct) as d, httpx.Client(base_url=public) as h:

        def timed(call: Callable[[], httpx.Response]) -> float:
            started = time.perf_counter()
            call().raise_for_status()
            return (time.perf_counter() - started) * 1000.0

        body = {"inputs": ["I want a refund"]}
        for _ in range(rounds):
            for key, client in (("d", d), ("h", h)):
                for _ in range(chunk):
                    samples["h" + key].append(timed(lambda c=client: c.get("/health")))
                for _ in range(chunk // 5):
                    samples["p" + key].append(timed(lambda c=client: c.post("/predict", json=body)))
    return {f"{k}_{q}": _q(v, q) for k, v in samples.items() for q in (50, 95)}


def _q(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--step", default="6s", help="rollout step duration")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_start = os.getloadavg()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="warden-bench-rollout-") as tmp:
        root = Path(tmp)
        extra = rollout_config(args.step)
        with running_agent(root, extra=extra) as agent:
            agent.wait_serving("v1")
            public = f"http://127.0.0.1:{agent.server_port}"
            direct = agent.status()["replicas"][0]["url"]
            hop_ms = hop(direct, public)
            print(f"hop: {hop_ms}", flush=True)
            rows_full, rows_abort = run_rounds(
                args.runs,
                lambda tag: full_rollout(agent, public, tag),
                lambda tag: abort(agent, public, tag),
            )
    text = render(args, rows_full, rows_abort, hop_ms, load_start, started)
    print(text)
    if not args.no_write:
        write_marked_section("## Staged rollout", START, END, text)


def render(
    args: argparse.Namespace,
    full: list[dict[str, Any]],
    aborts: list[dict[str, Any]],
    hop_ms: dict[str, float],
    load_start: tuple[float, float, float],
    started: float,
) -> str:
    med = statistics.median
    breach = [a["breach_to_zero_s"] for a in aborts]
    slow = [a["slow_to_zero_s"] for a in aborts]
    failed_full = failed_per_round(full)
    failed_abort = failed_per_round(aborts)
    breach_s = ", ".join(f"{s * 1000:.0f} ms" for s in breach)
    breach_s += f" (median {med(breach) * 1000:.0f} ms)"
    slow_s = ", ".join(f"{s:.1f} s" for s in slow) + f" (median {med(slow):.1f} s)"
    h = hop_ms
    hop_rows = "\n".join(
        f"| `{path}` | {h[k + 'd_50']:.2f} / {h[k + 'd_95']:.2f} ms "
        f"| {h[k + 'h_50']:.2f} / {h[k + 'h_95']:.2f} ms "
        f"| {h[k + 'h_50'] - h[k + 'd_50']:+.2f} / {h[k + 'h_95'] - h[k + 'd_95']:+.2f} ms |"
        for path, k in (("/health", "h"), ("/predict", "p"))
    )
    return f"""{START}
{measured(started, load_start, len(full))}

Command: `bash scripts/bench-rollout.sh --runs {args.runs}` (`tests/bench/bench_rollout.py`; its
docstring defines every measurement). Steps 10,50,100 %, {args.step} each, 4 client threads through
HAProxy, servers with `--threads 1`.

| measurement | per round | target |
|---|---|---|
| failed requests, full rollout | {failed_full} | 0 |
| failed requests, abort | {failed_abort} | 0 |
| breach decided -> candidate weight 0 in HAProxy | {breach_s} | < 2 s |
| candidate slowed -> weight 0 | {slow_s} | |

Abort reason of the last round: {aborts[-1]["reason"]}

HAProxy hop (one keep-alive client, 500 `/health` and 100 `/predict` each way, interleaved):

| endpoint | direct p50 / p95 | through HAProxy p50 / p95 | added p50 / p95 |
|---|---|---|---|
{hop_rows}

"Slowed -> weight 0" is mostly waiting for evidence: at 10 % of traffic the slow candidate must
answer enough requests (`min_requests`, 50, for the p95 test; a fifth of that when its median is
over 4x stable's) while each of its answers takes seconds; the decision itself reaches HAProxy in
the same tick. The hop is measured on `/health`; on `/predict` the model's time and this load's
noise are far larger than the hop (a negative "added" figure is that noise).
{END}"""


if __name__ == "__main__":
    main()
