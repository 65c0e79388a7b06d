"""Alerts out of a real agent: through a real Alertmanager, signed webhooks, Slack, retries.

``obs_stack`` kills the agent's replica with ``kill -9``; the agent's rule ``replica-exited``
fires, the replica is restarted, the rule resolves. Each receiver configured in the agent's
warden.yaml must get that alert (and its resolve): Alertmanager (API v2) -> Alertmanager's webhook;
the HMAC-signed webhook; Slack text; a receiver that was down when the alert fired; one that
answered 500 twice.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pytest

from agent.alerts import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from tests.integration.conftest_obs import RELEASE, WEBHOOK_SECRET, ObsStack
from tests.integration.obs_support import Received, Sink
from tests.integration.polling import wait_until
from tests.reliability import record

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

RULE = "replica-exited"
SUBJECT = "inference-1"
DELIVERY_TIMEOUT_S = 60.0  # the resolve waits for the restarted replica (model load)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _am_alerts(sink: Sink, status: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(notification, alert) pairs Alertmanager sent for the rule in ``status``."""
    found = []
    for item in sink.on("/alertmanager"):
        notification = item.json()
        for alert in notification["alerts"]:
            if alert["labels"].get("alertname") == RULE and alert["status"] == status:
                found.append((notification, alert))
    return found


def _webhook_alerts(sink: Sink, path: str, status: str) -> list[Received]:
    return [
        item
        for item in sink.on(path)
        if item.status == 200
        and item.json()["alert"]["name"] == RULE
        and item.json()["alert"]["status"] == status
    ]


def _wait(condition: Any, what: str, stack: ObsStack) -> None:
    wait_until(condition, timeout=DELIVERY_TIMEOUT_S, what=what, logs=stack.logs)


def test_agent_alert_reaches_alertmanager_webhook(obs_stack: ObsStack) -> None:
    _wait(lambda: _am_alerts(obs_stack.am_sink, "firing"), "the firing alert via Alertmanager",
          obs_stack)  # fmt: skip

    notification, alert = _am_alerts(obs_stack.am_sink, "firing")[0]
    assert notification["version"] == "4"
    assert notification["receiver"] == "sink"
    assert alert["labels"] == {
        "alertname": RULE,
        "service": "inference",
        "subject": SUBJECT,
        "severity": "critical",
        "release": RELEASE,
    }
    assert "inference-1" in alert["annotations"]["summary"]
    assert alert["generatorURL"] == f"{obs_stack.agent_url}/api/status"
    assert obs_stack.killed_at - 1 <= _ts(alert["startsAt"]) <= time.time()


def test_resolved_alert_reaches_alertmanager_webhook(obs_stack: ObsStack) -> None:
    _wait(lambda: _am_alerts(obs_stack.am_sink, "resolved"), "the resolve via Alertmanager",
          obs_stack)  # fmt: skip

    _, firing = _am_alerts(obs_stack.am_sink, "firing")[0]
    _, resolved = _am_alerts(obs_stack.am_sink, "resolved")[0]
    assert resolved["labels"] == firing["labels"]
    assert resolved["startsAt"] == firing["startsAt"]
    assert _ts(resolved["endsAt"]) > _ts(resolved["startsAt"])


def test_signed_webhook_verifies_with_the_shared_secret(obs_stack: ObsStack) -> None:
    _wait(lambda: _webhook_alerts(obs_stack.hook_sink, "/hook", "firing"),
          "the signed webhook", obs_stack)  # fmt: skip

    item = _webhook_alerts(obs_stack.hook_sink, "/hook", "firing")[0]
    timestamp = item.headers[TIMESTAMP_HEADER.lower()]
    signature = item.headers[SIGNATURE_HEADER.lower()]
    assert signature.startswith("sha256=")
    assert verify_signature(WEBHOOK_SECRET, timestamp, item.body, signature)
    assert not verify_signature("another-secret", timestamp, item.body, signature)
    assert not verify_signature(WEBHOOK_SECRET, str(int(timestamp) + 1), item.body, signature)
    assert not verify_signature(WEBHOOK_SECRET, timestamp, item.body + b" ", signature)
    assert abs(item.at - int(timestamp)) < 300  # the replay window documented in docs/alerts.md
    payload = json.loads(item.body)
    assert payload["version"] == "1"
    assert set(payload["alert"]) == {
        "name", "subject", "severity", "status", "summary", "starts_at", "ends_at",
        "service", "release", "labels", "generator_url",
    }  # fmt: skip
    assert payload["alert"]["subject"] == SUBJECT
    assert payload["alert"]["ends_at"] is None


def test_slack_receiver_gets_one_line_of_text(obs_stack: ObsStack) -> None:
    def texts() -> list[str]:
        return [str(item.json()["text"]) for item in obs_stack.hook_sink.on("/slack")]

    prefix = f":rotating_light: [CRITICAL] inference {RULE} on {SUBJECT}: "
    _wait(lambda: any(t.startswith(prefix) for t in texts()), "the Slack text", obs_stack)
    _wait(lambda: any(t.startswith(":white_check_mark: [RESOLVED]") for t in texts()),
          "the Slack resolve", obs_stack)  # fmt: skip


def test_receiver_that_was_down_gets_the_alert_after_it_comes_back(
    request: pytest.FixtureRequest, obs_stack: ObsStack
) -> None:
    assert obs_stack.late_failures_before_up >= 1  # it really was down when the alert fired
    _wait(lambda: _webhook_alerts(obs_stack.late_sink, "/late", "firing"),
          "the alert at the receiver that came back", obs_stack)  # fmt: skip
    _wait(lambda: _webhook_alerts(obs_stack.late_sink, "/late", "resolved"),
          "the resolve at the receiver that came back", obs_stack)  # fmt: skip

    firing = _webhook_alerts(obs_stack.late_sink, "/late", "firing")
    assert len(firing) == 1  # delivered once, not once per failed attempt
    assert firing[0].json()["alert"]["starts_at"] >= obs_stack.killed_at - 1
    record("receiver-down", lost="nothing", healthy_after_s=firing[0].at - obs_stack.killed_at,
           actions=0, test=request.node.nodeid, note="(alert delivered)")  # fmt: skip


def test_receiver_answering_500_is_retried_until_it_takes_the_alert(
    request: pytest.FixtureRequest, obs_stack: ObsStack
) -> None:
    for status in ("firing", "resolved"):
        _wait(lambda s=status: _webhook_alerts(obs_stack.flaky_sink, "/flaky", s),
              f"the {status} alert at the receiver that answered 500", obs_stack)  # fmt: skip

    attempts = [i for i in obs_stack.flaky_sink.on("/flaky") if i.json()["alert"]["name"] == RULE]
    failed = [item for item in attempts if item.status == 500]
    assert failed  # the sink answers the first two requests (of any alert) with 500
    for bad in failed:  # each refused alert came again, unchanged, after a backoff
        alert = bad.json()["alert"]
        retries = [item for item in attempts if item.json()["alert"] == alert and item.at > bad.at]
        assert retries, f"{alert['status']} alert was not retried"
        assert retries[0].at - bad.at >= 0.9  # backoff: 1 s after the first failure
    delivered = [item.json()["alert"]["status"] for item in attempts if item.status == 200]
    assert sorted(delivered) == ["firing", "resolved"]  # each exactly once
    first_ok = min(item.at for item in attempts if item.status == 200)
    record("receiver-500", lost="nothing", healthy_after_s=first_ok - obs_stack.killed_at,
           actions=0, test=request.node.nodeid, note="(alert delivered)")  # fmt: skip
