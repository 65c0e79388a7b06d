"""Alerts: payload shapes, webhook signatures, retry backoff, delivery results and the outbox."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx

from agent.alerts import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Alert,
    Receiver,
    alert_from_dict,
    alert_to_dict,
    alertmanager_body,
    backoff_s,
    build_request,
    deliver,
    enqueue,
    sign,
    slack_body,
    verify_signature,
    webhook_body,
)
from agent.state import StateStore

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z

FIRING = Alert(
    name="latency-p95",
    subject="service",
    severity="warning",
    status="firing",
    summary="p95 183 ms > 100 ms for 30 s (rule latency-p95)",
    starts_at=T0,
    release="v2",
    generator_url="http://127.0.0.1:9400/api/status",
)
RESOLVED = Alert(
    name="replica-exited",
    subject="inference-1",
    severity="critical",
    status="resolved",
    summary="replica-exited on inference-1 resolved",
    starts_at=T0,
    ends_at=T0 + 90.5,
)
WEBHOOK = Receiver(name="hook", kind="webhook", url="http://hooks.example/warden", secret="s3cret")


class RecordingOutbox:
    """An Outbox that records every ``enqueue_alert`` call."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any], str, float]] = []

    def enqueue_alert(
        self, receiver: str, payload: dict[str, Any], dedupe_key: str, now: float = 0.0
    ) -> None:
        self.rows.append((receiver, payload, dedupe_key, now))


