"""Reconcile: plan the smallest change from what runs to what is desired, and apply it."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agent.backends.base import ReleaseSpec, ResourceSample
from agent.domain import EngineEvent, Replica, ReplicaState
from agent.errors import BackendError
from agent.reconcile import Desired, Step, apply, plan, slot_name

V1 = ReleaseSpec(tag="v1")
V2 = ReleaseSpec(tag="v2", model="/models/v2")


def replica(
    slot: str,
    release: str = "v1",
    state: ReplicaState = ReplicaState.RUNNING,
    generation: int = 0,
) -> Replica:
    return Replica(
        id=slot, url="http://127.0.0.1:8000", release=release, state=state, generation=generation
    )


def desired(
    release: ReleaseSpec = V1, replicas: int = 1, generations: Mapping[str, int] | None = None
) -> Desired:
    return Desired(release=release, replicas=replicas, generations=generations or {})


class FakeBackend:
    """Records start/stop calls; a slot in ``fail`` raises BackendError with that message."""

    kind = "fake"

    def __init__(self, fail: Mapping[str, str] | None = None) -> None:
        self.fail = dict(fail or {})
        self.calls: list[tuple[str, str, str, int]] = []

    def list_replicas(self) -> list[Replica]:
        return []

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        self.calls.append(("start", slot, release.tag, generation))
        if slot in self.fail:
            raise BackendError(self.fail[slot])
        return replica(slot, release.tag, generation=generation)

    def stop_replica(self, slot: str) -> None:
        self.calls.append(("stop", slot, "", 0))
        if slot in self.fail:
            raise BackendError(self.fail[slot])

    def restart_replica(self, slot: str) -> None:
        raise AssertionError("the reconciler never restarts in place")

    def resources(self, replica: Replica) -> ResourceSample | None:
        return None

    def drain_events(self) -> list[EngineEvent]:
        return []

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        return None

    def close(self) -> None:
        return None


def test_slot_names_are_numbered_from_one() -> None:
    assert [slot_name("inference", i) for i in (1, 2)] == ["inference-1", "inference-2"]


def test_plan_starts_every_desired_slot_that_has_no_replica() -> None:
    steps = plan(service="inference", desired=desired(replicas=2), replicas=[], ready=set())

    assert steps == [
        Step(kind="start", slot="inference-1", reason="desired slot has no replica"),
        Step(kind="start", slot="inference-2", reason="desired slot has no replica"),
    ]


def test_plan_starts_a_slot_the_engine_reports_missing() -> None:
    current = [replica("inference-1", state=ReplicaState.MISSING)]

    steps = plan(service="inference", desired=desired(), replicas=current, ready=set())

    assert steps == [Step(kind="start", slot="inference-1", reason="desired slot has no replica")]


def test_plan_does_nothing_when_everything_matches() -> None:
    current = [replica("inference-1"), replica("inference-2", generation=3)]

    steps = plan(
        service="inference",
        desired=desired(replicas=2, generations={"inference-2": 3}),
        replicas=current,
        ready={"inference-1", "inference-2"},
    )

    assert steps == []


def test_plan_replaces_a_replica_running_another_release() -> None:
    steps = plan(
        service="inference",
        desired=desired(release=V2),
        replicas=[replica("inference-1", release="v1")],
        ready={"inference-1"},
    )

    assert steps == [Step(kind="replace", slot="inference-1", reason="runs v1, desired v2")]


def test_plan_replaces_a_replica_whose_generation_was_bumped() -> None:
    steps = plan(
        service="inference",
        desired=desired(generations={"inference-1": 2}),
        replicas=[replica("inference-1", generation=1)],
        ready={"inference-1"},
    )

    assert steps == [
        Step(kind="replace", slot="inference-1", reason="generation 1 -> 2 (restart requested)")
    ]


def test_plan_rolls_a_release_change_one_ready_replica_at_a_time() -> None:
    current = [replica(f"inference-{i}", release="v1") for i in (1, 2, 3)]

    steps = plan(
        service="inference",
        desired=desired(release=V2, replicas=3),
        replicas=current,
        ready={"inference-1", "inference-2", "inference-3"},
    )

    assert steps == [Step(kind="replace", slot="inference-1", reason="runs v1, desired v2")]


def test_plan_holds_a_ready_replica_while_another_slot_is_not_ready() -> None:
    current = [replica("inference-1", release="v2"), replica("inference-2", release="v1")]

    steps = plan(
        service="inference",
        desired=desired(release=V2, replicas=2),
        replicas=current,
        ready={"inference-2"},  # inference-1 was just replaced and is still loading
    )

    assert steps == []


def test_plan_continues_the_roll_once_the_replaced_replica_is_ready() -> None:
    current = [replica("inference-1", release="v2"), replica("inference-2", release="v1")]

    steps = plan(
        service="inference",
        desired=desired(release=V2, replicas=2),
        replicas=current,
        ready={"inference-1", "inference-2"},
    )

    assert steps == [Step(kind="replace", slot="inference-2", reason="runs v1, desired v2")]


def test_plan_replaces_a_not_ready_replica_at_once_even_while_rolling() -> None:
    current = [
        replica("inference-1", release="v1"),
        replica("inference-2", release="v1"),
        replica("inference-3", release="v1", state=ReplicaState.EXITED),
    ]

    steps = plan(
        service="inference",
        desired=desired(release=V2, replicas=3),
        replicas=current,
        ready={"inference-1", "inference-2"},
    )

    # the two serving replicas wait (not every other slot is ready); the dead one goes now
    assert steps == [Step(kind="replace", slot="inference-3", reason="runs v1, desired v2")]


def test_plan_replaces_every_not_ready_replica_in_the_same_plan() -> None:
    current = [replica("inference-1", generation=0), replica("inference-2", generation=0)]

    steps = plan(
        service="inference",
        desired=desired(replicas=2, generations={"inference-1": 1, "inference-2": 1}),
        replicas=current,
        ready=set(),
    )

    reason = "generation 0 -> 1 (restart requested)"
    assert steps == [
        Step(kind="replace", slot="inference-1", reason=reason),
        Step(kind="replace", slot="inference-2", reason=reason),
    ]


def test_plan_never_touches_a_replica_stopped_on_purpose() -> None:
    current = [
        replica("inference-1", release="v1", state=ReplicaState.STOPPED),
        replica("inference-3", release="v1", state=ReplicaState.STOPPED),
    ]

    steps = plan(
        service="inference", desired=desired(release=V2, replicas=1), replicas=current, ready=set()
    )

    assert steps == []


def test_plan_stops_the_extra_slots_on_scale_in() -> None:
    current = [replica(f"inference-{i}") for i in (1, 2, 3)]

    steps = plan(
        service="inference",
        desired=desired(replicas=1),
        replicas=current,
        ready={"inference-1", "inference-2", "inference-3"},
    )

    assert steps == [
        Step(kind="stop", slot="inference-2", reason="scale in to 1"),
        Step(kind="stop", slot="inference-3", reason="scale in to 1"),
    ]


def test_apply_starts_and_stops_with_the_desired_release_and_generation() -> None:
    backend = FakeBackend()
    steps = [
        Step(kind="start", slot="inference-1", reason="desired slot has no replica"),
        Step(kind="replace", slot="inference-2", reason="generation 0 -> 4 (restart requested)"),
        Step(kind="stop", slot="inference-3", reason="scale in to 2"),
    ]

    failures = apply(backend, desired(release=V2, generations={"inference-2": 4}), steps)

    assert failures == []
    assert backend.calls == [
        ("start", "inference-1", "v2", 0),
        ("start", "inference-2", "v2", 4),
        ("stop", "inference-3", "", 0),
    ]


def test_apply_reports_a_backend_error_as_a_line_and_runs_the_other_steps() -> None:
    backend = FakeBackend(fail={"inference-1": "port 8000 is in use"})
    steps = [
        Step(kind="start", slot="inference-1", reason="desired slot has no replica"),
        Step(kind="start", slot="inference-2", reason="desired slot has no replica"),
    ]

    failures = apply(backend, desired(replicas=2), steps)

    assert failures == ["start inference-1 failed: port 8000 is in use"]
    assert backend.calls == [("start", "inference-1", "v1", 0), ("start", "inference-2", "v1", 0)]


def test_apply_reports_a_failed_stop() -> None:
    backend = FakeBackend(fail={"inference-2": "container is being removed"})

    failures = apply(
        backend, desired(), [Step(kind="stop", slot="inference-2", reason="scale in to 1")]
    )

    assert failures == ["stop inference-2 failed: container is being removed"]


def test_a_rollout_s_extra_slots_are_started_kept_and_brought_back() -> None:
    want = Desired(release=V1, replicas=1, generations={}, extra={"inference-canary-1": V2})
    main = replica("inference-1")
    assert plan(service="inference", desired=want, replicas=[main], ready={"inference-1"}) == [
        Step(kind="start", slot="inference-canary-1", reason="desired slot has no replica")
    ]
    running = [main, replica("inference-canary-1", "v2")]
    ready = {"inference-1", "inference-canary-1"}
    assert plan(service="inference", desired=want, replicas=running, ready=ready) == []
    for gone in (ReplicaState.EXITED, ReplicaState.STOPPED):  # no rule watches these slots
        dead = [main, replica("inference-canary-1", "v2", state=gone)]
        steps = plan(service="inference", desired=want, replicas=dead, ready={"inference-1"})
        assert [(s.kind, s.slot) for s in steps] == [("replace", "inference-canary-1")]
    # once not desired any more, the candidate's slot is stopped
    done = plan(service="inference", desired=desired(), replicas=running, ready=ready)
    assert [(s.kind, s.slot) for s in done] == [("stop", "inference-canary-1")]


def test_a_dead_candidate_slot_does_not_hold_back_the_service_s_own_rolling_replace() -> None:
    want = Desired(release=V2, replicas=1, generations={}, extra={"inference-canary-1": V2})
    replicas = [
        replica("inference-1", "v1"),
        replica("inference-canary-1", "v2", ReplicaState.EXITED),
    ]
    steps = plan(service="inference", desired=want, replicas=replicas, ready={"inference-1"})
    assert ("replace", "inference-1") in [(s.kind, s.slot) for s in steps]
