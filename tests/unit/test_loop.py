"""Agent.tick: observe, evaluate, decide, act, verify, record; on fakes and a FakeClock."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.alerts import Receiver
from agent.audit import AuditLog
from agent.backends.base import ReleaseSpec, ResourceSample
from agent.canaries import Canary
from agent.clock import FakeClock
from agent.collectors import GpuCollector
from agent.domain import ActionKind, EngineEvent, Replica, ReplicaState
from agent.loop import Agent, AgentSettings
from agent.metrics import AgentMetrics
from agent.observe import Observer
from agent.policy import PolicyConfig
from agent.releases import ReleaseStatus
from agent.rules import RuleWatcher
from agent.state import StateStore
from agent.state_schema import ActionStatus
from tests.unit.fakes import NoGpu

T0 = 1_700_000_000.0
CANARIES = (
    Canary(name="refund", input="refund me", expected="billing"),
    Canary(name="crash", input="the app crashes", expected="technical support"),
)
LABELS = ["billing", "technical support"]
EXITED_RULE = """\
rules:
  - name: replica-exited
    when: exited == 1
    severity: critical
    actions: [alert, restart, rollback]
"""
CANARY_RULE = """\
rules:
  - name: canary-failing
    when: canary_failures >= 1
    severity: warning
    actions: [alert, rollback]
"""


class FakeEngine:
    """A Backend whose replicas answer HTTP through ``MockTransport(engine)``.

    Records ``start``/``stop`` calls. A replica of a release in ``broken`` answers its canaries
    wrongly; a slot in ``loading`` answers /ready with 503.
    """

    kind = "fake"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.replicas: dict[str, Replica] = {}
        self.calls: list[tuple[str, str, str, int]] = []
        self.broken: set[str] = set()
        self.loading: set[str] = set()
        self._next_pid = 100

    # --- Backend --------------------------------------------------------------------------------

    def list_replicas(self) -> list[Replica]:
        return [self.replicas[slot] for slot in sorted(self.replicas)]

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        self.calls.append(("start", slot, release.tag, generation))
        self._next_pid += 1
        index = int(slot.rsplit("-", 1)[1])
        self.replicas[slot] = Replica(
            id=slot,
            url=f"http://127.0.0.1:{7999 + index}",
            release=release.tag,
            state=ReplicaState.RUNNING,
            generation=generation,
            pid=self._next_pid,
            started_at=self.clock.now(),
        )
        return self.replicas[slot]

    def stop_replica(self, slot: str) -> None:
        self.calls.append(("stop", slot, "", 0))
        self.replicas.pop(slot, None)

    def restart_replica(self, slot: str) -> None:
        raise AssertionError("the agent restarts by bumping the generation, not in place")

    def resources(self, replica: Replica) -> ResourceSample | None:
        return None

    def drain_events(self) -> list[EngineEvent]:
        return []

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        return None

    def close(self) -> None:
        return None

    # --- test controls --------------------------------------------------------------------------

    def exit(self, slot: str, code: int = 1) -> None:
        """The replica's process dies on its own."""
        self.replicas[slot] = replace(
            self.replicas[slot], state=ReplicaState.EXITED, exit_code=code
        )

    # --- the replicas' HTTP API -----------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = f"http://{request.url.host}:{request.url.port}"
        running = [
            r for r in self.replicas.values() if r.url == url and r.state is ReplicaState.RUNNING
        ]
        if not running:
            raise httpx.ConnectError("connection refused", request=request)
        r = running[0]
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if path == "/ready":
            if r.id in self.loading:
                return httpx.Response(503, json={"ready": False, "reason": "loading model"})
            return httpx.Response(200, json={"ready": True, "release": r.release})
        if path == "/metrics":
            return httpx.Response(200, text="")
        if path == "/predict":
            labels = ["wrong", "wrong"] if r.release in self.broken else LABELS
            predictions = [{"label": label, "score": 0.9} for label in labels]
            return httpx.Response(200, json={"task": "classify", "predictions": predictions})
        return httpx.Response(404, json={"detail": "not found"})


