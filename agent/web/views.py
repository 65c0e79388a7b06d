"""What the status page shows, as plain values ready for the template (formatting happens here,
once, so the template only lays things out and escapes them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.domain import SERVICE
from agent.history import SignalHistory
from agent.loop import Agent
from agent.state_schema import ActionRecord, ActionStatus
from agent.status import status_document
from agent.web.charts import build_charts
from agent.web.rollout import how_far, rollout_document

TIMELINE_LENGTH = 25
_STATUS_CLASS = {
    ActionStatus.VERIFIED: "ok",
    ActionStatus.PENDING: "warn",
    ActionStatus.APPLIED: "warn",
    ActionStatus.FAILED: "bad",
    ActionStatus.ROLLED_BACK: "bad",
    ActionStatus.CANCELLED: "muted",
}


def page_context(agent: Agent, history: SignalHistory) -> dict[str, Any]:
    """Everything the page's panels show, read from the agent's memory and state store."""
    now = agent.clock.now()
    doc = status_document(agent)
    obs = agent.mem.last_observation
    signals = obs.signals if obs is not None else {}
    service = signals.get(SERVICE, {})
    charts, no_data = build_charts(history)
    current = doc["current_release"]
    return {
        "doc": doc,
        "observed": stamp(doc["observed_at"]),
        "summary": {
            "p95": _ms(service.get("latency_p95_ms")),
            "error_rate": _percent(service.get("error_rate")),
            "throughput": _rps(service.get("throughput_rps")),
            "ready": f"{int(service.get('replicas_ready', 0))} of {doc['desired_replicas']}",
        },
        "rollout": rollout_document(agent),
        "replicas": [_replica(r, signals.get(r["id"], {}), service, now) for r in doc["replicas"]],
        "firing": [
            {**f, "since_text": ago(now - f["since"]) if f["since"] else "-"} for f in doc["firing"]
        ],
        "timeline": [_action(a) for a in agent.store.actions(limit=TIMELINE_LENGTH)],
        "releases": [
            {
                "tag": r.tag,
                "status": r.status.value,
                "how_far": how_far(r, current),
                "deployed": stamp(r.created_at),
                "reason": r.reason,
                "current": r.tag == current,
                "last_good": r.tag == doc["last_good_release"],
            }
            for r in agent.store.releases()
        ],
        "charts": charts,
        "no_data": no_data,
    }


def _replica(
    r: dict[str, Any], own: dict[str, float], service: dict[str, float], now: float
) -> dict[str, Any]:
    if r["state"] != "running":
        state, css = r["state"], "bad"
    elif not r["up"]:
        state, css = "down", "bad"
    elif not r["ready"]:
        state, css = "not ready", "warn"
    else:
        state, css = "ready", "ok"
    # Latency and errors are measured per service today; a replica shows its own when the
    # observer reports them per replica, else the service's (marked so nobody is misled).
    per_replica = "latency_p95_ms" in own
    source = own if per_replica else service
    return {
        **r,
        "state_text": state,
        "state_class": css,
        "uptime": ago(now - r["started_at"])
        if r["started_at"] and r["state"] == "running"
        else "-",
        "cpu": "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.0f}%",
        "memory": "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 2**20:.0f} MiB",
        "p95": _ms(source.get("latency_p95_ms")),
        "error_rate": _percent(source.get("error_rate")),
        "service_wide": not per_replica,
        "canary": _percent(r["canary_accuracy"]),
    }


def _action(a: ActionRecord) -> dict[str, Any]:
    recovered = None
    if a.status is ActionStatus.VERIFIED and a.finished_at is not None:
        recovered = seconds(a.finished_at - a.at)
    return {
        "id": a.id,
        "when": stamp(a.at),
        "rule": a.rule,
        "kind": a.kind.value,
        "subject": a.subject,
        "target": a.target,
        "reason": a.reason,
        "status": a.status.value.replace("_", " "),
        "status_class": _STATUS_CLASS.get(a.status, "muted"),
        "result": a.result,
        "recovered_in": recovered,
    }


def stamp(at: float | None) -> dict[str, str] | None:
    """A time as ISO 8601 (the page's script shows it in the reader's zone) and UTC text."""
    if at is None:
        return None
    when = datetime.fromtimestamp(at, tz=UTC)
    return {"iso": when.isoformat(timespec="seconds"), "text": when.strftime("%H:%M:%S UTC")}


def ago(seconds_: float) -> str:
    s = max(0, int(seconds_))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else ago(value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.0f}%" if value == 0 or value >= 0.01 else f"{value * 100:.2f}%"


def _rps(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"
