"""The agent HTTP API: bearer-token auth, status document, metrics, and operator requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agent.api import create_api
from agent.audit import AuditLog
from agent.backends.base import ReleaseSpec, ResourceSample
from agent.canaries import Canary
from agent.clock import FakeClock
from agent.collectors import GpuCollector
from agent.domain import EngineEvent, Replica, ReplicaState
from agent.loop import Agent, AgentSettings
from agent.metrics import AgentMetrics
from agent.observe import Observer
from agent.rules import RuleWatcher
from agent.state import StateStore
from tests.unit.fakes import NoGpu

T0 = 1_700_000_000.0
TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RULES = """\
rules:
  - name: replica-exited
    when: exited == 1
    severity: critical
    actions: [alert, restart, rollback]
"""


class FakeEngine:
    """A Backend whose replicas are always healthy and ready; records start/stop calls."""

    kind = "fake"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.replicas: dict[str, Replica] = {}
        self.calls: list[tuple[str, str, str]] = []

    def list_replicas(self) -> list[Replica]:
        return [self.replicas[slot] for slot in sorted(self.replicas)]

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        self.calls.append(("start", slot, release.tag))
        self.replicas[slot] = Replica(
            id=slot,
            url="http://127.0.0.1:8000",
            release=release.tag,
            state=ReplicaState.RUNNING,
            generation=generation,
            pid=4242,
            started_at=self.clock.now(),
        )
        return self.replicas[slot]

    def stop_replica(self, slot: str) -> None:
        self.calls.append(("stop", slot, ""))
        self.replicas.pop(slot, None)

    def restart_replica(self, slot: str) -> None:
        raise AssertionError("not used")

    def resources(self, replica: Replica) -> ResourceSample | None:
        return ResourceSample(cpu_percent=12.0, memory_bytes=2.0**27, memory_percent=1.5)

    def drain_events(self) -> list[EngineEvent]:
        return []

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        return None

    def close(self) -> None:
        return None


def answer(request: httpx.Request) -> httpx.Response:
    """The replica's HTTP API: healthy, ready, canaries right."""
    path = request.url.path
    if path == "/health":
        return httpx.Response(200, json={"status": "ok"})
    if path == "/ready":
        return httpx.Response(200, json={"ready": True})
    if path == "/predict":
        return httpx.Response(200, json={"predictions": [{"label": "billing", "score": 0.9}]})
    return httpx.Response(200, text="")


@contextmanager
def fake_agent(tmp_path: Path, **settings: Any) -> Iterator[Agent]:
    """An Agent on a fake engine and fake clock whose replicas answer through ``answer``;
    ``settings`` go to ``AgentSettings`` (the API, status page and hostile-input tests share it)."""
    clock = FakeClock(T0)
    engine = FakeEngine(clock)
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "health.yaml").write_text(RULES, encoding="utf-8")
    client = httpx.Client(transport=httpx.MockTransport(answer))
    observer = Observer(
        backend=engine,
        client=client,
        canaries=lambda: [Canary(name="refund", input="refund me", expected="billing")],
        timeout_s=1.0,
        canary_interval_s=30.0,
        gpu=GpuCollector(nvml=NoGpu()),
    )
    store = StateStore(tmp_path / "state")
    audit = AuditLog(tmp_path / "state")
    built = Agent(
        settings=AgentSettings(initial_release=ReleaseSpec(tag="v1"), **settings),
        clock=clock,
        backend=engine,
        observer=observer,
        store=store,
        audit=audit,
        rules=RuleWatcher(rules_dir),
        metrics=AgentMetrics(),
    )
    try:
        yield built
    finally:
        observer.close()
        client.close()
        store.close()
        audit.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with fake_agent(tmp_path) as built:
        yield built


def api(agent: Agent, *, token: str | None = TOKEN, read_open: bool = True) -> TestClient:
    return TestClient(create_api(agent, token=token, read_open=read_open))


MUTATIONS = [
    ("/api/deploy", {"tag": "v2"}),
    ("/api/rollback", {}),
    ("/api/maintenance", {"on": True}),
    ("/api/freeze", {"on": True}),
]


@pytest.mark.parametrize(("path", "body"), MUTATIONS)
def test_mutating_endpoints_refuse_a_request_without_a_token(
    agent: Agent, path: str, body: dict[str, object]
) -> None:
    response = api(agent).post(path, json=body)

    assert response.status_code == 401
    assert response.json() == {"detail": "missing or wrong bearer token"}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("path", "body"), MUTATIONS)
