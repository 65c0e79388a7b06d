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

import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.docker.conftest import SESSION_ID, TEST_LABEL
from tests.integration.agent_harness import RunningAgent, healing_rules, running_agent
from tests.integration.polling import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

SERVICE = f"swr{SESSION_ID}"
ALIAS = f"model-{SESSION_ID}"
LABELS = {TEST_LABEL: SESSION_ID, "warden.project": "warden-tests"}
READY_S = 300.0  # up to five model servers loading on two busy cores
STEP_ANSWERS = 600  # answers counted in each traffic step (the step is paused until there are)
# The client resolves the name before every request and prints one JSON line per request.
CLIENT = """
import json, socket, sys, time, urllib.request
alias, limit, max_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
body = json.dumps({"inputs": ["I want a refund"]}).encode()
end, n = time.monotonic() + max_s, 0
while n < limit and time.monotonic() < end:
    n += 1
    at, ip = time.time(), ""
    try:
        ip = socket.gethostbyname_ex(alias)[2][0]  # the first record, in the order DNS gave
        request = urllib.request.Request(
            f"http://{ip}:8000/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=15) as reply:
            release = json.load(reply)["release"]
        line = {"t": at, "ip": ip, "release": release, "ms": round((time.time() - at) * 1e3)}
    except Exception as exc:
        line = {"t": at, "ip": ip, "error": repr(exc)}
    print(json.dumps(line), flush=True)
"""


@dataclass
class Client:
    """The user traffic: every request the client container made, read from its log stream."""

    container: Any
    answers: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def follow(self) -> None:
        pending = ""  # a frame of the log stream may end mid-line
        for raw in self.container.logs(stream=True, follow=True):
            pending += raw.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.startswith("{"):
                    with self.lock:
                        self.answers.append(json.loads(line))

    def since(self, at: float) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.answers if a["t"] >= at]

    def forget(self) -> None:
        """Drop what was recorded so far (the client may start before Swarm's health check put
        the stable tasks into DNS: "Name or service not known" until then)."""
        with self.lock:
            self.answers.clear()

    def errors(self) -> list[dict[str, Any]]:
        with self.lock:
            return [a for a in self.answers if "error" in a]


@dataclass
class Stack:
    agent: RunningAgent
    client: Client
    docker: Any
    network: str

    def rollout(self, tag: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.agent.get(f"/api/rollout?release={tag}")
        return dict(doc.get("staged") or {})

    def wait_rollout(self, tag: str, what: str, check: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def done() -> bool:
            doc = self.rollout(tag)
            if doc and check(doc):
                found.update(doc)
                return True
            return False

        wait_until(done, timeout=READY_S, what=what, logs=self.agent.logs)
        return found

    def deploy(self, tag: str, image: str, steps: list[int]) -> None:
        body = {"tag": tag, "image": image, "steps": steps, "step_duration": "5s",
                "args": ["--threads", "1"]}  # fmt: skip
        reply = self.agent.post("/api/deploy", body)
        assert reply.status_code == 202, reply.text
        assert reply.json()["rollout"]["stage"] == "starting", reply.text

    def command(self, command: str) -> None:
        reply = self.agent.post(f"/api/rollout/{command}", {})
        assert reply.status_code == 200, reply.text

    def address(self, slot: str) -> str:
        """The overlay-network address of ``slot``'s running task ("" while there is none)."""
        import docker.errors

        try:
            tasks = self.docker.api.tasks(filters={"service": slot, "desired-state": "running"})
        except docker.errors.NotFound:  # the agent has not created the service yet
            return ""
        for task in tasks:
            for attached in task.get("NetworksAttachments", []):
                if attached["Network"]["Spec"]["Name"] == self.network:
                    return str(attached["Addresses"][0].split("/")[0])
        return ""

    def aliases(self, slot: str) -> list[str]:
        spec = self.docker.api.inspect_service(slot)["Spec"]["TaskTemplate"]["Networks"]
        return list(spec[0].get("Aliases") or [])


def _free_ports(count: int) -> int:
    """A port p such that p .. p + count - 1 are free on every interface (host-mode ports)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            base = int(probe.getsockname()[1])
        if base + count < 65536 and all(_free(p) for p in range(base, base + count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports found")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def stack(
    swarm: Any,
    docker_env: dict[str, str],
    images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("swarm-rollout")
    ports = _free_ports(5)
    net = swarm.networks.create(
        f"warden-test-split-{SESSION_ID}", driver="overlay", attachable=True, labels=LABELS
    )
    extra = {
        "service": SERVICE,
        "backend": {
            "kind": "swarm",
            "image": images["good"].rpartition(":")[0],
            "replicas": 2,
            "max_replicas": 2,
            "port": ports,  # inference-1, -2
            "canary_port": ports + 2,  # canary-1 (golden set), -2 and -3 (traffic)
            "network": net.name,
        },
        "balancer": {"kind": "replicas", "alias": ALIAS},
        # one torch thread per server: five 2-thread pools on two cores made a fresh replica
        # look 2.4x slower than the old ones (docs/decisions.md, "Staged rollouts (HAProxy)")
        "release": {"tag": "good", "image": images["good"], "args": ["--threads", "1"]},
        # the client's load and up to five model servers share two cores: probes get 2 s
        "probe": {"interval": "1s", "timeout": "2s", "canary_interval": "2s"},
        "policy": {"bake": "2s", "cooldown": "20s", "verify_timeout": f"{READY_S:.0f}s"},
        "rollout": {"start_timeout": f"{READY_S:.0f}s"},
    }
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = docker_env["DOCKER_HOST"]  # the agent process inherits it
    container = None
    try:
        with running_agent(root, rules=healing_rules(root), extra=extra) as agent:
            agent.wait_serving("good", timeout=READY_S)
            container = swarm.containers.run(
                images["good"],
                ["python", "-c", CLIENT, ALIAS, "40000", "900"],
                network=net.name,
                labels=LABELS,
                detach=True,
            )
            client = Client(container)
            threading.Thread(target=client.follow, daemon=True).start()
            stack = Stack(agent=agent, client=client, docker=swarm, network=net.name)
            wait_until(
                lambda: len({a.get("ip") for a in client.since(0) if "release" in a}) == 2,
                timeout=60,
                what="the client answered by both stable replicas through the DNS name",
                logs=lambda: container.logs(tail=20).decode(),
            )
            client.forget()
            yield stack
    finally:
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved
        if container is not None:
            container.remove(force=True)
        for service in swarm.services.list(filters={"label": f"warden.service={SERVICE}"}):
            service.remove()
        wait_until(lambda: _removed(net), timeout=60, what=f"network {net.name} removable")


def _removed(net: Any) -> bool:
    import docker.errors

    try:
        net.remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as exc:
        if "active endpoints" in str(exc) or "in use" in str(exc):
            return False
        raise
    return True


def _measure(stack: Stack, slots: list[str]) -> tuple[float, int]:
    """The candidate's share of ``STEP_ANSWERS`` answers, counted once every traffic replica in
    ``slots`` has answered (it loaded its model and Swarm put it into DNS). The canary replica
    must answer none of them."""
    since = time.time()

    def all_answered() -> bool:
        addresses = {stack.address(s) for s in slots}
        seen = {a.get("ip") for a in stack.client.since(since) if a.get("release") == "good2"}
        return "" not in addresses and addresses <= seen

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

    wait_until(all_answered, timeout=READY_S, what=f"answers from {slots}", logs=diagnose)
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
