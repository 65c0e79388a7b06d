"""A real agent (``python -m agent agent``, Docker backend) heals real containers, end to end.

One agent serves the module's tests in order (a model load costs seconds to a minute on a busy
2-core machine, so the containers are reused): kill -9 of the model process, ``docker pause``,
a bad release, a broken release, a slow replica (scale-out); then dockerd itself is restarted
(LAST: it stops every container on the engine). The OOM test runs its own agent with a tiny
memory limit. Faults are injected from outside, as a person or the kernel would; every wait
polls with a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.docker.conftest import SESSION_ID, TEST_LABEL, remove_project
from tests.docker.helpers import docker_host, pause_container, restart_engine
from tests.integration.agent_harness import RunningAgent, healing_rules, running_agent
from tests.reliability import lost_in_audit, record, record_agent

LOAD_S = 240.0  # a model load on 2 cores shared with other test runs can take a minute or more
SLOW_CPUS = "0.05"
MAX_LOAD_REQUESTS = 200
MAX_LOAD_S = 30.0
SCALE_RULES = """\
# Test-local: the shipped latency-p95 rule with `for` shortened from 30s to 3s.
rules:
  - name: latency-p95
    when: latency_p95_ms > 100ms
    for: 3s
    severity: warning
    actions: [alert, scale]
"""


def agent_config(project: str, network: str, **backend: Any) -> dict[str, Any]:
    """warden.yaml sections for a Docker-backend agent (merged over write_config's defaults)."""
    return {
        "project": project,
        "backend": {
            "kind": "docker",
            "image": "warden-inference",
            "replicas": 1,
            "max_replicas": 2,
            "port": 8000,
            "network": network,
            "reach": "published",
            "labels": {TEST_LABEL: SESSION_ID},
            **backend,
        },
        "release": {"tag": "good"},
        "policy": {
            "bake": "2s",
            "cooldown": "20s",
            "verify_timeout": f"{LOAD_S:.0f}s",
            "crash_loop_backoff_initial": "1s",
            "restart_window": "30s",
        },
    }


@contextmanager
def docker_agent(
    root: Path, docker_client: Any, docker_env: dict[str, str], network: str, **backend: Any
) -> Iterator[RunningAgent]:
    """A running agent with the Docker backend; its containers are removed afterwards."""
    project = f"wh-{SESSION_ID}-{root.name[-6:].lower().replace('_', '-')}"
    try:
        extra = agent_config(project, network, **backend)
        with (
            docker_host(docker_env["DOCKER_HOST"]),
            running_agent(root, rules=healing_rules(root), extra=extra) as agent,
        ):
            yield agent
    finally:
        remove_project(docker_client, project)


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    docker_env: dict[str, str],
    images: dict[str, str],
    test_network: str,
) -> Iterator[RunningAgent]:
    root = tmp_path_factory.mktemp("docker-agent")
    with docker_agent(root, docker_client, docker_env, test_network) as running:
        running.wait_serving("good", timeout=LOAD_S)
        yield running


# --- helpers ----------------------------------------------------------------------------------


def decisions(agent: RunningAgent, action: str) -> list[dict[str, Any]]:
    return [r for r in agent.audit() if r["kind"] == "decision" and r["action"] == action]