def test_mutating_endpoints_refuse_a_wrong_token(
    agent: Agent, path: str, body: dict[str, object]
) -> None:
    response = api(agent).post(path, json=body, headers={"Authorization": "Bearer nope"})

    assert response.status_code == 401
    assert response.json() == {"detail": "missing or wrong bearer token"}


@pytest.mark.parametrize(("path", "body"), MUTATIONS)
def test_mutating_endpoints_are_forbidden_when_no_token_is_configured(
    agent: Agent, path: str, body: dict[str, object]
) -> None:
    response = api(agent, token=None).post(path, json=body, headers=AUTH)

    assert response.status_code == 403
    assert response.json() == {"detail": "no API token is configured; set WARDEN_TOKEN and restart"}


def test_freeze_with_the_right_token_freezes(agent: Agent) -> None:
    response = api(agent).post("/api/freeze", json={"on": True}, headers=AUTH)

    assert (response.status_code, response.json()) == (200, {"maintenance": False, "frozen": True})
    desired = agent.store.desired()
    assert desired is not None
    assert desired.frozen is True


def test_maintenance_with_the_right_token_turns_maintenance_on(agent: Agent) -> None:
    response = api(agent).post("/api/maintenance", json={"on": True}, headers=AUTH)

    assert (response.status_code, response.json()) == (200, {"maintenance": True, "frozen": False})


def test_deploy_with_the_right_token_is_accepted_as_candidate(agent: Agent) -> None:
    response = api(agent).post(
        "/api/deploy", json={"tag": "v2", "model": "/models/v2"}, headers=AUTH
    )

    assert (response.status_code, response.json()) == (
        202,
        {"release": "v2", "status": "candidate", "previous": "v1"},
    )
    release = agent.store.release("v2")
    assert release is not None
    assert release.spec == ReleaseSpec(tag="v2", model="/models/v2")


def test_deploy_refuses_an_invalid_tag(agent: Agent) -> None:
    response = api(agent).post("/api/deploy", json={"tag": "-v2 rm"}, headers=AUTH)

    assert response.status_code == 422
    assert agent.store.release("-v2 rm") is None


def test_deploy_refuses_unknown_fields(agent: Agent) -> None:
    response = api(agent).post("/api/deploy", json={"tag": "v2", "replicas": 3}, headers=AUTH)

    assert response.status_code == 422


def test_deploy_of_a_release_marked_bad_is_refused_with_the_reason(agent: Agent) -> None:
    agent.store.add_release(ReleaseSpec(tag="v2"), T0)
    agent.store.mark_bad("v2", T0, "canaries failed")

    response = api(agent).post("/api/deploy", json={"tag": "v2"}, headers=AUTH)

    assert (response.status_code, response.json()) == (
        409,
        {
            "detail": "release v2 was marked bad (canaries failed); "
            "deploy it again with --force if you mean it"
        },
    )


def test_deploy_of_a_release_marked_bad_goes_ahead_with_force(agent: Agent) -> None:
    agent.store.add_release(ReleaseSpec(tag="v2"), T0)
    agent.store.mark_bad("v2", T0, "canaries failed")

    response = api(agent).post("/api/deploy", json={"tag": "v2", "force": True}, headers=AUTH)

    assert response.status_code == 202
    desired = agent.store.desired()
    assert desired is not None
    assert desired.release == "v2"


def test_rollback_with_no_good_release_is_refused_with_the_reason(agent: Agent) -> None:
    response = api(agent).post("/api/rollback", json={}, headers=AUTH)

    assert (response.status_code, response.json()) == (
        409,
        {"detail": "no good release to roll back to; `warden releases` lists them"},
    )


def test_rollback_to_an_unknown_release_is_refused(agent: Agent) -> None:
    response = api(agent).post("/api/rollback", json={"to": "v0"}, headers=AUTH)

    assert (response.status_code, response.json()) == (
        409,
        {"detail": "release v0 is unknown; `warden releases` lists them"},
    )


def test_rollback_goes_to_the_newest_good_release_and_marks_the_current_bad(
    agent: Agent,
) -> None:
    agent.store.mark_good("v1", T0, "baked")
    agent.deploy(ReleaseSpec(tag="v2"))

    response = api(agent).post("/api/rollback", json={}, headers=AUTH)

    assert response.status_code == 202
    body = response.json()
    assert (body["release"], body["previous"]) == ("v1", "v2")
    [action] = agent.store.pending_actions()
    assert (action.id, action.rule, action.target) == (body["action_id"], "manual", "v1")
    bad = agent.store.release("v2")
    assert bad is not None
    assert bad.status.value == "bad"


