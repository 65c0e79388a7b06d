"""How far a release got: the stage of a rollout, for ``GET /api/rollout``, the status page's
release history and ``warden deploy --wait``.

The loop decides promotion (``agent.releases.bake_status``); this module only reads the same
inputs to say where a release is on its way: starting replicas, waiting for canaries, baking
(with time left), good, bad (reverted) or replaced by a later deploy before it was promoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.loop import Agent
from agent.releases import ReleaseRecord, ReleaseStatus, bake_status
from agent.rollout.controller import ACTIVE

STAGES = ("starting", "canaries", "baking", "good", "bad", "replaced")
FINAL_STAGES = frozenset({"good", "bad", "replaced"})


def rollout_document(agent: Agent, tag: str | None = None) -> dict[str, Any] | None:
    """The rollout of ``tag`` (default: the current release); None when the tag is unknown."""
    store = agent.store
    desired = store.desired()
    tag = tag or (desired.release if desired else None)
    record = store.release(tag) if tag else None
    if record is None:
        return None
    now = agent.clock.now()
    current = desired.release if desired else None
    doc: dict[str, Any] = {
        "release": record.tag,
        "status": record.status.value,
        "current_release": current,
        "created_at": record.created_at,
        "bake_s": agent.settings.bake_s,
        "baked_s": None,
        "bake_left_s": None,
        "replicas_on_release": 0,
        "replicas_ready": 0,
        "desired_replicas": desired.replicas if desired else 0,
        "reason": record.reason,
    }
    staged = agent.rollouts.store.history().get(record.tag) if agent.rollouts else None
    if staged is not None:
        doc["staged"] = staged.document()
    if staged is not None and staged.stage in ACTIVE:
        doc["stage"] = "staged"
        analysis = f" ({staged.analysis})" if staged.analysis and staged.stage == "traffic" else ""
        doc["reason"] = staged.status + analysis
        doc["traffic"] = _traffic(agent)
        return doc
    if record.status is not ReleaseStatus.CANDIDATE or record.tag != current:
        doc["stage"] = finished_stage(record, current)
        doc["reason"] = record.reason or _replaced_reason(record, current)
        return doc
    obs = agent.mem.last_observation
    views = [v for v in (obs.views if obs else ()) if v.replica.release == record.tag]
    ready = [v for v in views if v.ready is not None and v.ready.ok]
    doc["replicas_on_release"], doc["replicas_ready"] = len(views), len(ready)
    if len(ready) < doc["desired_replicas"] or not ready:
        doc["stage"] = "starting"
        doc["reason"] = f"{record.tag}: {len(ready)} of {doc['desired_replicas']} replicas ready"
        return doc
    firing = bool(agent.mem.last_firing)
    bake = bake_status(
        release=record,
        now=now,
        bake_s=agent.settings.bake_s,
        canaries_passing_since=agent.mem.canaries_passing_since,
        any_rule_firing=firing,
        rules_quiet_since=agent.mem.quiet_since,
    )
    doc["reason"] = bake.reason
    passing = agent.mem.canaries_passing_since
    if passing is None or firing:
        doc["stage"] = "canaries"
        return doc
    start = max(record.created_at, passing, agent.mem.quiet_since or 0.0)
    baked = min(agent.settings.bake_s, max(0.0, now - start))  # promotion waits for a tick
    doc.update(
        stage="baking",
        baked_s=round(baked, 1),
        bake_left_s=round(max(0.0, agent.settings.bake_s - baked), 1),
    )
    return doc


def _traffic(agent: Agent) -> dict[str, dict[str, Any]]:
    """HAProxy's view per replica: weight, state, requests and 5xx since it started."""
    balancer = agent.rollouts.balancer if agent.rollouts else None
    if balancer is None:
        return {}
    return {
        slot: {
            "weight": s.weight,
            "status": s.status,
            "requests": s.total,
            "responses_5xx": s.responses_5xx,
        }
        for slot, s in balancer.servers_by_slot().items()
    }


def finished_stage(record: ReleaseRecord, current: str | None) -> str:
    """The stage of a release that is not baking now."""
    if record.status is ReleaseStatus.GOOD:
        return "good"
    if record.status is ReleaseStatus.BAD:
        return "bad"
    return "replaced" if record.tag != current else "starting"


def _replaced_reason(record: ReleaseRecord, current: str | None) -> str:
    if record.status is ReleaseStatus.CANDIDATE and record.tag != current:
        return f"{record.tag} was replaced by {current} before it was promoted"
    return ""


def how_far(record: ReleaseRecord, current: str | None) -> str:
    """One phrase for the release history: how far this release got, and how long it took."""
    return how_far_text(
        status=record.status.value,
        created_at=record.created_at,
        promoted_at=record.promoted_at,
        marked_bad_at=record.marked_bad_at,
        current=record.tag == current,
    )


def how_far_text(
    *,
    status: str,
    created_at: float,
    promoted_at: float | None,
    marked_bad_at: float | None,
    current: bool,
) -> str:
    """``how_far`` from plain values (the CLI has the JSON of ``GET /api/releases``)."""
    if status == ReleaseStatus.GOOD and promoted_at is not None:
        return f"good after {_span(promoted_at - created_at)}"
    if status == ReleaseStatus.BAD and marked_bad_at is not None:
        return f"reverted after {_span(marked_bad_at - created_at)}"
    return "rolling out" if current else "replaced before promotion"


def staged_how_far(staged: Mapping[str, Any]) -> str:
    """How far a staged rollout got, from its document: "aborted at 10 %", "100 % (done)"."""
    furthest, stage = int(staged.get("furthest") or 0), str(staged.get("stage", ""))
    if stage in ("aborted", "aborting"):
        return f"aborted at {furthest} %" if furthest else "aborted before traffic"
    if stage in ("done", "retiring", "promoting"):
        return "staged to 100 %"
    if furthest:
        return f"staged, now {staged.get('share', furthest)} %"
    return f"staged, {stage}"


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
