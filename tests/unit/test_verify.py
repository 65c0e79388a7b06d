"""Verify: an action is verified by what this tick observed, or fails at its deadline."""

from __future__ import annotations

from agent.domain import (
    SERVICE,
    ActionKind,
    CanaryItemResult,
    CanaryResult,
    ProbeResult,
    Replica,
    ReplicaState,
)
from agent.observe import Observation, ReplicaView
from agent.state_schema import ActionRecord, ActionStatus, DesiredState
from agent.verify import Verdict, check, describe

T0 = 1_700_000_000.0
READY = ProbeResult(ok=True, latency_s=0.01, status_code=200)
NOT_READY = ProbeResult(ok=False, latency_s=0.01, reason="not ready: loading", status_code=503)


def action(kind: ActionKind, subject: str, started_at: float | None = T0) -> ActionRecord:
    return ActionRecord(
        id="a1",
        at=T0 - 1.0,
        rule="replica-exited",
        subject=subject,
        kind=kind,
        target=subject,
        reason="test",
        status=ActionStatus.APPLIED,
        started_at=started_at,
    )


def canary(*oks: bool) -> CanaryResult:
    return CanaryResult(
        items=tuple(
            CanaryItemResult(
                name=f"c{i}",
                ok=ok,
                expected="billing",
                got="billing" if ok else "other",
                confidence=0.9,
                latency_s=0.01,
            )
            for i, ok in enumerate(oks)
        )
    )


def view(
    slot: str,
    *,
    release: str = "v1",
    generation: int = 0,
    ready: ProbeResult | None = READY,
    canaries: CanaryResult | None = None,
) -> ReplicaView:
    r = Replica(
        id=slot,
        url="http://127.0.0.1:8000",
        release=release,
        state=ReplicaState.RUNNING,
        generation=generation,
    )
    return ReplicaView(
        replica=r,
        health=READY,
        ready=ready,
        canary=canaries,
        canary_at=None if canaries is None else T0,
        resources=None,
    )


def observed(*views: ReplicaView) -> Observation:
    return Observation(at=T0, views=views, signals={})


def test_restart_is_verified_when_the_slot_runs_the_new_generation_and_is_ready() -> None:
    verdict = check(
        action=action(ActionKind.RESTART, "inference-1"),
        desired=DesiredState(release="v1", replicas=1, generations={"inference-1": 1}),
        observation=observed(view("inference-1", generation=1)),
        service="inference",
        now=T0 + 2.5,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=True, ok=True, reason="verified in 2.5 s")


def test_restart_waits_while_the_slot_still_runs_the_old_generation() -> None:
    verdict = check(
        action=action(ActionKind.RESTART, "inference-1"),
        desired=DesiredState(release="v1", replicas=1, generations={"inference-1": 1}),
        observation=observed(view("inference-1", generation=0)),
        service="inference",
        now=T0 + 1.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=False, reason="inference-1 not restarted yet")


def test_restart_waits_while_the_new_process_is_not_ready() -> None:
    verdict = check(
        action=action(ActionKind.RESTART, "inference-1"),
        desired=DesiredState(release="v1", replicas=1, generations={"inference-1": 1}),
        observation=observed(view("inference-1", generation=1, ready=NOT_READY)),
        service="inference",
        now=T0 + 1.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=False, reason="inference-1 not ready")


def test_restart_of_one_replica_ignores_the_other_replicas() -> None:
    verdict = check(
        action=action(ActionKind.RESTART, "inference-2"),
        desired=DesiredState(release="v1", replicas=2, generations={"inference-2": 1}),
        observation=observed(view("inference-2", generation=1)),  # inference-1 is not observed
        service="inference",
        now=T0 + 1.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=True, ok=True, reason="verified in 1.0 s")


def test_restart_of_the_service_needs_every_slot() -> None:
    gens = {"inference-1": 1, "inference-2": 1}
    verdict = check(
        action=action(ActionKind.RESTART, SERVICE),
        desired=DesiredState(release="v1", replicas=2, generations=gens),
        observation=observed(view("inference-1", generation=1)),
        service="inference",
        now=T0 + 1.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=False, reason="inference-2 not running yet")


def test_rollback_is_verified_only_when_canaries_pass() -> None:
    verdict = check(
        action=action(ActionKind.ROLLBACK, SERVICE),
        desired=DesiredState(release="v1", replicas=1),
        observation=observed(view("inference-1", canaries=canary(True, True))),
        service="inference",
        now=T0 + 4.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=True, ok=True, reason="verified in 4.0 s")


def test_rollback_waits_for_failing_canaries() -> None:
    verdict = check(
        action=action(ActionKind.ROLLBACK, SERVICE),
        desired=DesiredState(release="v1", replicas=1),
        observation=observed(view("inference-1", canaries=canary(True, False, False))),
        service="inference",
        now=T0 + 4.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=False, reason="inference-1 2 canaries failing")


def test_rollback_waits_until_canaries_were_checked() -> None:
    verdict = check(
        action=action(ActionKind.ROLLBACK, SERVICE),
        desired=DesiredState(release="v1", replicas=1),
        observation=observed(view("inference-1", canaries=None)),
        service="inference",
        now=T0 + 4.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=False, reason="inference-1 canaries not checked yet")


def test_rollback_waits_while_a_replica_runs_the_reverted_release() -> None:
    verdict = check(
        action=action(ActionKind.ROLLBACK, SERVICE),
        desired=DesiredState(release="v1", replicas=1),
        observation=observed(view("inference-1", release="v2", canaries=canary(True))),
        service="inference",
        now=T0 + 4.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=False, reason="inference-1 runs v2, not v1")


def test_restart_does_not_need_canaries() -> None:
    verdict = check(
        action=action(ActionKind.RESTART, "inference-1"),
        desired=DesiredState(release="v1", replicas=1, generations={"inference-1": 1}),
        observation=observed(view("inference-1", generation=1, canaries=canary(False))),
        service="inference",
        now=T0 + 1.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(done=True, ok=True, reason="verified in 1.0 s")


def test_deadline_fails_the_action_naming_every_missing_part() -> None:
    verdict = check(
        action=action(ActionKind.ROLLBACK, SERVICE),
        desired=DesiredState(release="v1", replicas=2),
        observation=observed(view("inference-1", ready=NOT_READY)),
        service="inference",
        now=T0 + 60.0,
        deadline_s=60.0,
    )

    assert verdict == Verdict(
        done=True,
        ok=False,
        reason="not verified within 60 s: inference-1 not ready; inference-2 not running yet",
    )


def test_deadline_counts_from_the_decision_when_the_action_was_never_applied() -> None:
    verdict = check(
        action=action(ActionKind.RESTART, "inference-1", started_at=None),  # at = T0 - 1
        desired=DesiredState(release="v1", replicas=1, generations={"inference-1": 1}),
        observation=observed(),
        service="inference",
        now=T0 + 9.0,
        deadline_s=10.0,
    )

    assert verdict == Verdict(
        done=True, ok=False, reason="not verified within 10 s: inference-1 not running yet"
    )


def test_describe_lists_kind_and_subject_of_each_action() -> None:
    actions = [action(ActionKind.RESTART, "inference-1"), action(ActionKind.ROLLBACK, SERVICE)]

    assert describe(actions) == "restart inference-1, rollback service"