@pytest.mark.parametrize("path", ["/metrics", "/api/status", "/api/releases", "/api/actions"])
def test_read_endpoints_are_open_without_a_token_when_read_open(agent: Agent, path: str) -> None:
    response = api(agent, read_open=True).get(path)

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/api/status", "/api/releases", "/api/events"])
def test_read_endpoints_need_the_token_when_not_read_open(agent: Agent, path: str) -> None:
    client = api(agent, read_open=False)

    refused = client.get(path)
    allowed = client.get(path, headers=AUTH)

    assert (refused.status_code, refused.json()) == (
        401,
        {"detail": "missing or wrong bearer token"},
    )
    assert allowed.status_code == 200


def test_metrics_are_warden_series_in_prometheus_text(agent: Agent) -> None:
    agent.tick()

    response = api(agent).get("/metrics")

    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {
        "warden_actions",
        "warden_decisions",
        "warden_signal",
        "warden_release_info",
        "warden_rules_valid",
        "warden_alerts_pending",
    } <= set(families)
    assert all(name.startswith("warden_") for name in families)
    [release] = families["warden_release_info"].samples
    assert (release.labels, release.value) == ({"release": "v1", "status": "candidate"}, 1.0)
    [valid] = families["warden_rules_valid"].samples
    assert valid.value == 1.0


def test_status_document_describes_release_replicas_and_flags(agent: Agent) -> None:
    agent.tick()
    agent.clock.sleep(1.0)
    agent.tick()

    doc = api(agent).get("/api/status").json()

    assert doc == {
        "service": "inference",
        "backend": "fake",
        "current_release": "v1",
        "current_release_status": "candidate",
        "last_good_release": None,
        "desired_replicas": 1,
        "replicas": [
            {
                "id": "inference-1",
                "url": "http://127.0.0.1:8000",
                "state": "running",
                "release": "v1",
                "pid": 4242,
                "container_id": None,
                "started_at": T0,
                "up": True,
                "ready": True,
                "reason": "",
                "canary_accuracy": 1.0,
                "cpu_percent": 12.0,
                "memory_bytes": 2.0**27,
            }
        ],
        "firing": [],
        "frozen": False,
        "maintenance": False,
        "dry_run": False,
        "in_flight": [],
        "rules_problems": [],
        "engine_problem": None,
        "service_signals": {"replicas_ready": 1.0},
        "observed_at": T0 + 1.0,
        "rollout": None,
    }


def test_status_before_the_first_tick_has_no_replicas(agent: Agent) -> None:
    doc = api(agent).get("/api/status").json()

    assert (doc["replicas"], doc["observed_at"], doc["service_signals"]) == ([], None, {})


def test_releases_lists_every_release_newest_first(agent: Agent) -> None:
    agent.clock.sleep(5.0)
    agent.deploy(ReleaseSpec(tag="v2", image="registry/inference:v2"))

    doc = api(agent).get("/api/releases").json()

    assert [(r["tag"], r["status"], r["created_at"]) for r in doc["releases"]] == [
        ("v2", "candidate", T0 + 5.0),
        ("v1", "candidate", T0),
    ]
    assert doc["releases"][0]["image"] == "registry/inference:v2"


def test_events_are_paged_with_the_next_cursor(agent: Agent) -> None:
    agent.set_flags(maintenance=True)
    agent.set_flags(maintenance=False)
    client = api(agent)

    first = client.get("/api/events", params={"limit": 1}).json()
    rest = client.get("/api/events", params={"after": first["next"]}).json()
    empty = client.get("/api/events", params={"after": rest["next"]}).json()

    assert [e["message"] for e in first["events"]] == ["maintenance on, frozen no (operator)"]
    assert [e["message"] for e in rest["events"]] == ["maintenance off, frozen no (operator)"]
    assert empty == {"events": [], "next": rest["next"]}


def test_actions_lists_the_action_history(agent: Agent) -> None:
    agent.store.mark_good("v1", T0, "baked")
    agent.deploy(ReleaseSpec(tag="v2"))
    agent.rollback()

    doc = api(agent).get("/api/actions", params={"limit": 10}).json()

    assert [(a["kind"], a["subject"], a["target"], a["status"]) for a in doc["actions"]] == [
        ("rollback", "service", "v1", "pending")
    ]


def test_rules_endpoint_lists_the_rules_in_effect(agent: Agent) -> None:
    doc = api(agent).get("/api/rules").json()
    assert doc["problems"] == []
    assert [f.rsplit("/", 1)[-1] for f in doc["files"]] == ["health.yaml"]
    rule = doc["rules"][0]
    assert set(rule) == {"name", "when", "for_s", "severity", "actions", "source", "description"}
    assert rule["source"].startswith(doc["files"][0])