class World:
    """Builds agents over one state dir, rules dir, clock and engine (closing them at the end)."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock(T0)
        self.engine = FakeEngine(self.clock)
        self.state_dir = tmp_path / "state"
        self.rules_dir = tmp_path / "rules"
        self.rules_dir.mkdir()
        (self.rules_dir / "health.yaml").write_text(EXITED_RULE, encoding="utf-8")
        self._closers: list[Callable[[], None]] = []

    def agent(
        self,
        *,
        dry_run: bool = False,
        bake_s: float = 300.0,
        receivers: Sequence[Receiver] = (),
    ) -> Agent:
        client = httpx.Client(transport=httpx.MockTransport(self.engine))
        observer = Observer(
            backend=self.engine,
            client=client,
            canaries=lambda: CANARIES,
            timeout_s=1.0,
            canary_interval_s=30.0,
            gpu=GpuCollector(nvml=NoGpu()),
        )
        store = StateStore(self.state_dir)
        audit = AuditLog(self.state_dir)
        self._closers += [observer.close, client.close, store.close, audit.close]
        return Agent(
            settings=AgentSettings(
                service="inference",
                initial_release=ReleaseSpec(tag="v1"),
                replicas=1,
                verify_timeout_s=60.0,
                bake_s=bake_s,
                policy=PolicyConfig(dry_run=dry_run),
            ),
            clock=self.clock,
            backend=self.engine,
            observer=observer,
            store=store,
            audit=audit,
            rules=RuleWatcher(self.rules_dir),
            metrics=AgentMetrics(),
            receivers=receivers,
        )

    def close(self) -> None:
        for close in self._closers:
            close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def started_and_ready(world: World, agent: Agent) -> None:
    """First tick starts v1, the second sees it ready."""
    agent.tick()
    world.clock.advance(1.0)
    agent.tick()


def audit_kinds(agent: Agent) -> list[str]:
    return [str(r["kind"]) for r in agent.audit.read()]


def records_of(agent: Agent, kind: str) -> list[dict[str, Any]]:
    return [r for r in agent.audit.read() if r["kind"] == kind]


def test_first_tick_records_the_initial_release_and_starts_it(world: World) -> None:
    agent = world.agent()

    report = agent.tick()

    assert report.steps == ("start inference-1: desired slot has no replica",)
    assert world.engine.calls == [("start", "inference-1", "v1", 0)]
    desired = agent.store.desired()
    assert desired is not None
    assert (desired.release, desired.replicas) == ("v1", 1)
    release = agent.store.release("v1")
    assert release is not None
    assert release.status is ReleaseStatus.CANDIDATE
    assert records_of(agent, "desired")[0]["reason"] == "first start: 1 replica(s) of v1"


def test_a_steady_service_needs_no_step_and_ticks_at_the_normal_interval(world: World) -> None:
    agent = world.agent()
    started_and_ready(world, agent)
    world.clock.advance(1.0)

    report = agent.tick()

    assert (report.steps, report.decisions, report.firing) == ((), (), ())
    assert report.next_interval_s == 1.0
    assert world.engine.calls == [("start", "inference-1", "v1", 0)]


def test_an_exited_replica_is_restarted_and_verified_once_ready_again(world: World) -> None:
    agent = world.agent()
    started_and_ready(world, agent)
    world.engine.exit("inference-1")
    world.engine.loading.add("inference-1")  # the new process will take a while to load
    world.clock.advance(1.0)

    restart_tick = agent.tick()

    assert [(d.action, d.subject) for d in restart_tick.decisions] == [
        (ActionKind.ALERT, "inference-1"),
        (ActionKind.RESTART, "inference-1"),
    ]
    assert restart_tick.decisions[1].reason == (
        "restart inference-1: inference-1 exited (rule replica-exited)"
    )
    [action] = agent.store.actions()
    assert (action.kind, action.subject, action.target, action.status) == (
        ActionKind.RESTART,
        "inference-1",
        "inference-1",
        ActionStatus.APPLIED,
    )
    desired = agent.store.desired()
    assert desired is not None
    assert desired.generations == {"inference-1": 1}
    assert world.engine.calls[-1] == ("start", "inference-1", "v1", 1)
    assert restart_tick.next_interval_s == 0.25

    world.clock.advance(1.0)
    loading_tick = agent.tick()
    assert loading_tick.verified == ()
    assert agent.store.actions()[0].status is ActionStatus.APPLIED

    world.engine.loading.clear()
    world.clock.advance(1.0)
    verified_tick = agent.tick()

    [outcome] = verified_tick.verified
    assert (outcome.action_id, outcome.ok, outcome.reason) == (action.id, True, "verified in 2.0 s")
    assert agent.store.actions()[0].status is ActionStatus.VERIFIED
    assert (
        agent.metrics.registry.get_sample_value(
            "warden_actions_total", {"action": "restart", "result": "verified"}
        )
        == 1.0
    )


def test_dry_run_records_the_decision_but_never_touches_the_backend(world: World) -> None:
    agent = world.agent(dry_run=True)
    started_and_ready(world, agent)
    world.engine.exit("inference-1")
    world.clock.advance(1.0)

    report = agent.tick()

    assert [(d.action, d.dry_run) for d in report.decisions] == [
        (ActionKind.ALERT, False),
        (ActionKind.RESTART, True),
    ]
    assert world.engine.calls == [("start", "inference-1", "v1", 0)]
    assert agent.store.actions() == []
    desired = agent.store.desired()
    assert desired is not None
    assert desired.generations == {}
    [restart] = [r for r in records_of(agent, "decision") if r["action"] == "restart"]
    assert (restart["dry_run"], restart["action_id"]) == (True, "")


def test_a_candidate_failing_its_canaries_is_rolled_back_to_the_good_release(
    world: World,
) -> None:
    (world.rules_dir / "quality.yaml").write_text(CANARY_RULE, encoding="utf-8")
    agent = world.agent()
    started_and_ready(world, agent)
    agent.store.mark_good("v1", world.clock.now(), "baked")
    world.engine.broken.add("v2")
    agent.deploy(ReleaseSpec(tag="v2"))
    world.clock.advance(1.0)
    agent.tick()  # replaces v1 by v2
    world.clock.advance(1.0)

    report = agent.tick()

    [rollback] = [d for d in report.decisions if d.action is ActionKind.ROLLBACK]
    assert rollback.target_release == "v1"
    assert rollback.reason == (
        "roll back v2 to v1 (the release is a candidate): "
        "inference-1 canary failures 2 >= 1 (rule canary-failing)"
    )
    desired = agent.store.desired()
    assert desired is not None
    assert desired.release == "v1"
    v2 = agent.store.release("v2")
    assert v2 is not None
    assert v2.status is ReleaseStatus.BAD
    assert v2.reason.startswith("reverted to v1: roll back v2 to v1")
    assert world.engine.calls[-1] == ("start", "inference-1", "v1", 0)


def test_the_shipped_rules_revert_a_baking_release_2s_after_a_wrong_canary(world: World) -> None:
    """``candidate-canary-failing`` (for: 2s) reverts a candidate long before ``canary-failing``
    (for: 10s) would; a proven release's replicas have ``candidate_canary_failures`` 0."""
    shipped = Path(__file__).parents[2] / "rules" / "quality.yaml"
    (world.rules_dir / "quality.yaml").write_text(shipped.read_text(), encoding="utf-8")
    agent = world.agent()
    started_and_ready(world, agent)
    agent.store.mark_good("v1", world.clock.now(), "baked")
    world.clock.advance(1.0)
    agent.tick()
    assert agent.mem.last_observation is not None
    assert agent.mem.last_observation.signals["inference-1"]["candidate_canary_failures"] == 0.0
    world.engine.broken.add("v2")
    agent.deploy(ReleaseSpec(tag="v2"))
    world.clock.advance(1.0)
    agent.tick()  # replaces v1 by v2
    world.clock.advance(1.0)
    first_wrong = agent.tick()  # v2's first canary run: wrong answers
    assert not first_wrong.decisions
    world.clock.advance(1.0)
    assert not agent.tick().decisions  # 1 s: still within `for: 2s`
    world.clock.advance(1.0)

    report = agent.tick()

    [rollback] = [d for d in report.decisions if d.action is ActionKind.ROLLBACK]
    assert rollback.target_release == "v1"
    assert "(rule candidate-canary-failing)" in rollback.reason


