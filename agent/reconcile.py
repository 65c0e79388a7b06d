"""Make the engine match the desired state with the smallest idempotent change.

Decisions never poke the engine: they change the persisted desired state (release, replica count,
a per-slot generation that forces a restart). ``plan`` compares that with what the backend reports
and returns the steps; ``apply`` runs them. Running the same plan twice does nothing the second
time, which is what makes the agent safe to kill -9 at any moment: on start it reconciles again.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from agent.backends.base import Backend, ReleaseSpec
from agent.domain import Replica, ReplicaState
from agent.errors import BackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Desired:
    """What should be running: one release on ``replicas`` slots, each at its generation."""

    release: ReleaseSpec
    replicas: int
    generations: Mapping[str, int]
    # Slots outside the numbered ones, each with its own release: a staged rollout's candidates.
    extra: Mapping[str, ReleaseSpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    kind: str  # "start" | "replace" | "stop"
    slot: str
    reason: str


def slot_name(service: str, index: int) -> str:
    """Replica slots are numbered from 1: ``inference-1``, ``inference-2``..."""
    return f"{service}-{index}"


def plan(
    *,
    service: str,
    desired: Desired,
    replicas: Sequence[Replica],
    ready: Collection[str],
) -> list[Step]:
    """The steps that turn ``replicas`` into ``desired``.

    Replacements roll: a serving (ready) slot is replaced only while every other desired slot is
    ready, one at a time, so a release change never takes the whole service down at once. A slot
    that is not ready is replaced at once: it serves nobody.
    A replica stopped on purpose (``STOPPED``) is left alone.
    """
    by_slot = {r.id: r for r in replicas}
    wanted = [slot_name(service, i) for i in range(1, desired.replicas + 1)]
    wanted += [slot for slot in desired.extra if slot not in wanted]
    steps: list[Step] = []
    replacing = 0
    for slot in wanted:
        current = by_slot.get(slot)
        generation = desired.generations.get(slot, 0)
        release = desired.extra.get(slot, desired.release).tag
        if current is None or current.state is ReplicaState.MISSING:
            steps.append(Step(kind="start", slot=slot, reason="desired slot has no replica"))
            continue
        if current.state is ReplicaState.STOPPED and slot not in desired.extra:
            continue  # stopped by a person; the agent's own extra slots it starts again
        why = _replace_reason(current, release, generation)
        if not why and slot in desired.extra and current.state in _GONE:
            # no rule watches a rollout's candidate slots: the reconciler brings them back
            why = f"extra slot is {current.state.value}"
        if not why:
            continue
        if slot not in ready:  # not serving anyway: replacing it costs nothing
            steps.append(Step(kind="replace", slot=slot, reason=why))
            continue
        # the service's own slots: a candidate slot that is down must not hold them back
        others_ready = all(s in ready for s in wanted if s != slot and s not in desired.extra)
        if replacing == 0 and others_ready:
            steps.append(Step(kind="replace", slot=slot, reason=why))
            replacing += 1
    steps.extend(
        Step(kind="stop", slot=r.id, reason=f"scale in to {desired.replicas}")
        for r in replicas
        if r.id not in wanted and r.state is not ReplicaState.STOPPED
    )
    return steps


_GONE = (ReplicaState.STOPPED, ReplicaState.EXITED)


def _replace_reason(current: Replica, release: str, generation: int) -> str:
    if current.release != release:
        return f"runs {current.release}, desired {release}"
    if current.generation != generation:
        return f"generation {current.generation} -> {generation} (restart requested)"
    return ""


def apply(backend: Backend, desired: Desired, steps: Sequence[Step]) -> list[str]:
    """Run ``steps`` against ``backend``; return one line per failed step (empty = all done).

    A failed step is reported, not raised: the next tick plans again from what is really there.
    """
    failures: list[str] = []
    for step in steps:
        try:
            if step.kind == "stop":
                backend.stop_replica(step.slot)
            else:
                backend.start_replica(
                    step.slot,
                    desired.extra.get(step.slot, desired.release),
                    desired.generations.get(step.slot, 0),
                )
            log.info("reconcile: %s %s (%s)", step.kind, step.slot, step.reason)
        except BackendError as exc:
            failures.append(f"{step.kind} {step.slot} failed: {exc}")
            log.warning("reconcile: %s %s failed: %s", step.kind, step.slot, exc)
    return failures
