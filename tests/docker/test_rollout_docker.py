"""Staged rollouts on the Docker backend, for real: docker-compose.yml's inference, agent and
haproxy services on the engine, user traffic through HAProxy's published port.

The agent runs in its container with ``balancer.external`` (deploy/warden.compose.yaml): it writes
the config the ``haproxy`` service starts with into their shared volume and moves traffic through
the admin socket there; candidates are containers in slot ``inference-canary-1`` on the compose
network, reached at their container IP. A bounded load client records which release answered
every ``/predict``.

One stack runs the whole module (starting it and loading the model is the expensive part); the
tests run in order: the bad release first (over ``good``), then a good one under another tag. The
agent's config is deploy/warden.compose.yaml with ``max_replicas: 1`` (``WARDEN_AGENT_CONFIG``):
on two cores the test's own load would otherwise make the agent scale out, and every extra model
server slows all of them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.rollout.haproxy import HaproxyProcess
from tests.docker.conftest import REPO, SESSION_ID, TEST_LABEL
from tests.docker.test_compose import START_TIMEOUT_S, _compose, _ours
from tests.integration.polling import wait_until
from tests.integration.rollout_support import Traffic, step_starts

pytestmark = [pytest.mark.docker]

CANARY_SLOT = "inference-canary-1"
ROLLOUT_TIMEOUT_S = 240.0  # candidate start + model load + canaries + steps, on a busy machine
STEP = "5s"
THREADS = 4  # concurrent clients
STEP_REQUESTS = 400  # answers counted in the 50 % step
# A step ends once its time is up *and* each side answered `min_requests` users' requests: with
# 215 the 50 % step holds for >= 430 answers whatever the machine's speed. (Pausing the step once
# it was seen raced its 5 s clock: on a busy machine the step was over before the pause landed.)
STEP_MIN_REQUESTS = 215


@dataclass(slots=True)
class RolloutStack:
    project: str
    env: dict[str, str]
    agent_url: str
    public_url: str  # HAProxy's published port: where users send /predict
    token: str

    def logs(self) -> str:
        return _compose(self.env, self.project, "logs", "--no-color", "--tail=60", timeout=60)

    def get(self, path: str) -> dict[str, Any]:
        reply = httpx.get(f"{self.agent_url}{path}", headers=self._auth(), timeout=10.0)
        reply.raise_for_status()
        return dict(reply.json())

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.agent_url}{path}", json=body, headers=self._auth(), timeout=30.0)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def served_by(self, release: str) -> bool:
        try:
            reply = httpx.post(f"{self.public_url}/predict", json={"inputs": ["hi"]}, timeout=5)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json().get("release") == release

    def rollout(self, tag: str) -> dict[str, Any]:
        """``GET /api/rollout?release=TAG``; {} while the agent does not answer."""
        try:
            return self.get(f"/api/rollout?release={tag}")
        except (httpx.HTTPError, ValueError):
            return {}

    def wait_finished(self, tag: str) -> dict[str, Any]:
        found: dict[str, Any] = {}

        def finished() -> bool:
            doc = self.rollout(tag)
            if (doc.get("staged") or {}).get("stage") in ("done", "aborted"):
                found.update(doc)
                return True
            return False

        wait_until(finished, timeout=ROLLOUT_TIMEOUT_S, what=f"rollout of {tag} finished",
                   logs=self.logs)  # fmt: skip
        return found

    def deploy(self, tag: str, image: str, steps: list[int]) -> None:
        body = {"tag": tag, "image": image, "steps": steps, "step_duration": STEP}
        reply = self.post("/api/deploy", body)
        assert reply.status_code == 202, reply.text
        assert reply.json()["rollout"]["stage"] == "starting", reply.text


@pytest.fixture(scope="module")
def stack(
    docker_client: Any,
    docker_env: dict[str, str],
    images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RolloutStack]:
    assert _ours(docker_client) == [], "containers of project 'warden' left by someone else"
    docker_client.images.get("warden-haproxy:local")  # built by scripts/engine.sh
    config = yaml.safe_load((REPO / "deploy" / "warden.compose.yaml").read_text())
    assert config["balancer"]["external"] is True
    config["backend"]["max_replicas"] = 1
    config.setdefault("rollout", {})["min_requests"] = STEP_MIN_REQUESTS
    config_path = tmp_path_factory.mktemp("compose-rollout") / "warden.yaml"
    config_path.write_text(yaml.safe_dump(config))
    config_path.chmod(0o644)  # read by the agent's uid 10001
    project = f"wardenroll{uuid.uuid4().hex[:8]}"
    token = secrets.token_hex(16)
    env = {
        **docker_env,
        "WARDEN_TOKEN": token,
        "WARDEN_AGENT_BIND": "127.0.0.1:",
        "WARDEN_AGENT_CONFIG": str(config_path),
    }
    try:
        _compose(env, project, "up", "-d", "inference", "agent", "haproxy")
        agent = _compose(env, project, "port", "agent", "9400").strip()
        public = _compose(env, project, "port", "haproxy", "8080").strip()
        s = RolloutStack(
            project=project,
            env=env,
            agent_url=f"http://{agent}",
            public_url=f"http://{public}",
            token=token,
        )
        wait_until(lambda: s.served_by("good"), timeout=START_TIMEOUT_S,
                   what="HAProxy serving release good", logs=s.logs)  # fmt: skip
        yield s
    finally:
        # The agent first (it would replace what is removed), then the replicas it started
        # itself (compose does not know them, and they hold the network), then the rest.
        _compose(env, project, "stop", "agent", timeout=120)
        for container in _ours(docker_client):
            container.remove(force=True, v=True)
        _compose(env, project, "down", "-v", "--remove-orphans", timeout=120)
    assert _ours(docker_client) == []


def test_the_external_haproxy_starts_with_the_agents_config_is_adopted_and_reloads(
    docker_client: Any,
) -> None:
    """balancer.external against the real image, without compose: the agent's first start writes
    the config the container waits for; a second agent adopts it; another slot count is a reload
    (a new worker answers with six servers); close() leaves it running."""
    directory = Path(tempfile.mkdtemp(prefix="wlb-"))  # short: a unix socket path is <108 bytes
    os.chown(directory, 10001, 10001)  # the image's user writes its socket here
    container = docker_client.containers.run(
        "warden-haproxy:local",
        detach=True,
        network_mode="none",
        environment={"WARDEN_HAPROXY_CONFIG": str(directory / "haproxy.cfg")},
        volumes={str(directory): {"bind": str(directory), "mode": "rw"}},
        labels={TEST_LABEL: SESSION_ID},
    )
    try:
        first = HaproxyProcess(directory=directory, bind="0.0.0.0:8080", slots=4, external=True)
        runtime = first.start()
        pid = runtime.worker_pid()
        assert pid and sorted(runtime.servers()) == ["s1", "s2", "s3", "s4"]
        again = HaproxyProcess(directory=directory, bind="0.0.0.0:8080", slots=4, external=True)
        assert again.start().worker_pid() == pid and again.adopted
        wider = HaproxyProcess(directory=directory, bind="0.0.0.0:8080", slots=6, external=True)
        runtime = wider.start()
        assert runtime.worker_pid() not in (None, pid)
        assert len(runtime.servers()) == 6
        wider.close()
        assert runtime.answers()  # never stopped by the agent
        container.reload()
        assert container.status == "running"
    finally:
        container.remove(force=True, v=True)
        shutil.rmtree(directory, ignore_errors=True)


def _canaries(docker_client: Any) -> list[Any]:
    return list(
        docker_client.containers.list(
            ignore_removed=True,
            all=True,
            filters={"label": ["warden.project=warden", f"warden.slot={CANARY_SLOT}"]},
        )
    )


def test_a_release_with_failing_canaries_is_aborted_before_any_user_request(
    docker_client: Any, stack: RolloutStack
) -> None:
    with Traffic(stack.public_url, threads=2, max_s=ROLLOUT_TIMEOUT_S) as traffic:
        stack.deploy("bad", "warden-inference:bad", [10, 100])
        wait_until(lambda: _canaries(docker_client) != [], timeout=30,
                   what=f"a container in slot {CANARY_SLOT}", logs=stack.logs)  # fmt: skip
        doc = stack.wait_finished("bad")
    staged = doc["staged"]
    assert staged["stage"] == "aborted" and staged["furthest"] == 0, staged
    assert "canaries failed" in staged["status"], staged["status"]
    assert doc["status"] == "bad"
    counts = traffic.count()
    print(f"during the bad rollout: {counts}, {len(traffic.errors)} failed")
    assert counts["bad"] == 0, counts  # not a single user request reached it
    assert counts["good"] > 0 and traffic.errors == [], (counts, traffic.errors[:5])
    # the reconciler stops the finished candidate's slot: its container is removed
    wait_until(lambda: _canaries(docker_client) == [], timeout=60,
               what="the aborted candidate's container removed", logs=stack.logs)  # fmt: skip
    assert stack.get("/api/status")["current_release"] == "good"
    assert stack.served_by("good")


@pytest.mark.timeout(600)  # the 50 % step holds for 430 answers: slow on a busy machine
def test_a_good_release_goes_50_100_with_half_the_requests_at_the_first_step(
    docker_client: Any, stack: RolloutStack
) -> None:
    with Traffic(stack.public_url, threads=THREADS, max_s=2 * ROLLOUT_TIMEOUT_S) as traffic:
        stack.deploy("good2", "warden-inference:good", [50, 100])
        doc = stack.wait_finished("good2")
    assert doc["staged"]["stage"] == "done", doc
    assert doc["status"] == "good", doc
    assert traffic.errors == [], traffic.errors[:5]
    steps = step_starts(stack.get("/api/events?limit=1000")["events"], "good2")
    assert [p for _, p in steps] == [50, 100], steps
    # skip the first half second: right after a weight change round-robin settles
    share, n = traffic.share("good2", steps[0][0] + 0.5, steps[1][0])
    print(f"50 % step: good2 answered {share:.1%} of {n} requests; "
          f"all: {traffic.count()}")  # fmt: skip
    assert n >= STEP_REQUESTS, f"only {n} requests in the 50 % step"
    assert abs(share * 100 - 50) <= 5, (share, n)
    assert stack.get("/api/status")["current_release"] == "good2"
    wait_until(lambda: stack.served_by("good2"), timeout=30, what="HAProxy serving good2")
    wait_until(lambda: {c.labels.get("warden.release") for c in _ours(docker_client)} == {"good2"},
               timeout=60, what="only good2 containers left", logs=stack.logs)  # fmt: skip
