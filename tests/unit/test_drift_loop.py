"""The agent's tick with a drift monitor: signals reach rules and metrics, promotion captures a
reference, and the shipped drift-since-deploy rule reverts a candidate to the good release."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.backends.base import ReleaseSpec
from agent.domain import SERVICE, Replica
from agent.releases import ReleaseStatus
from tests.unit.test_loop import World, started_and_ready, world  # noqa: F401 (fixture)

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeDrift:
    """A DriftHook whose signals the test sets; records what the tick told it."""

    def __init__(self) -> None:
        self.signals: dict[str, float] = {}
        self.ticks: list[tuple[tuple[str, ...], str, str | None]] = []
        self.promotions: list[str] = []

    def tick(
        self, *, ready: Sequence[Replica], release: str, previous_good: str | None, now: float
    ) -> Mapping[str, float]:
        self.ticks.append((tuple(r.id for r in ready), release, previous_good))
        return dict(self.signals)

    def promoted(self, release: str, now: float) -> None:
        self.promotions.append(release)


def test_drift_signals_are_service_signals_and_exported(world: World) -> None:  # noqa: F811
    agent = world.agent()
    drift = FakeDrift()
    agent.drift = drift
    started_and_ready(world, agent)
    drift.signals = {"drift_detected": 1.0, "drift_p_value": 0.001}
    agent.tick()
    assert drift.ticks[-1] == (("inference-1",), "v1", None)
    assert agent.mem.last_observation is not None
    assert agent.mem.last_observation.signals[SERVICE]["drift_p_value"] == 0.001
    sample = agent.metrics.registry.get_sample_value(
        "warden_signal", {"subject": SERVICE, "signal": "drift_detected"}
    )
    assert sample == 1.0


def test_promotion_asks_the_monitor_for_a_reference(world: World) -> None:  # noqa: F811
    agent = world.agent(bake_s=10.0)
    drift = FakeDrift()
    agent.drift = drift
    started_and_ready(world, agent)
    world.clock.advance(10.0)
    agent.tick()
    assert drift.promotions == ["v1"]


def test_the_shipped_rule_reverts_a_candidate_that_drifts_since_its_deploy(
    world: World,  # noqa: F811
) -> None:
    shutil.copy(REPO_ROOT / "rules" / "drift.yaml", world.rules_dir / "drift.yaml")
    agent = world.agent(bake_s=10.0)
    drift = FakeDrift()
    agent.drift = drift
    started_and_ready(world, agent)
    world.clock.advance(10.0)
    agent.tick()  # v1 promoted good
    agent.deploy(ReleaseSpec(tag="v2"))
    for _ in range(3):
        world.clock.advance(1.0)
        agent.tick()
    assert drift.ticks[-1][1:] == ("v2", "v1")  # compared with v1, the good one it replaced
    drift.signals = {"drift_detected": 1.0, "drift_since_deploy": 1.0}
    world.clock.advance(1.0)
    agent.tick()
    desired = agent.store.desired()
    assert desired is not None and desired.release == "v1"
    v2 = agent.store.release("v2")
    assert v2 is not None and v2.status is ReleaseStatus.BAD