class Endpoint:
    """A MockTransport handler answering ``status`` and recording each request."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json={})


def test_alertmanager_body_is_one_v2_postable_alert() -> None:
    assert alertmanager_body(FIRING) == [
        {
            "labels": {
                "alertname": "latency-p95",
                "service": "inference",
                "subject": "service",
                "severity": "warning",
                "release": "v2",
            },
            "annotations": {"summary": "p95 183 ms > 100 ms for 30 s (rule latency-p95)"},
            "startsAt": "2023-11-14T22:13:20Z",
            "generatorURL": "http://127.0.0.1:9400/api/status",
        }
    ]


def test_alertmanager_body_of_a_resolved_alert_has_ends_at() -> None:
    [item] = alertmanager_body(RESOLVED)

    assert (item["startsAt"], item["endsAt"]) == (
        "2023-11-14T22:13:20Z",
        "2023-11-14T22:14:50.500000Z",
    )
    assert "release" not in item["labels"]
    assert "generatorURL" not in item


def test_alertmanager_body_keeps_extra_labels() -> None:
    alert = Alert(
        name="x", subject="service", severity="info", status="firing", summary="s",
        starts_at=T0, labels={"team": "ml"},
    )  # fmt: skip

    [item] = alertmanager_body(alert)

    assert item["labels"]["team"] == "ml"


def test_webhook_body_is_schema_version_1_with_the_alert() -> None:
    assert webhook_body(RESOLVED, sent_at=T0 + 91.0) == {
        "version": "1",
        "sent_at": T0 + 91.0,
        "alert": {
            "name": "replica-exited",
            "subject": "inference-1",
            "severity": "critical",
            "status": "resolved",
            "summary": "replica-exited on inference-1 resolved",
            "starts_at": T0,
            "ends_at": T0 + 90.5,
            "service": "inference",
            "release": "",
            "labels": {},
            "generator_url": "",
        },
    }


def test_an_alert_survives_the_outbox_round_trip() -> None:
    assert alert_from_dict(json.loads(json.dumps(alert_to_dict(FIRING)))) == FIRING


def test_slack_text_of_a_firing_alert_names_severity_service_rule_and_subject() -> None:
    assert slack_body(FIRING) == {
        "text": ":rotating_light: [WARNING] inference latency-p95 on service: "
        "p95 183 ms > 100 ms for 30 s (rule latency-p95)"
    }


def test_slack_text_of_a_resolved_alert_says_resolved() -> None:
    assert slack_body(RESOLVED) == {
        "text": ":white_check_mark: [RESOLVED] inference replica-exited on inference-1: "
        "replica-exited on inference-1 resolved"
    }


def test_signed_webhook_request_verifies_with_the_right_secret() -> None:
    url, body, headers = build_request(WEBHOOK, FIRING, now=T0 + 0.7)

    assert url == "http://hooks.example/warden"
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    assert verify_signature("s3cret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])


def test_signature_does_not_verify_with_a_wrong_secret() -> None:
    _, body, headers = build_request(WEBHOOK, FIRING, now=T0)

    ok = verify_signature("guess", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])

    assert ok is False


def test_signature_does_not_verify_a_tampered_body() -> None:
    _, body, headers = build_request(WEBHOOK, FIRING, now=T0)
    tampered = body.replace(b'"warning"', b'"info"')

    ok = verify_signature("s3cret", headers[TIMESTAMP_HEADER], tampered, headers[SIGNATURE_HEADER])

    assert tampered != body
    assert ok is False


def test_signature_does_not_verify_a_replayed_body_with_another_timestamp() -> None:
    _, body, headers = build_request(WEBHOOK, FIRING, now=T0)

    ok = verify_signature("s3cret", "1700000999", body, headers[SIGNATURE_HEADER])

    assert ok is False


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(b"key", b"1.{}", hashlib.sha256).hexdigest()

    assert sign("key", "1", b"{}") == f"sha256={expected}"


def test_unsigned_webhook_has_no_signature_headers() -> None:
    receiver = Receiver(name="hook", kind="webhook", url="http://hooks.example/warden")

    _, body, headers = build_request(receiver, FIRING, now=T0)

    assert headers == {"Content-Type": "application/json"}
    assert json.loads(body) == webhook_body(FIRING, T0)


def test_alertmanager_request_posts_to_the_v2_alerts_path() -> None:
    receiver = Receiver(name="am", kind="alertmanager", url="http://alertmanager:9093/")

    url, body, _ = build_request(receiver, FIRING, now=T0)

    assert url == "http://alertmanager:9093/api/v2/alerts"
    assert json.loads(body) == alertmanager_body(FIRING)


def test_backoff_doubles_from_one_second_and_is_capped_at_five_minutes() -> None:
    assert [backoff_s(n) for n in range(1, 12)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0,
    ]  # fmt: skip


def test_deliver_returns_empty_when_the_receiver_accepts() -> None:
    endpoint = Endpoint(200)
    client = httpx.Client(transport=httpx.MockTransport(endpoint))

    error = deliver(client, WEBHOOK, FIRING, now=T0)

    assert error == ""
    [request] = endpoint.requests
    assert (request.method, str(request.url)) == ("POST", "http://hooks.example/warden")
    assert verify_signature(
        "s3cret", request.headers[TIMESTAMP_HEADER], request.content,
        request.headers[SIGNATURE_HEADER],
    )  # fmt: skip


def test_deliver_returns_the_status_when_the_receiver_fails() -> None:
    client = httpx.Client(transport=httpx.MockTransport(Endpoint(500)))

    error = deliver(client, WEBHOOK, FIRING, now=T0)

    assert error == "HTTP 500 from http://hooks.example/warden"


def test_deliver_returns_the_connection_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(refuse))

    error = deliver(client, WEBHOOK, FIRING, now=T0)

    assert error == "ConnectError: [Errno 111] Connection refused"


def test_enqueue_writes_one_row_per_receiver() -> None:
    outbox = RecordingOutbox()
    receivers = [WEBHOOK, Receiver(name="am", kind="alertmanager", url="http://am:9093")]

    enqueue(outbox, receivers, FIRING, T0)

    assert outbox.rows == [
        ("hook", alert_to_dict(FIRING), "hook:latency-p95/service:firing:1700000000.0", T0),
        ("am", alert_to_dict(FIRING), "am:latency-p95/service:firing:1700000000.0", T0),
    ]


def test_enqueue_into_the_state_store_dedupes_the_same_state_change_per_receiver(
    tmp_path: Path,
) -> None:
    receivers = [WEBHOOK, Receiver(name="am", kind="alertmanager", url="http://am:9093")]
    with StateStore(tmp_path) as store:
        enqueue(store, receivers, FIRING, T0)
        enqueue(store, receivers, FIRING, T0)  # the same tick replayed after a crash

        rows = store.due_alerts(now=T0)

    assert [(r.receiver, r.payload["status"]) for r in rows] == [
        ("hook", "firing"),
        ("am", "firing"),
    ]


def test_enqueue_keeps_firing_and_resolved_apart(tmp_path: Path) -> None:
    resolved = Alert(
        name=FIRING.name, subject=FIRING.subject, severity=FIRING.severity, status="resolved",
        summary="resolved", starts_at=FIRING.starts_at, ends_at=T0 + 60.0,
    )  # fmt: skip
    with StateStore(tmp_path) as store:
        enqueue(store, [WEBHOOK], FIRING, T0)
        enqueue(store, [WEBHOOK], resolved, T0)

        rows = store.due_alerts(now=T0)

    assert [(r.receiver, r.payload["status"]) for r in rows] == [
        ("hook", "firing"),
        ("hook", "resolved"),
    ]