def test_a_verified_rollback_needs_the_good_release_passing_its_canaries(world: World) -> None:
    (world.rules_dir / "quality.yaml").write_text(CANARY_RULE, encoding="utf-8")
    agent = world.agent()
    started_and_ready(world, agent)
    agent.store.mark_good("v1", world.clock.now(), "baked")
    world.engine.broken.add("v2")
    agent.deploy(ReleaseSpec(tag="v2"))
    for _ in range(2):
        world.clock.advance(1.0)
        agent.tick()
    world.clock.advance(1.0)

    report = agent.tick()

    [outcome] = report.verified
    assert (outcome.kind, outcome.ok) == (ActionKind.ROLLBACK, True)
    assert [a.status for a in agent.store.actions()] == [ActionStatus.VERIFIED]


def test_a_candidate_is_promoted_after_bake_s_of_passing_canaries_and_no_firing(
    world: World,
) -> None:
    agent = world.agent(bake_s=60.0)
    started_and_ready(world, agent)  # canaries pass from T0 + 1
    world.clock.advance(59.5)
    agent.tick()
    still_baking = agent.store.release("v1")
    world.clock.advance(0.5)

    agent.tick()

    assert still_baking is not None
    assert still_baking.status is ReleaseStatus.CANDIDATE
    release = agent.store.release("v1")
    assert release is not None
    assert (release.status, release.promoted_at) == (ReleaseStatus.GOOD, T0 + 61.0)
    [promote] = records_of(agent, "promote")
    assert promote["reason"] == (
        "v1 is good: baked 60 s >= 60 s with canaries passing and no rule firing"
    )
    assert (
        agent.metrics.registry.get_sample_value("warden_last_good_release_info", {"release": "v1"})
        == 1.0
    )


