"""The agent's HAProxy: config, runtime weights, drain and adoption, against the real binary.

Replicas here are the torch-free fake server (``fake_server.py``); each answers with its own
release so a client can count where its requests went.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from agent.rollout.balancer import HaproxyBalancer, Member, weights
from agent.rollout.haproxy import HaproxyProcess, render_config
from tests.integration.conftest import REPO_ROOT, free_port
from tests.integration.polling import wait_until

FAKE = REPO_ROOT / "tests" / "integration" / "fake_server.py"


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Two fake replicas: slot -> URL, answering label = their release."""
    procs, urls = [], {}
    for slot, release in (("inference-1", "v1"), ("inference-canary-1", "v2")):
        port = free_port()
        argv = [sys.executable, str(FAKE), "--port", str(port), "--release", release]
        argv += ["--label", release]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls[slot] = f"http://127.0.0.1:{port}"
    for url in urls.values():
        wait_until(lambda u=url: _answers(u), timeout=20, what=f"{url} answers")
    yield urls
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HaproxyBalancer]:
    process = HaproxyProcess(
        directory=tmp_path / "haproxy", bind=f"127.0.0.1:{free_port()}", slots=4
    )
    balancer = HaproxyBalancer(process)
    balancer.start()
    yield balancer
    balancer.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def members(urls: dict[str, str]) -> list[Member]:
    return [
        Member(slot="inference-1", url=urls["inference-1"], release="v1", ready=True),
        Member(slot="inference-canary-1", url=urls["inference-canary-1"], release="v2", ready=True),
    ]


def send(bind: str, n: int) -> Counter[str]:
    """``n`` predictions through HAProxy; counts answers by label (= release) and failures."""
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=f"http://{bind}", timeout=5) as client:
        for _ in range(n):
            try:
                reply = client.post("/predict", json={"inputs": ["x"]})
            except httpx.HTTPError:
                seen["error"] += 1
                continue
            if reply.status_code != 200:
                seen[f"http {reply.status_code}"] += 1
                continue
            seen[reply.json()["predictions"][0]["label"]] += 1
    return seen


def up(balancer: HaproxyBalancer, slots: set[str]) -> bool:
    servers = balancer.servers_by_slot()
    return all(servers.get(s) is not None and servers[s].status == "UP" for s in slots)


def test_the_config_is_valid_for_haproxy(tmp_path: Path) -> None:
    cfg = tmp_path / "h.cfg"
    cfg.write_text(render_config(bind="127.0.0.1:18999", socket_path=tmp_path / "s", slots=8))
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_weights_split_traffic_and_zero_drains_without_a_failed_request(
    haproxy: HaproxyBalancer, replicas: dict[str, str]
) -> None:
    ms = members(replicas)
    haproxy.apply(ms, weights(ms, {"v1": 100.0, "v2": 0.0}))
    wait_until(lambda: up(haproxy, {"inference-1"}), timeout=10, what="stable UP in HAProxy")
    assert send(haproxy.bind, 100) == Counter({"v1": 100})  # weight 0: never a request
    haproxy.apply(ms, weights(ms, {"v1": 90.0, "v2": 10.0}))
    wait_until(lambda: up(haproxy, set(replicas)), timeout=10, what="both UP in HAProxy")
    split = send(haproxy.bind, 1000)
    assert split["v1"] + split["v2"] == 1000, split
    assert abs(split["v2"] / 1000 - 0.10) <= 0.02, split
    haproxy.apply(ms, weights(ms, {"v1": 100.0, "v2": 0.0}))
    assert send(haproxy.bind, 200) == Counter({"v1": 200})
    counters = haproxy.servers_by_slot()
    assert counters["inference-canary-1"].weight == 0
    assert counters["inference-1"].responses_5xx == 0


def test_a_restarted_agent_adopts_the_running_haproxy_and_its_weights(
    tmp_path: Path, haproxy: HaproxyBalancer, replicas: dict[str, str]
) -> None:
    ms = members(replicas)
    haproxy.apply(ms, weights(ms, {"v1": 50.0, "v2": 50.0}))
    wait_until(lambda: up(haproxy, set(replicas)), timeout=10, what="both UP in HAProxy")
    before = haproxy.servers_by_slot()
    again = HaproxyBalancer(
        HaproxyProcess(directory=haproxy.process.directory, bind=haproxy.bind, slots=4)
    )
    again.start()
    assert again.process.adopted
    assert again.apply(ms, weights(ms, {"v1": 50.0, "v2": 50.0})) == []  # nothing to change
    after = again.servers_by_slot()
    assert {s: (x.address, x.weight) for s, x in after.items()} == {
        s: (x.address, x.weight) for s, x in before.items()
    }
    split = send(haproxy.bind, 400)
    assert abs(split["v2"] / 400 - 0.5) <= 0.05, split


def test_a_replica_that_dies_is_retried_on_another_server(
    haproxy: HaproxyBalancer, replicas: dict[str, str]
) -> None:
    ms = members(replicas)
    haproxy.apply(ms, weights(ms, {"v1": 50.0, "v2": 50.0}))
    wait_until(lambda: up(haproxy, set(replicas)), timeout=10, what="both UP in HAProxy")
    port = int(replicas["inference-canary-1"].rsplit(":", 1)[1])
    victim = next(
        p for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and str(port) in p.info["cmdline"]
    )  # fmt: skip
    victim.kill()
    victim.wait()
    split = send(haproxy.bind, 200)  # before HAProxy's check marks it DOWN: retried elsewhere
    assert split == Counter({"v1": 200})


def test_an_haproxy_that_died_under_the_agent_is_started_and_configured_again(
    haproxy: HaproxyBalancer, replicas: dict[str, str]
) -> None:
    ms = members(replicas)
    haproxy.apply(ms, weights(ms, {"v1": 100.0, "v2": 0.0}))
    pid = int(haproxy.process.pid_path.read_text().split()[0])
    psutil.Process(pid).kill()
    wait_until(lambda: not psutil.pid_exists(pid), timeout=10, what="haproxy gone")
    changes = haproxy.apply(ms, weights(ms, {"v1": 100.0, "v2": 0.0}))  # next tick
    assert "inference-1 weight 256" in changes  # a fresh HAProxy, every server set again
    wait_until(lambda: up(haproxy, {"inference-1"}), timeout=10, what="stable UP again")
    assert send(haproxy.bind, 50) == Counter({"v1": 50})
