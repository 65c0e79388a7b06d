"""The agent API's security promises, each proven on its own: loopback by default, named bearer
tokens compared in constant time, the audit log's ``by``, refusing an open bind without a token,
secrets only from the environment or files, and the receiver's timestamp window for webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from agent import api as api_module
from agent.alerts import SIGNATURE_HEADER, TIMESTAMP_HEADER, Receiver, build_request
from agent.api import create_api
from agent.app import Runtime, named_tokens
from agent.audit import AuditLog, acting_as
from agent.backends.base import ReleaseSpec
from agent.body_limit import MAX_BODY_BYTES
from agent.config import WardenConfig, load_config
from agent.errors import ConfigError, WardenError
from agent.loop import Agent
from tests.unit.test_alerts import FIRING
from tests.unit.test_api import T0, fake_agent

REPO = Path(__file__).resolve().parents[2]
DEFAULT = "default-secret-token"
OPS = "ops-secret-token"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with fake_agent(tmp_path) as built:
        yield built


def api(agent: Agent, **kwargs: Any) -> TestClient:
    return TestClient(create_api(agent, **{"token": DEFAULT, "tokens": {"ops": OPS}, **kwargs}))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def manual_records(agent: Agent) -> list[tuple[str, str | None]]:
    kinds = ("deploy", "rollback", "flags")
    return [(r["kind"], r.get("by")) for r in agent.audit.read() if r["kind"] in kinds]


# --- binding ---------------------------------------------------------------------------------


def test_the_api_binds_to_loopback_by_default_with_reads_open() -> None:
    api_settings = WardenConfig().api

    assert (api_settings.host, api_settings.port, api_settings.read_open) == (
        "127.0.0.1",
        9400,
        True,
    )


@pytest.mark.parametrize("bind", ["0.0.0.0:9400", "[::]:9400", "192.0.2.7:9400"])
def test_the_agent_refuses_to_serve_off_loopback_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bind: str
) -> None:
    config = tmp_path / "warden.yaml"
    config.write_text(f'api: {{bind: "{bind}"}}\n', encoding="utf-8")
    cfg = load_config(config)

    with pytest.raises(WardenError) as refused:
        Runtime(cast(Agent, object()), cfg, token=None)

    assert str(refused.value) == (
        f"refusing to serve the API on {bind} (not loopback) without a token; set WARDEN_TOKEN"
    )


# --- named tokens ----------------------------------------------------------------------------


def config_with_tokens(tmp_path: Path, tokens: str) -> WardenConfig:
    config = tmp_path / "warden.yaml"
    config.write_text(f"api:\n  tokens: {tokens}\n", encoding="utf-8")
    return load_config(config)


def test_named_tokens_come_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ci-token").write_text("ci-secret\n", encoding="utf-8")
    monkeypatch.setenv("WARDEN_OPS_TOKEN", OPS)
    cfg = config_with_tokens(
        tmp_path, "[{name: ops, env: WARDEN_OPS_TOKEN}, {name: ci, file: ci-token}]"
    )

    assert named_tokens(cfg) == {"ops": OPS, "ci": "ci-secret"}


def test_a_named_token_without_its_secret_stops_the_agent_saying_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WARDEN_OPS_TOKEN", raising=False)
    cfg = config_with_tokens(
        tmp_path, "[{name: ops, env: WARDEN_OPS_TOKEN}, {name: ci, file: missing-token}]"
    )

    with pytest.raises(ConfigError) as stopped:
        named_tokens(cfg)

    assert stopped.value.problems == [
        "api.tokens[0] (ops): no secret in $WARDEN_OPS_TOKEN",
        f"api.tokens[1] (ci): no secret in {tmp_path / 'missing-token'} "
        "(No such file or directory)",
    ]


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        (
            "[{name: ops}]",
            "api.tokens[0]: give the secret's source as exactly one of env: or file:",
        ),
        (
            "[{name: ops, env: A, file: b}]",
            "api.tokens[0]: give the secret's source as exactly one of env: or file:",
        ),
        (
            "[{name: ops, env: A}, {name: ops, env: B}]",
            "api.tokens: token names must be unique; ops is used twice",
        ),
        (
            '[{name: "a b", env: A}]',
            'api.tokens[0].name: use letters, digits, "_", "." and "-"; got "a b"',
        ),
        (
            "[{name: ops, env: 'not a name'}]",
            "api.tokens[0].env: expected an environment variable name like WARDEN_TOKEN; "
            'got "not a name"',
        ),
        (
            "[{name: default, env: A}]",
            'api.tokens: "default" is the name of the token_env token; choose another name',
        ),
        (
            "[{name: ops, secret: hunter2}]",
            "api.tokens[0].secret: unknown key",
        ),
    ],
)
def test_bad_token_entries_are_reported_with_file_and_line(
    tmp_path: Path, tokens: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as bad:
        config_with_tokens(tmp_path, tokens)

    assert any(p.startswith(f"{tmp_path / 'warden.yaml'}:2: {problem}") for p in bad.value.problems)


def test_a_named_token_may_act_and_the_audit_log_records_its_name(agent: Agent) -> None:
    client = api(agent)

    responses = [
        client.post("/api/deploy", json={"tag": "v2"}, headers=bearer(OPS)),
        client.post("/api/maintenance", json={"on": True}, headers=bearer(DEFAULT)),
        client.post("/api/freeze", json={"on": True}, headers=bearer(OPS)),
    ]

    assert [r.status_code for r in responses] == [202, 200, 200]
    assert manual_records(agent) == [("deploy", "ops"), ("flags", "default"), ("flags", "ops")]


def test_a_rollback_records_who_asked(agent: Agent) -> None:
    agent.store.add_release(ReleaseSpec(tag="v0"), T0)
    agent.store.mark_good("v0", T0, "baked")
    client = api(agent, token=None)

    response = client.post("/api/rollback", json={"to": "v0"}, headers=bearer(OPS))

    assert response.status_code == 202, response.text
    assert manual_records(agent) == [("rollback", "ops")]


def test_records_outside_a_request_name_nobody(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    with acting_as("ops"):
        log.write({"ts": T0, "kind": "flags"})
    log.write({"ts": T0, "kind": "decision"})

    assert [r.get("by") for r in log.read()] == ["ops", None]


def test_only_named_tokens_are_enough_to_act(agent: Agent) -> None:
    client = api(agent, token=None)

    ok = client.post("/api/freeze", json={"on": True}, headers=bearer(OPS))
    old = client.post("/api/freeze", json={"on": True}, headers=bearer(DEFAULT))

    assert (ok.status_code, old.status_code) == (200, 401)


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        OPS,
        f"Basic {OPS}",
        f"Bearer {OPS} ",
        f"Bearer {OPS[:-1]}",
        f"Bearer {OPS}x",
        f"Bearer {OPS.upper()}",
        "Bearer ",
    ],
)
def test_anything_but_the_exact_bearer_token_is_refused_without_echoing_it(
    agent: Agent, authorization: str
) -> None:
    response = api(agent).post(
        "/api/freeze", json={"on": True}, headers={"Authorization": authorization}
    )

    assert response.status_code == 401
    assert response.json() == {"detail": "missing or wrong bearer token"}
    assert response.headers["www-authenticate"] == "Bearer"
    assert OPS not in response.text and DEFAULT not in response.text
    assert not agent.store.desired() or not agent.store.desired().frozen  # type: ignore[union-attr]


def test_every_token_is_compared_in_constant_time(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []

    original = hmac.compare_digest

    def recording_compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(api_module.hmac, "compare_digest", recording_compare_digest)
    client = api(agent)

    client.post("/api/freeze", json={"on": True}, headers=bearer(DEFAULT))

    # the match on the first token does not stop the comparison with the second
    assert sorted(b for _, b in compared) == sorted([DEFAULT.encode(), OPS.encode()])


def test_reads_can_be_closed_separately_and_any_named_token_opens_them(agent: Agent) -> None:
    client = api(agent, read_open=False)

    closed = client.get("/api/status")
    opened = client.get("/api/status", headers=bearer(OPS))

    assert (closed.status_code, opened.status_code) == (401, 200)


def test_with_no_token_at_all_every_mutation_is_forbidden(agent: Agent) -> None:
    client = api(agent, token=None, tokens=None)

    response = client.post("/api/freeze", json={"on": True}, headers=bearer("anything"))

    assert response.status_code == 403
    assert "no API token is configured" in response.json()["detail"]


# --- hostile bodies: bounded, clear, never a 500 ----------------------------------------------


def test_a_body_over_the_limit_is_refused_before_the_token_is_even_checked(agent: Agent) -> None:
    body = b'{"tag": "' + b"v" * MAX_BODY_BYTES + b'"}'

    response = api(agent).post("/api/deploy", content=body)

    assert response.status_code == 413
    assert response.json() == {
        "detail": f"body: Content-Length is {len(body)} bytes; the limit is {MAX_BODY_BYTES} bytes"
    }


def test_a_streamed_body_over_the_limit_is_cut_off_at_the_limit(agent: Agent) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked
        yield b'{"tag": "'
        for _ in range(3):
            yield b"v" * (MAX_BODY_BYTES // 2)
        yield b'"}'

    response = api(agent).post("/api/deploy", content=chunks(), headers=bearer(OPS))

    assert response.status_code == 413
    assert response.json()["detail"] == (
        f"body: more than {MAX_BODY_BYTES} bytes received; the limit is {MAX_BODY_BYTES} bytes"
    )


def test_the_largest_valid_feedback_fits_under_the_limit(agent: Agent) -> None:
    item = {"predicted": "p" * 256, "label": "l" * 256, "release": "r" * 128, "id": "i" * 256}
    body = json.dumps({"items": [{**item, "id": f"{i:0256d}"} for i in range(1000)]}).encode()

    assert len(body) < MAX_BODY_BYTES


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"tag": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"tag": "caf\xe9"}'.decode("unicode_escape").encode("latin-1"),
        b'{"tag": "half \\ud800 pair"}',
        b"\x00\xff",
    ],
    ids=["deep list", "deep value", "invalid UTF-8", "lone surrogate", "binary"],
)
def test_a_hostile_body_gets_a_4xx_and_changes_nothing(agent: Agent, body: bytes) -> None:
    headers = {**bearer(OPS), "Content-Type": "application/json"}
    before = agent.store.releases()

    response = api(agent).post("/api/deploy", content=body, headers=headers)

    assert response.status_code in (400, 422), response.text
    assert agent.store.releases() == before


# --- webhook receivers: the documented timestamp window defeats replays ---------------------


def documented_verify() -> Any:
    """The receiver's ``verify`` from docs/alerts.md, run as written."""
    text = (REPO / "docs" / "alerts.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(import hmac.*?def verify.*?)```", text, re.S)
    assert block is not None, "docs/alerts.md lost its receiver example"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)  # noqa: S102 - our own documentation's example
    return namespace["verify"]


@pytest.mark.parametrize(
    ("age_s", "accepted"), [(0, True), (299, True), (301, False), (-301, False), (3600, False)]
)
def test_the_documented_receiver_rejects_a_signed_alert_outside_five_minutes(
    monkeypatch: pytest.MonkeyPatch, age_s: float, accepted: bool
) -> None:
    receiver = Receiver(name="hook", kind="webhook", url="http://hooks.test", secret="s3cret")
    _, body, headers = build_request(receiver, FIRING, now=T0)
    verify = documented_verify()
    monkeypatch.setattr(verify.__globals__["time"], "time", lambda: T0 + age_s)

    assert verify("s3cret", headers, body) is accepted


def test_the_signature_is_over_timestamp_and_body_with_the_secret() -> None:
    receiver = Receiver(name="hook", kind="webhook", url="http://hooks.test", secret="s3cret")
    _, body, headers = build_request(receiver, FIRING, now=T0)
    mac = hmac.new(b"s3cret", headers[TIMESTAMP_HEADER].encode() + b"." + body, hashlib.sha256)

    assert headers[SIGNATURE_HEADER] == "sha256=" + mac.hexdigest()
    assert b"s3cret" not in body
