"""The status document: the same JSON for ``GET /api/status`` and ``warden status --json``."""

from __future__ import annotations

from typing import Any

from agent.loop import Agent
from agent.releases import ReleaseRecord
from agent.state_schema import ActionRecord, EventRecord


def status_document(agent: Agent) -> dict[str, Any]:
    """Current release, last-good, replicas, firing rules, flags and the action in flight."""
    store = agent.store
    desired = store.desired()
    last_good = store.last_good()
    obs = agent.mem.last_observation
    replicas = []
    for view in obs.views if obs is not None else ():
        r = view.replica
        res = view.resources
        replicas.append(
            {
                "id": r.id,
                "url": r.url,
                "state": r.state.value,
                "release": r.release,
                "pid": r.pid,
                "container_id": r.container_id,
                "started_at": r.started_at,
                "up": view.health.ok if view.health is not None else False,
                "ready": view.ready.ok if view.ready is not None else False,
                "reason": obs.reasons.get(r.id, "") if obs is not None else "",
                "canary_accuracy": view.canary.accuracy if view.canary is not None else None,
                "cpu_percent": res.cpu_percent if res else None,
                "memory_bytes": res.memory_bytes if res else None,
            }
        )
    current = store.release(desired.release) if desired else None
    return {
        "service": agent.settings.service,
        "backend": agent.backend.kind,
        "current_release": desired.release if desired else None,
        "current_release_status": current.status.value if current else None,
        "last_good_release": last_good.tag if last_good else None,
        "desired_replicas": desired.replicas if desired else 0,
        "replicas": replicas,
        "firing": [
            {
                "rule": f.rule,
                "subject": f.subject,
                "severity": f.severity,
                "value": f.value,
                "since": f.since,
                "reason": f.reason,
            }
            for f in agent.mem.last_firing
        ],
        "frozen": bool(desired and desired.frozen),
        "maintenance": bool(desired and desired.maintenance),
        "dry_run": agent.settings.policy.dry_run,
        "in_flight": [action_json(a) for a in store.pending_actions()],
        "rules_problems": list(agent.mem.rules_problems),
        "engine_problem": agent.mem.engine_problem or None,
        "service_signals": dict(obs.signals.get("service", {})) if obs is not None else {},
        "observed_at": obs.at if obs is not None else None,
        "rollout": _rollout(agent),
    }


def _rollout(agent: Agent) -> dict[str, Any] | None:
    """The staged rollout in progress (``agent.rollout``), with the candidate's share; or None."""
    current = agent.rollouts.current() if agent.rollouts is not None else None
    return None if current is None else current.document()


def release_json(r: ReleaseRecord) -> dict[str, Any]:
    return {
        "tag": r.tag,
        "status": r.status.value,
        "created_at": r.created_at,
        "promoted_at": r.promoted_at,
        "marked_bad_at": r.marked_bad_at,
        "reason": r.reason,
        "model": r.spec.model,
        "image": r.spec.image,
        "task": r.spec.task,
    }


def action_json(a: ActionRecord) -> dict[str, Any]:
    return {
        "id": a.id,
        "at": a.at,
        "rule": a.rule,
        "subject": a.subject,
        "kind": a.kind.value,
        "target": a.target,
        "reason": a.reason,
        "status": a.status.value,
        "started_at": a.started_at,
        "finished_at": a.finished_at,
        "result": a.result,
    }


def event_json(e: EventRecord) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at,
        "kind": e.kind,
        "subject": e.subject,
        "message": e.message,
        "data": dict(e.data),
    }
