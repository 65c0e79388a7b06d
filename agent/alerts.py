"""Alerts out of the agent: payloads for Alertmanager, signed JSON webhooks and Slack.

Alerts go through the persisted outbox (``StateStore``): ``enqueue`` writes one row per receiver,
``deliver_due`` sends what is due and reschedules failures with exponential backoff. An alert is
never lost to an agent restart or a receiver outage; it is retried until the receiver takes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Warden-Signature"
TIMESTAMP_HEADER = "X-Warden-Timestamp"
MAX_BACKOFF_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert state change (firing or resolved) about a rule on a subject."""

    name: str  # the rule name, or "warden-frozen", "budget-exhausted"...
    subject: str
    severity: str
    status: str  # "firing" | "resolved"
    summary: str  # the one-sentence reason
    starts_at: float
    ends_at: float | None = None
    service: str = "inference"
    release: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    generator_url: str = ""

    @property
    def fingerprint(self) -> str:
        return f"{self.name}/{self.subject}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Receiver:
    name: str
    kind: str  # "alertmanager" | "webhook" | "slack"
    url: str
    secret: str | None = None
    timeout_s: float = 5.0
    generator_url: str = ""  # Alertmanager's "generatorURL" when the alert carries none


class Outbox(Protocol):
    """The part of the state store the alert sender needs."""

    def enqueue_alert(
        self, receiver: str, payload: dict[str, Any], dedupe_key: str, now: float = 0.0
    ) -> None: ...


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def alert_to_dict(alert: Alert) -> dict[str, Any]:
    """The documented JSON shape of an alert (webhook payload ``alert`` field, outbox rows)."""
    return {
        "name": alert.name,
        "subject": alert.subject,
        "severity": alert.severity,
        "status": alert.status,
        "summary": alert.summary,
        "starts_at": alert.starts_at,
        "ends_at": alert.ends_at,
        "service": alert.service,
        "release": alert.release,
        "labels": dict(alert.labels),
        "generator_url": alert.generator_url,
    }


def alert_from_dict(data: Mapping[str, Any]) -> Alert:
    return Alert(
        name=str(data["name"]),
        subject=str(data["subject"]),
        severity=str(data["severity"]),
        status=str(data["status"]),
        summary=str(data["summary"]),
        starts_at=float(data["starts_at"]),
        ends_at=None if data.get("ends_at") is None else float(data["ends_at"]),
        service=str(data.get("service", "inference")),
        release=str(data.get("release", "")),
        labels={str(k): str(v) for k, v in dict(data.get("labels", {})).items()},
        generator_url=str(data.get("generator_url", "")),
    )


def alertmanager_body(alert: Alert, *, generator_url: str = "") -> list[dict[str, Any]]:
    """Alertmanager API v2 ``POST /api/v2/alerts`` body (a list of one postable alert).

    ``generator_url`` links back to the agent when the alert has no link of its own."""
    labels = {
        "alertname": alert.name,
        "service": alert.service,
        "subject": alert.subject,
        "severity": alert.severity,
        **dict(alert.labels),
    }
    if alert.release:
        labels["release"] = alert.release
    item: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": alert.summary},
        "startsAt": _iso(alert.starts_at),
    }
    if alert.ends_at is not None:
        item["endsAt"] = _iso(alert.ends_at)
    if alert.generator_url or generator_url:
        item["generatorURL"] = alert.generator_url or generator_url
    return [item]


def webhook_body(alert: Alert, sent_at: float) -> dict[str, Any]:
    """Generic webhook body, schema version 1 (docs/alerts.md)."""
    return {"version": "1", "sent_at": sent_at, "alert": alert_to_dict(alert)}


def slack_body(alert: Alert) -> dict[str, Any]:
    """Slack-compatible incoming-webhook body."""
    icon = ":white_check_mark:" if alert.status == "resolved" else ":rotating_light:"
    word = "RESOLVED" if alert.status == "resolved" else alert.severity.upper()
    return {
        "text": f"{icon} [{word}] {alert.service} {alert.name} on {alert.subject}: {alert.summary}"
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>`` HMAC of ``timestamp + "." + body``; the timestamp defeats replays."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does: constant-time compare of the expected signature."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def build_request(
    receiver: Receiver, alert: Alert, now: float
) -> tuple[str, bytes, dict[str, str]]:
    """URL, body and headers for delivering ``alert`` to ``receiver``."""
    headers = {"Content-Type": "application/json"}
    if receiver.kind == "alertmanager":
        url = receiver.url.rstrip("/") + "/api/v2/alerts"
        body = json.dumps(alertmanager_body(alert, generator_url=receiver.generator_url)).encode()
    elif receiver.kind == "slack":
        url, body = receiver.url, json.dumps(slack_body(alert)).encode()
    else:
        url, body = receiver.url, json.dumps(webhook_body(alert, now)).encode()
        if receiver.secret:
            ts = str(int(now))
            headers[TIMESTAMP_HEADER] = ts
            headers[SIGNATURE_HEADER] = sign(receiver.secret, ts, body)
    return url, body, headers


def receivers_from_config(alerts: Sequence[Any], *, generator_url: str = "") -> list[Receiver]:
    """Receivers from ``warden.yaml``'s ``alerts`` list; secrets come from the environment.
    ``generator_url`` (the agent's status page) is the Alertmanager alerts' link back."""
    out: list[Receiver] = []
    for i, a in enumerate(alerts):
        secret_env = getattr(a, "secret_env", None)
        out.append(
            Receiver(
                name=f"{a.kind}-{i + 1}",
                kind=a.kind,
                url=a.url,
                secret=os.environ.get(secret_env) if secret_env else None,
                timeout_s=float(getattr(a, "timeout_s", 5.0)),
                generator_url=generator_url,
            )
        )
    return out


def enqueue(outbox: Outbox, receivers: Sequence[Receiver], alert: Alert, now: float) -> None:
    """Write ``alert`` to the outbox once per receiver (deduplicated on state change)."""
    for receiver in receivers:
        key = f"{receiver.name}:{alert.fingerprint}:{alert.status}:{alert.starts_at}"
        outbox.enqueue_alert(receiver.name, alert_to_dict(alert), key, now)


def backoff_s(attempts: int) -> float:
    """Seconds before retry number ``attempts`` (1, 2, 4 … capped at 5 minutes)."""
    return float(min(MAX_BACKOFF_S, 2 ** max(0, attempts - 1)))


def deliver(client: httpx.Client, receiver: Receiver, alert: Alert, now: float) -> str:
    """Send one alert. Returns "" on success, else the reason it failed (never raises)."""
    url, body, headers = build_request(receiver, alert, now)
    try:
        resp = client.post(url, content=body, headers=headers, timeout=receiver.timeout_s)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if resp.status_code >= 300:
        return f"HTTP {resp.status_code} from {url}"
    return ""