def test_a_firing_rule_restarts_the_bake(world: World) -> None:
    agent = world.agent(bake_s=60.0)
    started_and_ready(world, agent)
    world.clock.advance(30.0)
    world.engine.exit("inference-1")
    agent.tick()  # fires, restarts
    world.clock.advance(1.0)
    agent.tick()  # running again: resolved, canaries pass again from here (T0 + 32)
    world.clock.advance(59.0)
    agent.tick()
    baking = agent.store.release("v1")
    world.clock.advance(1.0)

    agent.tick()

    assert baking is not None
    assert baking.status is ReleaseStatus.CANDIDATE
    release = agent.store.release("v1")
    assert release is not None
    assert release.status is ReleaseStatus.GOOD


def test_an_invalid_rules_edit_keeps_the_last_valid_set_and_says_so(world: World) -> None:
    agent = world.agent()
    agent.tick()
    broken = world.rules_dir / "health.yaml"
    broken.write_text(EXITED_RULE.replace("exited == 1", "exited === 1"), encoding="utf-8")
    world.clock.advance(1.0)

    report = agent.tick()

    assert [r.name for r in agent.rules.rules.rules] == ["replica-exited"]
    assert agent.metrics.registry.get_sample_value("warden_rules_valid") == 0.0
    [invalid] = records_of(agent, "rules-invalid")
    assert invalid["problems"] == list(agent.mem.rules_problems)
    assert len(invalid["problems"]) == 1
    assert invalid["problems"][0].startswith(f"{broken}:3: rules[0].when: ")
    assert report.problems == agent.mem.rules_problems
    assert (
        agent.metrics.registry.get_sample_value("warden_rules_reloads_total", {"result": "invalid"})
        == 1.0
    )


