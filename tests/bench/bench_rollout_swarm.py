"""Staged rollout on Swarm, split by replicas: failed requests during a rollout and an abort, and
the time from a breach to the candidate's last answer.

The stack of tests/docker/swarm_split.py: a real agent (Swarm backend, ``balancer.kind:
replicas``), two stable replicas under a DNS alias on an overlay network, and one client
container on that network resolving the alias before every request. Per round:

- *full rollout*: a healthy candidate (the same image, a new tag) staged 33 -> 50 -> 100 (1 of 3
  tasks, 2 of 4, then the promotion); every failed request is counted (error, refused, timeout,
  name not resolved). (The share per step is measured by tests/docker/test_rollout_swarm.py,
  which holds each step for 600 answers.)
- *abort*: a candidate whose traffic replica is put under a 0.1-CPU quota (``docker update``, the
  rollout paused meanwhile) at the 33 % step. "Breach -> last answer" is from the abort event
  (the tick that decided) to the start of the last request the client sent to the candidate:
  after it, Swarm had taken the task out of DNS. "Slowed -> decided" includes gathering evidence.

Writes the "Staged rollout on Swarm" section of docs/benchmarks.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.bench.docs_section import write_marked_section  # noqa: E402
from tests.bench.rollout_rounds import failed_per_round, measured, run_rounds  # noqa: E402
from tests.docker.conftest import engine_env  # noqa: E402
from tests.docker.swarm_split import READY_S, Stack, split_stack  # noqa: E402
from tests.integration.polling import wait_until  # noqa: E402

START, END = "<!-- bench-rollout-swarm:start -->", "<!-- bench-rollout-swarm:end -->"


def full_rollout(stack: Stack, image: str, tag: str) -> dict[str, Any]:
    started = time.time()
    errors_before = len(stack.client.errors())
    stack.deploy(tag, image, [33, 50, 100])
    doc = stack.wait_rollout(tag, "done", lambda d: d["stage"] in ("done", "aborted"))
    assert doc["stage"] == "done", doc
    stack.agent.wait_serving(tag, timeout=READY_S)
    answers = stack.client.since(started)
    return {
        "requests": len(answers),
        "failed": len(stack.client.errors()) - errors_before,
        "seconds": time.time() - started,
    }


def abort(stack: Stack, image: str, tag: str) -> dict[str, Any]:
    started = time.time()
    errors_before = len(stack.client.errors())
    stack.deploy(tag, image, [33, 100])
    stack.wait_rollout(tag, "the first step", lambda d: d["stage"] == "traffic")
    stack.command("pause")
    slots = stack.candidate_traffic_slots(tag)
    since = time.time()
    wait_until(lambda: stack.answered_by(slots, tag, since), timeout=READY_S, what="answers")
    container = stack.docker.containers.get(stack.container_of(slots[0]))
    container.update(cpu_period=100_000, cpu_quota=10_000)  # 0.1 CPU, like docker update --cpus
    slowed = time.time()
    stack.command("resume")
    doc = stack.wait_rollout(tag, "aborted", lambda d: d["stage"] in ("aborted", "done"))
    assert doc["stage"] == "aborted", doc
    events = stack.agent.get("/api/events?limit=1000")["events"]
    decided = next(
        e["at"] for e in events if e["kind"] == "rollout-aborted" and e["subject"] == tag
    )
    last = max(a["t"] for a in stack.client.since(started) if a.get("release") == tag)
    return {
        "requests": len(stack.client.since(started)),
        "failed": len(stack.client.errors()) - errors_before,
        "breach_to_last_s": last - decided,
        "slowed_to_decided_s": decided - slowed,
        "reason": doc["status"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    env = engine_env()
    client = docker.DockerClient(base_url=env["DOCKER_HOST"], version="1.41", timeout=120)
    images = {"good": "warden-inference:good"}
    client.images.get(images["good"])  # built by scripts/engine.sh
    load_start = os.getloadavg()
    started = time.time()
    session = uuid.uuid4().hex[:6]
    with (
        tempfile.TemporaryDirectory(prefix="warden-bench-swarm-") as tmp,
        split_stack(
            client,
            env["DOCKER_HOST"],
            images,
            Path(tmp),
            service=f"bsw{session}",
            alias=f"model-{session}",
            labels={"warden.bench": session},
        ) as stack,
    ):
        full, aborts = run_rounds(
            args.runs,
            lambda tag: full_rollout(stack, images["good"], tag),
            lambda tag: abort(stack, images["good"], tag),
        )
    text = render(args, full, aborts, load_start, started)
    print(text)
    if not args.no_write:
        write_marked_section("## Staged rollout on Swarm (split by replicas)", START, END, text)


def render(
    args: argparse.Namespace,
    full: list[dict[str, Any]],
    aborts: list[dict[str, Any]],
    load_start: tuple[float, float, float],
    started: float,
) -> str:
    med = statistics.median
    failed_full = failed_per_round(full)
    failed_abort = failed_per_round(aborts)
    last = [a["breach_to_last_s"] for a in aborts]
    decided = [a["slowed_to_decided_s"] for a in aborts]
    last_s = ", ".join(f"{s:.2f} s" for s in last) + f" (median {med(last):.2f} s)"
    decided_s = ", ".join(f"{s:.1f} s" for s in decided) + f" (median {med(decided):.1f} s)"
    took = ", ".join(f"{r['seconds']:.0f} s" for r in full)
    return f"""{START}
{measured(started, load_start, len(full))}

Command: `bash scripts/bench-rollout-swarm.sh --runs {args.runs}`
(`tests/bench/bench_rollout_swarm.py`; its docstring defines every measurement). Two stable
replicas, steps 33,50,100 % (5 s each, and until both sides answered 50 requests), one client
container resolving the alias before every request, servers with `--threads 1`.

| measurement | per round | target |
|---|---|---|
| failed requests, full rollout | {failed_full} | 0 |
| failed requests, abort | {failed_abort} | 0 |
| breach decided -> last request the candidate got | {last_s} | < 2 s |
| candidate slowed (0.1 CPU) -> breach decided | {decided_s} | |
| full rollout, deploy -> promoted and serving | {took} | |

Abort reason of the last round: {aborts[-1]["reason"]}

"Breach -> last request" is the orchestration: the agent's tick scales the traffic replica's
service to 0, Swarm's dispatcher tells the node, the node takes the task out of DNS and then stops
it after two seconds (requests already sent finish). The split itself adds no hop: clients
connect to the tasks directly.
{END}"""


if __name__ == "__main__":
    main()
