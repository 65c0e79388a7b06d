"""Staged rollouts for real: an agent process, real model servers, a real HAProxy in front.

One agent runs the whole module (a model load is the expensive part); each test deploys a new
release over whatever is current and drives traffic through HAProxy's public port with a bounded
load client that records which release answered every request.

Servers run with ``--threads 1`` so the two processes on this 2-core machine do not fight over the
same cores (two torch pools of 2 threads each make the *newer* process look 2-3x slower, which
is contention between the test's processes, not a property of the release).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.agent_harness import RunningAgent, running_agent, swapped_intents
from tests.integration.polling import wait_until
from tests.integration.rollout_support import (
    Traffic,
    candidate_replica,
    cpu_quota,
    rollout_config,
    rollout_doc,
    step_starts,
    wait_finished,
)

STEP_S = 10.0
# model loads, step holds until 400+ answers, a restart: minutes on a busy 2-core machine
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    root = tmp_path_factory.mktemp("rollout")
    with running_agent(root, extra=rollout_config(f"{STEP_S:g}s")) as a:
        a.wait_serving("v1")
        wait_until(lambda: _served_by(a, "v1"), timeout=30, what="HAProxy serving v1")
        yield a


def _served_by(agent: RunningAgent, release: str) -> bool:
    try:
        reply = httpx.post(_public(agent) + "/predict", json={"inputs": ["hi"]}, timeout=5)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200 and reply.json()["release"] == release


def _public(agent: RunningAgent) -> str:
    return f"http://127.0.0.1:{agent.server_port}"


def deploy(agent: RunningAgent, tag: str, **body: Any) -> dict[str, Any]:
    reply = agent.post("/api/deploy", {"tag": tag, **body})
    assert reply.status_code == 202, reply.text
    doc: dict[str, Any] = reply.json()
    assert doc["rollout"]["stage"] == "starting"
    return doc


def wait_stage(agent: RunningAgent, tag: str, stage: str, share: int | None = None) -> None:
    def there() -> bool:
        staged = rollout_doc(agent, tag).get("staged") or {}
        return staged.get("stage") == stage and (share is None or staged.get("share") == share)

    wait_until(there, timeout=180, what=f"{tag} in {stage} {share}", logs=agent.logs)


def hold_for_answers(
    agent: RunningAgent, traffic: Traffic, tag: str, percent: int, answers: int
) -> None:
    """Pause the rollout at its ``percent`` step until ``traffic`` got ``answers`` in that step.

    A step is timed, and how many requests fit in it depends on how busy the machine is; a
    paused step keeps its weights and its clock stops, so the share is measured on enough
    requests whatever the machine's speed.
    """
    wait_stage(agent, tag, "traffic", share=percent)
    assert agent.post("/api/rollout/pause", {}).status_code == 200
    events = agent.get("/api/events?limit=1000")["events"]
    start = [t for t, p in step_starts(events, tag) if p == percent][-1]
    wait_until(
        lambda: traffic.share(tag, start + 0.5, time.time())[1] >= answers,
        timeout=180,
        what=f"{answers} answers at the {percent} % step",
    )
    assert agent.post("/api/rollout/resume", {}).status_code == 200


def haproxy_weights(agent: RunningAgent) -> dict[str, int]:
    """Weights of the servers in use, read from HAProxy itself (admin socket)."""
    path = agent.root / "state" / "haproxy" / "haproxy.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(b"show servers state replicas\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    out = {}
    for line in text.splitlines()[2:]:
        cols = line.split()
        if len(cols) > 18 and cols[18] != "1":  # srv_port 1: an unassigned server
            out[f"{cols[4]}:{cols[18]}"] = int(cols[7])
    return out


def test_a_healthy_candidate_goes_10_50_100_with_the_traffic_share_of_each_step(
    agent: RunningAgent,
) -> None:
    with Traffic(_public(agent), threads=8) as traffic:
        deploy(agent, "v2", steps=[10, 50, 100], note="same model, new tag", load_test=True)
        for percent in (10, 50):  # each step holds until the client saw 400 answers in it
            hold_for_answers(agent, traffic, "v2", percent, answers=420)
        doc = wait_finished(agent, "v2")
    assert doc["staged"]["stage"] == "done", doc
    assert doc["status"] == "good"
    assert traffic.errors == []
    events = agent.get("/api/events?limit=1000")["events"]
    steps = step_starts(events, "v2")
    assert [p for _, p in steps] == [10, 50, 100]
    ends = [t for t, _ in steps[1:]] + [steps[-1][0] + STEP_S]
    for (start, percent), end in zip(steps, ends, strict=True):
        # skip the first half second: right after a weight change round-robin settles
        share, n = traffic.share("v2", start + 0.5, end)
        assert n >= 400 or percent == 100, (percent, n)
        assert abs(share * 100 - percent) <= 5, (percent, share, n)
    assert _served_by(agent, "v2")
    history = {r["tag"]: r for r in agent.get("/api/releases")["releases"]}
    staged = history["v2"]["rollout"]
    assert (staged["note"], staged["furthest"], staged["stage"]) == (
        "same model, new tag",
        100,
        "done",
    )
    assert staged["by"] and len(staged["weights_sha256"]) == 64
    load = staged["load"]  # before any user traffic: candidate alone, then stable, same load
    assert load["candidate"]["requests"] == load["stable"]["requests"] == 200
    assert load["candidate"]["errors"] == load["stable"]["errors"] == 0


def test_a_candidate_three_times_slower_is_stopped_at_the_first_step_without_a_failed_request(
    agent: RunningAgent,
) -> None:
    stable = agent.status()["current_release"]
    with Traffic(_public(agent), threads=3) as traffic:
        deploy(agent, "v3-slow", steps=[10, 50, 100])
        assert agent.post("/api/rollout/pause", {}).status_code == 200
        with cpu_quota(candidate_replica(agent, "v3-slow")[0], 0.1):
            assert agent.post("/api/rollout/resume", {}).status_code == 200
            doc = wait_finished(agent, "v3-slow")
    staged = doc["staged"]
    assert staged["stage"] == "aborted", staged
    assert staged["furthest"] == 10
    assert "at 10 %" in staged["status"], staged["status"]
    assert "p95" in staged["status"] or "median" in staged["status"], staged["status"]
    assert doc["status"] == "bad"
    assert traffic.errors == [], traffic.errors[:5]
    assert traffic.count()["v3-slow"] > 0  # it did get its 10 % before the abort
    assert agent.status()["current_release"] == stable
    assert _served_by(agent, stable)


def test_a_candidate_with_failing_canaries_never_receives_user_traffic(
    agent: RunningAgent, tmp_path: Path
) -> None:
    bad_intents = swapped_intents(tmp_path / "swapped.yaml")
    with Traffic(_public(agent), threads=2) as traffic:
        deploy(agent, "v4-wrong", args=[f"--intents={bad_intents}"], steps=[10, 100])
        doc = wait_finished(agent, "v4-wrong")
    staged = doc["staged"]
    assert staged["stage"] == "aborted" and staged["furthest"] == 0, staged
    assert "canaries failed" in staged["status"]
    assert traffic.count()["v4-wrong"] == 0
    assert traffic.errors == []
    alerts = [a for a in agent.audit() if a.get("kind") == "rollout-aborted"]
    assert alerts and alerts[-1]["subject"] == "v4-wrong"


def test_agent_killed_mid_step_resumes_the_step_with_weights_matching_its_state(
    agent: RunningAgent,
) -> None:
    with Traffic(_public(agent), threads=2) as traffic:
        deploy(agent, "v5", steps=[50, 100], step_duration="20s")
        wait_stage(agent, "v5", "traffic", share=50)
        # the step is stored before the same tick pushes its weights: kill once HAProxy has them
        wait_until(
            lambda: sorted(haproxy_weights(agent).values()) == [128, 128],
            timeout=30,
            what="the 50 % weights in HAProxy",
        )
        before = haproxy_weights(agent)
        agent.kill()
        killed_at = time.time()
        wait_until(
            lambda: traffic.share("v5", killed_at, time.time())[1] >= 100,
            timeout=60,
            what="traffic served with the agent dead",
        )
        assert haproxy_weights(agent) == before  # HAProxy kept the weights on its own
        agent.start()
        wait_stage(agent, "v5", "traffic", share=50)
        # the restarted agent's first tick pushes the stored step's weights (the API may answer
        # a moment before it); nothing else may have moved them
        wait_until(
            lambda: sorted(haproxy_weights(agent).values()) == [128, 128],
            timeout=30,
            what="the 50 % weights pushed again by the restarted agent",
        )
        doc = wait_finished(agent, "v5")
    assert doc["staged"]["stage"] == "done"
    assert traffic.errors == []
    share_dead, n_dead = traffic.share("v5", killed_at, killed_at + 5)
    assert n_dead > 0 and abs(share_dead - 0.5) <= 0.1, (share_dead, n_dead)
    steps = step_starts(agent.get("/api/events?limit=1000")["events"], "v5")
    assert [p for _, p in steps] == [50, 100]  # the 50 % step was not started over