def test_the_invalid_rules_are_audited_once_while_unchanged(world: World) -> None:
    agent = world.agent()
    agent.tick()
    broken = world.rules_dir / "health.yaml"
    broken.write_text(EXITED_RULE.replace("exited == 1", "exited === 1"), encoding="utf-8")
    for _ in range(3):
        world.clock.advance(1.0)
        agent.tick()

    assert audit_kinds(agent).count("rules-invalid") == 1


def test_a_fixed_rules_edit_makes_the_rules_valid_again(world: World) -> None:
    agent = world.agent()
    agent.tick()
    rules = world.rules_dir / "health.yaml"
    rules.write_text(EXITED_RULE.replace("exited == 1", "exited === 1"), encoding="utf-8")
    agent.tick()
    rules.write_text(EXITED_RULE.replace("critical", "warning"), encoding="utf-8")

    report = agent.tick()

    assert report.problems == ()
    assert agent.metrics.registry.get_sample_value("warden_rules_valid") == 1.0
    assert [r.severity for r in agent.rules.rules.rules] == ["warning"]
    assert audit_kinds(agent).count("rules-reloaded") == 1


def test_an_agent_restarted_with_an_action_in_flight_resumes_and_verifies_it_once(
    world: World,
) -> None:
    first = world.agent()
    started_and_ready(world, first)
    world.engine.exit("inference-1")
    world.clock.advance(1.0)
    first.tick()  # restart decided and applied; the agent dies before verifying it
    [action] = first.store.pending_actions()

    second = world.agent()
    resumed = records_of(second, "resume")
    world.clock.advance(1.0)
    second.tick()
    world.clock.advance(1.0)
    second.tick()

    assert [(r["action_id"], r["reason"]) for r in resumed] == [
        (
            action.id,
            "agent restarted with restart inference-1 in flight (applied); finishing it",
        )
    ]
    assert [r["action_id"] for r in records_of(second, "verify")] == [action.id]
    assert second.store.pending_actions() == []
    finished = second.store.action(action.id)
    assert finished is not None
    assert finished.status is ActionStatus.VERIFIED
    assert world.engine.calls == [
        ("start", "inference-1", "v1", 0),
        ("start", "inference-1", "v1", 1),
    ]


def test_an_agent_restarted_before_applying_an_action_applies_it(world: World) -> None:
    first = world.agent()
    started_and_ready(world, first)
    desired = first.store.desired()
    assert desired is not None
    first.store.begin_action_with_desired(
        rule="replica-exited",
        subject="inference-1",
        kind=ActionKind.RESTART,
        target="inference-1",
        reason="crashed",
        desired=replace(desired, generations={"inference-1": 1}),
        now=world.clock.now(),
    )  # the intent is written; the agent dies before reconciling

    second = world.agent()
    world.clock.advance(1.0)
    second.tick()
    world.clock.advance(1.0)
    second.tick()

    assert [r["reason"] for r in records_of(second, "resume")] == [
        "agent restarted with restart inference-1 in flight (pending); finishing it"
    ]
    assert world.engine.calls[-1] == ("start", "inference-1", "v1", 1)
    assert [a.status for a in second.store.actions()] == [ActionStatus.VERIFIED]


RECEIVERS = (
    Receiver(name="am", kind="alertmanager", url="http://alertmanager:9093"),
    Receiver(name="hook", kind="webhook", url="http://hooks.example/warden", secret="s3cret"),
)


def test_an_alert_decision_queues_one_outbox_row_per_receiver(world: World) -> None:
    agent = world.agent(receivers=RECEIVERS)
    started_and_ready(world, agent)
    world.engine.exit("inference-1")
    world.clock.advance(1.0)

    agent.tick()

    rows = agent.store.due_alerts(world.clock.now())
    assert [(r.receiver, r.payload["status"]) for r in rows] == [
        ("am", "firing"),
        ("hook", "firing"),
    ]
    assert rows[0].payload == {
        "name": "replica-exited",
        "subject": "inference-1",
        "severity": "critical",
        "status": "firing",
        "summary": "inference-1 exited (rule replica-exited)",
        "starts_at": T0 + 2.0,
        "ends_at": None,
        "service": "inference",
        "release": "v1",
        "labels": {},
        "generator_url": "",
    }


