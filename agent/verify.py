"""Verify: did the action in flight work? A pure check of this tick's observation.

An action is verified when the replicas it touched run what the desired state says and are
ready (for a rollback: and their canaries pass); it has failed when its deadline passes first.
Failure is reported to the policy, which escalates to the next rung instead of repeating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.domain import SERVICE, ActionKind
from agent.observe import Observation, ReplicaView
from agent.state_schema import ActionRecord, DesiredState


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    done: bool  # False: still waiting
    ok: bool = False
    reason: str = ""


def _slots_for(action: ActionRecord, desired: DesiredState, service: str) -> list[str]:
    every = [f"{service}-{i}" for i in range(1, desired.replicas + 1)]
    if action.kind is ActionKind.RESTART and action.subject != SERVICE:
        return [action.subject]
    return every


def _replica_ok(view: ReplicaView | None, desired: DesiredState, canaries: bool) -> str:
    """Empty when the replica is verified, else what is still missing."""
    if view is None:
        return "not running yet"
    r = view.replica
    if r.release != desired.release:
        return f"runs {r.release}, not {desired.release}"
    if r.generation != desired.generations.get(r.id, 0):
        return "not restarted yet"
    if view.ready is None or not view.ready.ok:
        return "not ready"
    if canaries and view.canary is not None and view.canary.failures:
        return f"{view.canary.failures} canaries failing"
    if canaries and view.canary is None:
        return "canaries not checked yet"
    return ""


def check(
    *,
    action: ActionRecord,
    desired: DesiredState,
    observation: Observation,
    service: str,
    now: float,
    deadline_s: float,
) -> Verdict:
    """Verdict on ``action`` from this tick's ``observation``."""
    canaries = action.kind is ActionKind.ROLLBACK
    missing = []
    for slot in _slots_for(action, desired, service):
        why = _replica_ok(observation.view(slot), desired, canaries)
        if why:
            missing.append(f"{slot} {why}")
    started = action.started_at if action.started_at is not None else action.at
    if not missing:
        took = now - started
        return Verdict(done=True, ok=True, reason=f"verified in {took:.1f} s")
    if now - started >= deadline_s:
        return Verdict(
            done=True,
            ok=False,
            reason=f"not verified within {deadline_s:.0f} s: " + "; ".join(missing),
        )
    return Verdict(done=False, reason="; ".join(missing))


def describe(actions: Sequence[ActionRecord]) -> str:
    return ", ".join(f"{a.kind.value} {a.subject}" for a in actions)