def events(agent: RunningAgent, kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = agent.get("/api/events?limit=1000")["events"]
    return [e for e in found if e["kind"] == kind]


def first_replica(agent: RunningAgent) -> dict[str, Any]:
    replica: dict[str, Any] = agent.status()["replicas"][0]
    return replica


def replaced_and_ready(old_container: str) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        return any(
            r["id"] == "inference-1" and r["ready"] and r["container_id"] != old_container
            for r in status["replicas"]
        )

    return check


def settled_on(release: str) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        return (
            status["current_release"] == release
            and not status["in_flight"]
            and bool(status["replicas"])
            and all(r["ready"] and r["release"] == release for r in status["replicas"])
        )

    return check


def kill_model_process(docker_client: Any, container_id: str) -> float:
    """kill -9 the server process from the host (its host pid from docker inspect)."""
    pid = docker_client.api.inspect_container(container_id)["State"]["Pid"]
    assert pid, f"container {container_id} has no process"
    os.kill(pid, signal.SIGKILL)
    return time.time()


def releases(agent: RunningAgent) -> dict[str, str]:
    return {r["tag"]: r["status"] for r in agent.get("/api/releases")["releases"]}


@contextmanager
def rules_replaced(rules: Path, files: dict[str, str], agent: RunningAgent) -> Iterator[None]:
    """Swap the agent's rule files for ``files`` (hot reload), and put them back afterwards."""
    backup = rules.parent / "rules-backup"
    backup.mkdir()
    for file in rules.glob("*.yaml"):
        if file.name != "canaries.yaml":
            shutil.move(file, backup / file.name)
    for name, text in files.items():
        (rules / name).write_text(text)
    reloads = sum(1 for r in agent.audit() if r["kind"] == "rules-reloaded")
    agent.wait(
        lambda _s: sum(1 for r in agent.audit() if r["kind"] == "rules-reloaded") > reloads,
        "the swapped rules to be loaded",
        timeout=30,
    )
    try:
        yield
    finally:
        for name in files:
            (rules / name).unlink()
        for file in backup.glob("*.yaml"):
            shutil.move(file, rules / file.name)
        backup.rmdir()


def throttle(docker_env: dict[str, str], container_id: str, cpus: str) -> None:
    """``docker update --cpus`` (a running container's CPU limit changes at once)."""
    subprocess.run(
        ["docker", "update", "--cpus", cpus, container_id],
        env=docker_env,
        check=True,
        capture_output=True,
    )


class BoundedLoad:
    """Sequential /predict requests to one URL: at most MAX_LOAD_REQUESTS over MAX_LOAD_S."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BoundedLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        with httpx.Client(timeout=10.0) as http:
            while not self.stop.is_set() and self.sent < MAX_LOAD_REQUESTS:
                if time.monotonic() > deadline:
                    return
                self.sent += 1
                with suppress(httpx.HTTPError):
                    http.post(f"{self.url}/predict", json={"inputs": f"refund request {self.sent}"})
                self.stop.wait(0.1)  # pacing: about 10 requests a second at most


# --- tests ------------------------------------------------------------------------------------


def test_killed_model_process_is_seen_from_the_die_event_and_restarted(
    agent: RunningAgent, docker_client: Any
) -> None:
    agent.wait_serving("good", timeout=LOAD_S)
    old = first_replica(agent)["container_id"]
    killed_at = kill_model_process(docker_client, old)
    agent.wait(replaced_and_ready(old), "a new ready container for inference-1", LOAD_S)
    (restart,) = [d for d in decisions(agent, "restart") if d["rule"] == "replica-exited"]
    assert restart["reason"] == "restart inference-1: inference-1 exited (rule replica-exited)"
    assert restart["ts"] - killed_at < 2.0, "the exit was not seen from the event stream"
    (die,) = events(agent, "die")
    assert die["subject"] == "inference-1"
    assert die["message"] == f"container {old} exited with code 137"


def test_paused_container_is_detected_by_health_timeouts_and_restarted(
    request: pytest.FixtureRequest, agent: RunningAgent, docker_client: Any
) -> None:
    agent.wait_serving("good", timeout=LOAD_S)
    old = first_replica(agent)["container_id"]
    pause_container(docker_client.containers.get(old))
    paused_at = time.time()
    agent.wait(replaced_and_ready(old), "the paused container to be replaced", LOAD_S)
    (restart,) = [d for d in decisions(agent, "restart") if d["rule"] == "health-failures"]
    assert "health failed 3 times in a row" in restart["reason"]
    assert restart["ts"] - paused_at < 5.0
    assert [e["subject"] for e in events(agent, "pause")] == ["inference-1"]
    assert not docker_client.containers.list(ignore_removed=True, all=True, filters={"id": old})
    record_agent("server-pause", request, agent, paused_at)


def test_bad_release_fails_its_canaries_and_is_reverted_to_good(agent: RunningAgent) -> None:
    agent.wait(lambda s: s["last_good_release"] == "good", "good promoted", LOAD_S)
    response = agent.post("/api/deploy", {"tag": "bad"})
    assert response.status_code == 202, response.text
    agent.wait(lambda s: s["replicas"][0]["release"] == "bad", "bad deployed", LOAD_S)
    agent.wait(settled_on("good"), "the bad release to be reverted to good", LOAD_S)
    assert releases(agent)["bad"] == "bad"
    assert releases(agent)["good"] == "good"
    (rollback,) = decisions(agent, "rollback")
    # a baking release goes back fast: whichever candidate rule sees it first (wrong answers,
    # or expected-label confidence significantly below the last good release's baseline)
    assert rollback["rule"] in ("candidate-canary-failing", "candidate-accuracy-decay")


def test_release_that_cannot_load_its_model_is_reverted(agent: RunningAgent) -> None:
    agent.wait(settled_on("good"), "good serving", LOAD_S)
    response = agent.post("/api/deploy", {"tag": "broken"})
    assert response.status_code == 202, response.text
    agent.wait(lambda s: s["replicas"][0]["release"] == "broken", "broken deployed", LOAD_S)
    reverted = agent.wait(settled_on("good"), "the broken release to be reverted to good", LOAD_S)
    assert releases(agent)["broken"] == "bad"
    # a release that cannot load its model also crash-loops: whichever of these rules decides
    # first reverts it (the crash-loop rule won the race in one CI run)
    assert [d["rule"] for d in decisions(agent, "rollback")][-1] in (
        "model-load-failed",
        "not-ready",
        "crash-loop",
    )
    # the revert is a deployment, not a crash: it must not count toward good's crash loop
    # (it did once, and crash-loop froze the service the revert had just healed)
    assert not reverted["frozen"], agent.logs()


def test_slow_replica_fires_the_latency_rule_and_is_scaled_out_to_two(
    request: pytest.FixtureRequest, agent: RunningAgent, docker_env: dict[str, str]
) -> None:
    agent.wait(settled_on("good"), "good serving", LOAD_S)
    replica = first_replica(agent)
    fault_at = time.time()
    with rules_replaced(agent.root / "rules", {"scale.yaml": SCALE_RULES}, agent):
        throttle(docker_env, replica["container_id"], SLOW_CPUS)
        with BoundedLoad(replica["url"]) as load:
            agent.wait(lambda s: s["desired_replicas"] == 2, "a scale-out to 2", MAX_LOAD_S + 30)
        assert load.sent <= MAX_LOAD_REQUESTS
    (scale,) = decisions(agent, "scale")
    assert scale["rule"] == "latency-p95"
    assert scale["reason"].startswith("scale out to 2 replicas")
    serving = agent.wait_serving("good", timeout=LOAD_S)
    assert sorted(r["id"] for r in serving["replicas"]) == ["inference-1", "inference-2"]
    throttle(docker_env, replica["container_id"], str(os.cpu_count()))  # the fault is over
    for r in serving["replicas"]:
        answer = httpx.post(f"{r['url']}/predict", json={"inputs": "refund me"}, timeout=30)
        assert answer.status_code == 200, answer.text
    record_agent("server-slow", request, agent, fault_at, "(scaled out to 2)")


def test_model_killed_for_memory_is_reported_as_oom(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    docker_client: Any,
    docker_env: dict[str, str],
    images: dict[str, str],
    test_network: str,
) -> None:
    with docker_agent(
        tmp_path, docker_client, docker_env, test_network, memory_limit="150m"
    ) as oom_agent:
        fault_at = time.time()  # the limit is the fault: every start is OOM-killed
        oom_agent.wait(
            lambda _s: bool(events(oom_agent, "oom")), "an oom event from the engine", LOAD_S
        )
        oom_agent.wait(
            lambda _s: any(d["rule"] == "replica-oom" for d in decisions(oom_agent, "alert")),
            "the replica-oom rule to fire",
            30,
        )
        (oom, *_) = events(oom_agent, "oom")
        assert oom["subject"] == "inference-1"
        assert oom["message"].endswith("ran out of memory (OOM kill)")
        alert = next(d for d in decisions(oom_agent, "alert") if d["rule"] == "replica-oom")
        assert alert["reason"].startswith("alert: inference-1 ")
        assert alert["reason"].endswith("(rule replica-oom)")
        assert any(d["rule"] == "replica-exited" for d in decisions(oom_agent, "restart"))
        record(
            "server-oom",
            lost=lost_in_audit(
                oom_agent.audit(), [a for a in oom_agent.actions() if a["status"] != "pending"]
            ),
            healthy_after_s=None,
            actions=len(decisions(oom_agent, "restart")),
            test=str(request.node.nodeid),
            note=f"(OOM seen {events(oom_agent, 'oom')[0]['at'] - fault_at:.1f} s after start)",
        )


def test_dockerd_restart_agent_reconnects_and_keeps_healing(
    request: pytest.FixtureRequest, agent: RunningAgent, docker_client: Any
) -> None:
    """LAST in this file: restarting dockerd stops every container on the engine."""
    before = agent.wait_serving("good", timeout=LOAD_S)
    old = {r["id"]: r["container_id"] for r in before["replicas"]}
    fault_at = time.time()
    away_s = restart_engine(docker_client)
    print(f"dockerd was away for {away_s:.1f} s")
    healed = agent.wait(
        lambda s: (
            len(s["replicas"]) == len(old)
            and all(r["ready"] and r["container_id"] != old[r["id"]] for r in s["replicas"])
        ),
        "every replica replaced and ready after the engine restart",
        LOAD_S,
    )
    assert agent.process is not None and agent.process.poll() is None
    assert events(agent, "reconnect"), "the event stream did not reconnect"
    # The reconnected stream still reports a crash at once.
    target = next(r for r in healed["replicas"] if r["id"] == "inference-1")["container_id"]
    dies_before = len(events(agent, "die"))
    killed_at = kill_model_process(docker_client, target)
    agent.wait(replaced_and_ready(target), "inference-1 healed after the engine restart", LOAD_S)
    assert len(events(agent, "die")) > dies_before
    last = [d for d in decisions(agent, "restart") if d["rule"] == "replica-exited"][-1]
    assert last["ts"] - killed_at < 2.0
    record_agent("engine-restart", request, agent, fault_at, f"(engine away {away_s:.0f} s)")
