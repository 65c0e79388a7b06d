"""Accuracy decay in the tick: baseline at promotion; a decayed candidate reverts, decay in place
alerts.

A fake engine answers the golden set with per-release confidences; the agent runs on a FakeClock
with the shipped quality rules (``rules/quality.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from agent.audit import AuditLog
from agent.backends.base import ReleaseSpec, ResourceSample
from agent.canaries import Canary
from agent.clock import FakeClock
from agent.collectors import GpuCollector
from agent.decay_monitor import DecayMonitor, DecaySettings
from agent.domain import SERVICE, ActionKind, EngineEvent, Replica, ReplicaState
from agent.feedback import FeedbackItem, FeedbackStore
from agent.loop import Agent, AgentSettings
from agent.metrics import AgentMetrics
from agent.observe import Observer
from agent.releases import ReleaseStatus
from agent.rules import RuleWatcher
from agent.state import StateStore
from tests.unit.fakes import NoGpu

T0 = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[2]
LABELS = ("billing", "technical support", "product feedback", "account issue")
CANARIES = tuple(
    Canary(name=f"item-{i}", input=f"text {i}", expected=LABELS[i % 4], min_confidence=0.3)
    for i in range(8)
)
GOOD = [0.997, 0.998, 1.0, 0.999, 0.993, 0.992, 1.0, 1.0]
# all-MiniLM-L6-v2 with noise of 0.5 std on every weight matrix: right labels, all above 0.3
DEGRADED = [0.535, 0.381, 0.514, 0.367, 0.489, 0.553, 0.557, 0.405]


class ScoredEngine:
    """A backend whose replicas answer every canary with its expected label and the confidence
    ``confidences[release][i]`` (``GOOD`` for releases not listed)."""

    kind = "fake"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.replicas: dict[str, Replica] = {}
        self.confidences: dict[str, list[float]] = {}
        self._pid = 100

    def list_replicas(self) -> list[Replica]:
        return [self.replicas[slot] for slot in sorted(self.replicas)]

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        self._pid += 1
        self.replicas[slot] = Replica(
            id=slot,
            url="http://127.0.0.1:8000",
            release=release.tag,
            state=ReplicaState.RUNNING,
            generation=generation,
            pid=self._pid,
            started_at=self.clock.now(),
        )
        return self.replicas[slot]

    def stop_replica(self, slot: str) -> None:
        self.replicas.pop(slot, None)

    def restart_replica(self, slot: str) -> None:
        raise AssertionError("not used")

    def resources(self, replica: Replica) -> ResourceSample | None:
        return None

    def drain_events(self) -> list[EngineEvent]:
        return []

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        return None

    def close(self) -> None:
        return None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.replicas:
            raise httpx.ConnectError("connection refused", request=request)
        replica = next(iter(self.replicas.values()))
        path = request.url.path
        if path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if path == "/ready":
            return httpx.Response(200, json={"ready": True})
        if path == "/predict":
            scores = self.confidences.get(replica.release, GOOD)
            predictions = [
                {"label": c.expected, "score": s, "scores": {c.expected: s}}
                for c, s in zip(CANARIES, scores, strict=True)
            ]
            return httpx.Response(200, json={"task": "classify", "predictions": predictions})
        return httpx.Response(200, text="")


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock(T0)
        self.engine = ScoredEngine(self.clock)
        self.state_dir = tmp_path / "state"
        self.rules = tmp_path / "rules"
        self.rules.mkdir()
        (self.rules / "quality.yaml").write_bytes((REPO / "rules" / "quality.yaml").read_bytes())
        self._closers: list[Callable[[], None]] = []

    def agent(self) -> Agent:
        client = httpx.Client(transport=httpx.MockTransport(self.engine))
        observer = Observer(
            backend=self.engine,
            client=client,
            canaries=lambda: CANARIES,
            timeout_s=1.0,
            canary_interval_s=10.0,
            gpu=GpuCollector(nvml=NoGpu()),
        )
        store, audit = StateStore(self.state_dir), AuditLog(self.state_dir)
        feedback = FeedbackStore(self.state_dir, window=500)
        decay = DecayMonitor(settings=DecaySettings(), state_dir=self.state_dir, feedback=feedback)
        self._closers += [observer.close, client.close, store.close, audit.close, feedback.close]
        return Agent(
            settings=AgentSettings(initial_release=ReleaseSpec(tag="v1"), bake_s=10.0),
            clock=self.clock,
            backend=self.engine,
            observer=observer,
            store=store,
            audit=audit,
            rules=RuleWatcher(self.rules),
            metrics=AgentMetrics(),
            decay=decay,
        )

    def run(self, agent: Agent, seconds: float, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            agent.tick()
            self.clock.advance(step)

    def close(self) -> None:
        for close in self._closers:
            close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def promoted(world: World) -> Agent:
    agent = world.agent()
    world.run(agent, 20.0)
    assert agent.store.release("v1").status is ReleaseStatus.GOOD  # type: ignore[union-attr]
    return agent


def service_signals(agent: Agent) -> dict[str, float]:
    assert agent.mem.last_observation is not None
    return agent.mem.last_observation.signals[SERVICE]


def test_promotion_captures_the_baseline_and_it_survives_a_restart(world: World) -> None:
    agent = promoted(world)
    assert agent.decay is not None
    baseline = agent.decay.baseline("v1")
    assert baseline is not None and baseline.accuracy == 1.0
    assert baseline.items["item-1"].confidence == pytest.approx(0.998)
    assert world.agent().decay.baseline("v1") == baseline  # type: ignore[union-attr]


def test_a_good_release_matches_its_own_baseline(world: World) -> None:
    agent = promoted(world)
    world.run(agent, 12.0)
    signals = service_signals(agent)
    assert signals["decay_detected"] == 0.0
    assert signals["canary_accuracy_drop"] == 0.0
    assert signals["decay_p_value"] == 1.0


def test_a_candidate_with_degraded_confidences_is_reverted_within_one_canary_run(
    world: World,
) -> None:
    agent = promoted(world)
    world.engine.confidences["v2"] = DEGRADED
    agent.deploy(ReleaseSpec(tag="v2"))
    agent.tick()  # replaces the replica with v2
    world.clock.advance(1.0)
    report = agent.tick()  # v2 ready: its first canary run
    signals = service_signals(agent)
    assert signals["candidate_decay_detected"] == 1.0
    assert signals["canary_accuracy_drop"] == 0.0  # every label right: only Welch sees it
    rollbacks = [d for d in report.decisions if d.action is ActionKind.ROLLBACK]
    assert [d.rule for d in rollbacks] == ["candidate-accuracy-decay"]
    assert rollbacks[0].target_release == "v1"
    assert agent.store.release("v2").status is ReleaseStatus.BAD  # type: ignore[union-attr]
    events = [e for e in agent.store.events(limit=1000) if e.kind == "decay"]
    assert "Welch: mean expected-label probability 0.475 now vs 0.997 baseline" in events[0].message


def test_decay_of_a_good_release_in_place_alerts_and_does_not_roll_back(world: World) -> None:
    agent = promoted(world)
    world.engine.confidences["v1"] = DEGRADED  # the same release starts answering worse
    world.run(agent, 200.0, step=5.0)
    signals = service_signals(agent)
    assert signals["decay_detected"] == 1.0
    assert signals["candidate_decay_detected"] == 0.0
    kinds = {(r.get("rule"), r.get("action")) for r in agent.audit.read()}
    assert ("accuracy-decay", "alert") in kinds
    assert not [a for a in agent.store.actions() if a.kind is ActionKind.ROLLBACK]


def test_labelled_feedback_10_points_worse_than_the_baseline_is_decay(world: World) -> None:
    agent = promoted(world)
    assert agent.decay is not None
    right = FeedbackItem(predicted="billing", label="billing", release="v1")
    wrong = FeedbackItem(predicted="billing", label="account issue", release="v1")
    agent.decay.feedback.add([right] * 450 + [wrong] * 50, T0)  # baseline window: 90%
    agent.decay.feedback.add([right] * 200 + [wrong] * 50, T0 + 1)  # next 250: 80%
    agent.tick()
    signals = service_signals(agent)
    assert signals["accuracy"] == pytest.approx(0.8)
    assert signals["accuracy_drop"] == pytest.approx(0.1)
    assert signals["decay_detected"] == 1.0