def test_a_resolved_rule_queues_a_resolved_alert_per_receiver(world: World) -> None:
    agent = world.agent(receivers=RECEIVERS)
    started_and_ready(world, agent)
    world.engine.exit("inference-1")
    world.clock.advance(1.0)
    agent.tick()  # firing; restarted
    world.clock.advance(1.0)

    agent.tick()  # running again

    rows = agent.store.due_alerts(world.clock.now())
    resolved = [r for r in rows if r.payload["status"] == "resolved"]
    assert [r.receiver for r in resolved] == ["am", "hook"]
    assert (resolved[0].payload["starts_at"], resolved[0].payload["ends_at"]) == (
        T0 + 2.0,
        T0 + 3.0,
    )
    assert resolved[0].payload["summary"] == "replica-exited on inference-1 resolved"


def test_an_alert_firing_when_the_agent_restarted_is_resolved_by_the_new_agent(
    world: World,
) -> None:
    first = world.agent(receivers=RECEIVERS)
    started_and_ready(world, first)
    world.engine.exit("inference-1")
    world.clock.advance(1.0)
    first.tick()  # firing; restarted; then the agent dies

    second = world.agent(receivers=RECEIVERS)
    world.clock.advance(1.0)
    second.tick()

    rows = second.store.due_alerts(world.clock.now())
    assert [(r.receiver, r.payload["status"]) for r in rows] == [
        ("am", "firing"),
        ("hook", "firing"),
        ("am", "resolved"),
        ("hook", "resolved"),
    ]


def test_tick_with_the_engine_unreachable_changes_nothing_and_says_why_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.errors import BackendError

    agent = world.agent()
    started_and_ready(world, agent)

    def down() -> list[Replica]:
        raise BackendError("list containers: Docker engine at unix:///x.sock is not reachable")

    monkeypatch.setattr(world.engine, "list_replicas", down)
    world.engine.exit("inference-1")
    reports = [agent.tick(), agent.tick()]
    assert [r.problems for r in reports] == [
        ("engine unreachable: list containers: Docker engine at unix:///x.sock is not reachable",)
    ] * 2
    assert all(r.steps == () and r.decisions == () for r in reports)
    unreachable = [e for e in agent.store.events() if e.kind == "engine-unreachable"]
    assert len(unreachable) == 1
    monkeypatch.undo()
    world.clock.advance(1.0)
    healed = agent.tick()
    assert healed.problems == () and healed.steps == (
        "replace inference-1: generation 0 -> 1 (restart requested)",
    )


def test_a_second_bad_release_is_reverted_too_not_escalated(world: World) -> None:
    """After a verified revert the candidate rule resolves (its signal is 0 on the good release),
    so its ladder resets: the next bad release is reverted again, not frozen as "did not hold"."""
    shipped = Path(__file__).parents[2] / "rules" / "quality.yaml"
    (world.rules_dir / "quality.yaml").write_text(shipped.read_text(), encoding="utf-8")
    agent = world.agent()
    started_and_ready(world, agent)
    agent.store.mark_good("v1", world.clock.now(), "baked")
    world.engine.broken.update({"v2", "v3"})
    rollbacks = []
    for tag in ("v2", "v3"):
        agent.deploy(ReleaseSpec(tag=tag))
        for _ in range(30):
            world.clock.advance(1.0)
            report = agent.tick()
            rollbacks += [d for d in report.decisions if d.action is ActionKind.ROLLBACK]
        desired = agent.store.desired()
        assert desired is not None and desired.release == "v1", tag
        for _ in range(120):  # serving v1 again, well past every cooldown
            world.clock.advance(1.0)
            agent.tick()

    assert [d.reason.split(":")[0] for d in rollbacks] == [
        "roll back v2 to v1 (the release is a candidate)",
        "roll back v3 to v1 (the release is a candidate)",
    ]
    final = agent.store.desired()
    assert final is not None and not final.frozen
