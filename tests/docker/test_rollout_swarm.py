"""Staged rollouts on Swarm without HAProxy, for real: traffic split by replica counts.

A real agent process drives the Swarm backend with ``balancer.kind: replicas``: the service's two
slot services join an overlay network under the DNS name ``ALIAS`` (``dnsrr``), and users are a
client container on that network that resolves ``ALIAS`` before every request and records which
release (and which task address) answered. Each step of a rollout adds candidate replicas beside
the stable ones; the canary replica stays out of the name and never answers a user.

One agent and one client run the whole module (model loads are the expensive part); the tests run
in order: a candidate with failing canaries first, then a healthy one to promotion, then an
operator's abort mid-step.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.docker.conftest import SESSION_ID, TEST_LABEL
from tests.docker.swarm_split import READY_S, Stack, split_stack
from tests.integration.polling import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

SERVICE = f"swr{SESSION_ID}"
ALIAS = f"model-{SESSION_ID}"
LABELS = {TEST_LABEL: SESSION_ID, "warden.project": "warden-tests"}
# answers counted in each traffic step (paused until there are): at 1000 the ±5-point bound is
# over 3 standard deviations of a 1-in-3 share
STEP_ANSWERS = 1000


@pytest.fixture(scope="module")
def stack(
    swarm: Any,
    docker_env: dict[str, str],
    images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("swarm-rollout")
    with split_stack(
        swarm, docker_env["DOCKER_HOST"], images, root, service=SERVICE, alias=ALIAS, labels=LABELS
    ) as stack:
        yield stack


def _measure(stack: Stack, slots: list[str]) -> tuple[float, int]:
    """The candidate's share of ``STEP_ANSWERS`` answers, counted once every traffic replica in
    ``slots`` has answered (it loaded its model and Swarm put it into DNS). The canary replica
    must answer none of them."""
    since = time.time()

    def diagnose() -> str:
        seen = Counter((a.get("ip"), a.get("release")) for a in stack.client.since(since))
        slow = sorted(
            (round(a["t"] - since, 1), a.get("ip"), a.get("ms"))
            for a in stack.client.since(since - 30)
            if a.get("release") == "good2"
        )[-40:]
        tasks = [
            (t["ServiceID"][:8], t["Status"]["State"], t["DesiredState"], t["Status"].get("Err"))
            for t in stack.docker.api.tasks(filters={"label": f"warden.service={SERVICE}"})
        ]
        addresses = {s: stack.address(s) for s in slots}
        tail = "\n".join(stack.agent.logs().splitlines()[-60:])
        return (
            f"answers by (ip, release): {seen}\naddresses: {addresses}\ntasks: {tasks}\n"
            f"last candidate answers (s since, ip, ms): {slow}\n{tail}"
        )

    wait_until(
        lambda: stack.answered_by(slots, "good2", since),
        timeout=READY_S,
        what=f"answers from {slots}",
        logs=diagnose,
    )
    counted_from = time.time()
    wait_until(lambda: len(stack.client.since(counted_from)) >= STEP_ANSWERS,
               timeout=READY_S, what=f"{STEP_ANSWERS} answers")  # fmt: skip
    window = stack.client.since(counted_from)[:STEP_ANSWERS]
    assert stack.address(f"{SERVICE}-canary-1") not in {a.get("ip") for a in window}
    return sum(a.get("release") == "good2" for a in window) / len(window), len(window)


def test_a_candidate_with_failing_canaries_never_answers_a_user(
    stack: Stack, images: dict[str, str]
) -> None:
    start = time.time()
    stack.deploy("wrong", images["bad"], [33, 50, 100])
    canary = f"{SERVICE}-canary-1"
    wait_until(lambda: stack.address(canary) != "", timeout=READY_S, what="the canary task",
               logs=stack.agent.logs)  # fmt: skip
    assert stack.aliases(canary) == []  # on the network, not under the users' name
    doc = stack.wait_rollout("wrong", "rollout aborted", lambda d: d["stage"] == "aborted")
    assert "canaries failed" in doc["status"], doc
    assert doc["furthest"] == 0 and doc["traffic_replicas"] == 0
    seen = stack.client.since(start)
    assert Counter(a.get("release") for a in seen)["wrong"] == 0
    assert stack.client.errors() == []


def test_a_healthy_candidate_gets_its_replica_share_at_each_step_and_is_promoted(
    stack: Stack, images: dict[str, str]
) -> None:
    stack.deploy("good2", images["good"], [33, 50, 100])
    shares: dict[int, tuple[float, int]] = {}
    for step, candidates in ((0, 1), (1, 2)):
        doc = stack.wait_rollout(
            "good2",
            f"step {step} with {candidates} candidate replica(s)",
            lambda d, s=step: d["stage"] == "traffic" and d["step"] == s,
        )
        assert doc["traffic_replicas"] == candidates and doc["stable_replicas"] == 2, doc
        stack.command("pause")  # hold the step while the share is measured
        shares[step] = _measure(stack, [f"{SERVICE}-canary-{i}" for i in range(2, 2 + candidates)])
        print(f"step {step}: candidate share {shares[step]}", flush=True)
        stack.command("resume")
    print(f"measured candidate shares: {shares}")
    assert abs(shares[0][0] - 1 / 3) <= 0.05, shares  # 1 of 3 serving tasks
    assert abs(shares[1][0] - 2 / 4) <= 0.05, shares  # 2 of 4
    doc = stack.wait_rollout("good2", "promoted and done", lambda d: d["stage"] == "done")
    assert doc["furthest"] == 100
    stack.agent.wait_serving("good2", timeout=READY_S)
    done = time.time()
    wait_until(lambda: len(stack.client.since(done)) >= 100, timeout=60, what="answers after")
    assert {a.get("release") for a in stack.client.since(done)} == {"good2"}
    assert stack.client.errors() == [], stack.client.errors()[:5]


def test_an_operator_abort_takes_the_candidate_out_of_dns_with_no_failed_request(
    stack: Stack, images: dict[str, str]
) -> None:
    stack.deploy("good3", images["good"], [33, 100])
    stack.wait_rollout("good3", "the first step", lambda d: d["stage"] == "traffic")
    stack.command("pause")
    since = time.time()
    wait_until(lambda: any(a.get("release") == "good3" for a in stack.client.since(since)),
               timeout=READY_S, what="answers from good3", logs=stack.agent.logs)  # fmt: skip
    stack.command("abort")
    aborted = time.time()
    doc = stack.wait_rollout("good3", "aborted", lambda d: d["stage"] == "aborted")
    assert "operator" in doc["status"]
    assert doc["traffic_replicas"] == 1 and doc["furthest"] == 33
    # Swarm takes a task out of DNS before it stops it: once the abort is done, no user is sent
    # to the candidate any more, and no request failed on the way
    done = time.time()
    wait_until(lambda: len(stack.client.since(done)) >= 100, timeout=60,
               what="answers after the abort")  # fmt: skip
    assert {a.get("release") for a in stack.client.since(done)} == {"good2"}
    assert stack.client.errors() == [], stack.client.errors()[:5]
    last = max(a["t"] for a in stack.client.since(since) if a.get("release") == "good3")
    print(f"abort asked -> last candidate answer {last - aborted:.2f} s, rollout aborted "
          f"{done - aborted:.2f} s")  # fmt: skip
