"""A Swarm service split by replicas behind a DNS name, with a real agent and a user: the shared
setup of tests/docker/test_rollout_swarm.py and tests/bench/bench_rollout_swarm.py.

The agent (``warden agent``, Swarm backend, ``balancer.kind: replicas``) runs two stable slot
services on a private overlay network under the DNS name ``alias``; the user is a client
container on that network that resolves the name before every request and prints one JSON line
per request (which task address answered, which release, how long it took, or the error).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.docker.helpers import docker_host as docker_host_set
from tests.docker.helpers import free_ports, remove_network
from tests.integration.agent_harness import RunningAgent, healing_rules, running_agent
from tests.integration.polling import wait_until

READY_S = 300.0  # up to five model servers loading on two busy cores
THREADS = ["--threads", "1"]  # server flags of every release (see split_stack)

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
        # what urllib, httpx or requests connect to first: getaddrinfo's first address
        ip = socket.getaddrinfo(alias, 8000, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
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
    service: str
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
                "args": THREADS}  # fmt: skip
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

    def candidate_traffic_slots(self, tag: str) -> list[str]:
        """The slots of ``tag``'s traffic replicas at its current step."""
        doc = self.rollout(tag)
        first = doc["replicas"] + 1
        return [f"{self.service}-canary-{i}" for i in range(first, first + doc["traffic_replicas"])]

    def answered_by(self, slots: list[str], tag: str, since: float) -> bool:
        """Every task of ``slots`` answered a user as ``tag`` since ``since`` (it loaded its
        model and Swarm put it into DNS)."""
        addresses = {self.address(s) for s in slots}
        seen = {a.get("ip") for a in self.client.since(since) if a.get("release") == tag}
        return "" not in addresses and addresses <= seen

    def container_of(self, slot: str) -> str:
        """The container id of ``slot``'s running task."""
        tasks = self.docker.api.tasks(filters={"service": slot, "desired-state": "running"})
        return str(tasks[0]["Status"]["ContainerStatus"]["ContainerID"])

    def aliases(self, slot: str) -> list[str]:
        spec = self.docker.api.inspect_service(slot)["Spec"]["TaskTemplate"]["Networks"]
        return list(spec[0].get("Aliases") or [])


@contextmanager
def split_stack(
    docker: Any,
    docker_host: str,
    images: dict[str, str],
    root: Path,
    *,
    service: str,
    alias: str,
    labels: dict[str, str],
) -> Iterator[Stack]:
    """Network, agent serving ``good`` on two replicas, and the client answered by both; every
    service, container and the network are removed afterwards."""
    ports = free_ports(5)
    net = docker.networks.create(
        f"warden-split-{service}", driver="overlay", attachable=True, labels=labels
    )
    extra = {
        "service": service,
        "backend": {
            "kind": "swarm",
            "image": images["good"].rpartition(":")[0],
            "replicas": 2,
            "max_replicas": 2,
            "port": ports,  # <service>-1, -2
            "canary_port": ports + 2,  # canary-1 (golden set), -2 and -3 (traffic)
            "network": net.name,
        },
        "balancer": {"kind": "replicas", "alias": alias},
        # one torch thread per server: five 2-thread pools on two cores made a fresh replica
        # look 2.4x slower than the old ones (docs/decisions.md, "Staged rollouts (HAProxy)")
        "release": {"tag": "good", "image": images["good"], "args": THREADS},
        # the client's load and up to five model servers share two cores: probes get 2 s
        "probe": {"interval": "1s", "timeout": "2s", "canary_interval": "2s"},
        "policy": {"bake": "2s", "cooldown": "20s", "verify_timeout": f"{READY_S:.0f}s"},
        "rollout": {"start_timeout": f"{READY_S:.0f}s"},
    }
    container = None
    try:
        with (
            docker_host_set(docker_host),
            running_agent(root, rules=healing_rules(root), extra=extra) as agent,
        ):
            agent.wait_serving("good", timeout=READY_S)
            container = docker.containers.run(
                images["good"],
                ["python", "-c", CLIENT, alias, "100000", "1800"],
                network=net.name,
                labels=labels,
                detach=True,
            )
            client = Client(container)
            threading.Thread(target=client.follow, daemon=True).start()
            stack = Stack(
                agent=agent, service=service, client=client, docker=docker, network=net.name
            )
            wait_until(
                lambda: len({a.get("ip") for a in client.since(0) if "release" in a}) == 2,
                timeout=60,
                what="the client answered by both stable replicas through the DNS name",
                logs=lambda: container.logs(tail=20).decode(),
            )
            client.forget()
            yield stack
    finally:
        if container is not None:
            container.remove(force=True)
        for left in docker.services.list(filters={"label": f"warden.service={service}"}):
            left.remove()
        wait_until(lambda: remove_network(net), timeout=60, what=f"network {net.name} removable")
