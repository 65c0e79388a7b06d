"""HTTP probes of one replica: liveness, readiness and the canary golden set.

Like blackbox_exporter, a failed probe is a normal *result* with a reason (connection refused,
timeout, wrong status, wrong body), never an exception: the caller turns results into the
``up`` / ``ready`` / ``canary_*`` signals and rules decide what a failure means.

``timeout_s`` bounds every phase of a request (connect, write, each read) and the whole body read,
so a hung server (SIGSTOP, deadlock) fails a probe after about ``timeout_s``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx

from agent.domain import CanaryItemResult, CanaryResult, ProbeResult

logger = logging.getLogger(__name__)

PROBE = {"X-Warden-Probe": "canary"}
"""Sent with golden-set runs: the server counts them as ``origin="probe"``, so a staged
rollout's candidate-vs-stable windows hold users' requests only (``MetricsSample.users_only``)."""

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Larger probe responses are refused (a canary reply with embeddings is well under this)."""


class CanaryInput(Protocol):
    """One golden-set item (``agent.canaries.Canary`` satisfies this)."""

    @property
    def name(self) -> str: ...

    @property
    def input(self) -> str: ...

    @property
    def expected(self) -> str: ...

    @property
    def min_confidence(self) -> float: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reply:
    """A JSON reply, or the reason there is none usable."""

    latency_s: float
    status_code: int | None = None
    body: Any = None
    reason: str = ""


def probe_health(client: httpx.Client, base_url: str, timeout_s: float) -> ProbeResult:
    """Liveness: ``GET /health`` must answer 200 with ``{"status": "ok"}``."""
    reply = _call(client, "GET", _url(base_url, "/health"), timeout_s)
    if reply.reason:
        return _failed(reply)
    if not isinstance(reply.body, dict) or reply.body.get("status") != "ok":
        return _failed(reply, f"unexpected body: {_short(reply.body)}")
    return ProbeResult(ok=True, latency_s=reply.latency_s, status_code=reply.status_code)


def probe_ready(client: httpx.Client, base_url: str, timeout_s: float) -> ProbeResult:
    """Readiness: ``GET /ready`` must answer 200 with ``{"ready": true}``.

    A 503 ``{"ready": false, "reason": "..."}`` gives ``not ready: <reason>``.
    """
    reply = _call(client, "GET", _url(base_url, "/ready"), timeout_s, accept=(200, 503))
    if reply.reason:
        return _failed(reply)
    body = reply.body
    if not isinstance(body, dict) or not isinstance(body.get("ready"), bool):
        return _failed(reply, f"unexpected body: {_short(body)}")
    if not body["ready"] or reply.status_code != 200:
        failed = _failed(reply, f"not ready: {body.get('reason') or 'no reason given'}")
        return replace(failed, permanent=body.get("failed") is True)
    return ProbeResult(ok=True, latency_s=reply.latency_s, status_code=reply.status_code)


def run_canaries(
    client: httpx.Client,
    base_url: str,
    canaries: Sequence[CanaryInput],
    timeout_s: float,
) -> CanaryResult:
    """Send every canary input in one ``POST /predict`` and check each prediction.

    An item passes when its label equals ``expected`` and its score is at least
    ``min_confidence``. When the request itself fails, every item fails with that reason.
    """
    if not canaries:
        return CanaryResult(items=())
    payload = {"inputs": [canary.input for canary in canaries]}
    reply = _call(
        client, "POST", _url(base_url, "/predict"), timeout_s, payload=payload, headers=PROBE
    )
    predictions, reason = _predictions(reply, len(canaries))
    if predictions is None:
        items = tuple(_all_failed(c, reply.latency_s, reason) for c in canaries)
        unanswered = reason if reply.status_code is None else ""
        return CanaryResult(items=items, unanswered=unanswered)
    checked = (_check(c, p, reply.latency_s) for c, p in zip(canaries, predictions, strict=True))
    return CanaryResult(items=tuple(checked))


def _predictions(reply: _Reply, expected_count: int) -> tuple[list[dict[str, Any]] | None, str]:
    """The ``predictions`` list of a /predict reply, or None and why it is unusable."""
    if reply.reason:
        return None, reply.reason
    body = reply.body
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or not all(isinstance(p, dict) for p in predictions):
        return None, f"unexpected body: {_short(body)}"
    if len(predictions) != expected_count:
        return None, f"{len(predictions)} predictions for {expected_count} inputs"
    return predictions, ""


def _check(canary: CanaryInput, prediction: dict[str, Any], latency_s: float) -> CanaryItemResult:
    label = prediction.get("label")
    score = prediction.get("score")
    got = label if isinstance(label, str) else None
    confidence = float(score) if isinstance(score, int | float) else None
    reason = _item_failure(canary, got, confidence)
    return CanaryItemResult(
        name=canary.name,
        ok=not reason,
        expected=canary.expected,
        got=got,
        confidence=confidence,
        latency_s=latency_s,
        reason=reason,
        expected_score=_expected_score(canary.expected, got, confidence, prediction),
    )


def _expected_score(
    expected: str, got: str | None, confidence: float | None, prediction: dict[str, Any]
) -> float | None:
    """The probability of the expected label: top-1 score, ``scores`` or fill-mask ``tokens``."""
    if got == expected and confidence is not None:
        return confidence
    scores = prediction.get("scores")
    if isinstance(scores, dict) and isinstance(scores.get(expected), int | float):
        return float(scores[expected])
    tokens = prediction.get("tokens")
    if isinstance(tokens, list) and tokens:
        listed = [t for t in tokens if isinstance(t, dict)]
        for token in listed:
            if token.get("token") == expected and isinstance(token.get("score"), int | float):
                return float(token["score"])
        return 0.0  # not among the top k: below the smallest listed, 0 is the honest floor
    return None


def _item_failure(canary: CanaryInput, got: str | None, confidence: float | None) -> str:
    """Why one prediction fails its canary, or "" when it passes."""
    if got != canary.expected:
        shown = "no label" if got is None else repr(got)
        score = "" if confidence is None else f" ({confidence:.2f})"
        return f"expected {canary.expected!r}, got {shown}{score}"
    if confidence is None:
        if canary.min_confidence > 0:
            return f"no confidence score; need >= {canary.min_confidence:.2f}"
        return ""
    if confidence < canary.min_confidence:
        return f"confidence {confidence:.2f} < {canary.min_confidence:.2f}"
    return ""


def _all_failed(canary: CanaryInput, latency_s: float, reason: str) -> CanaryItemResult:
    return CanaryItemResult(
        name=canary.name,
        ok=False,
        expected=canary.expected,
        got=None,
        confidence=None,
        latency_s=latency_s,
        reason=reason,
    )


def _call(
    client: httpx.Client,
    method: str,
    url: str,
    timeout_s: float,
    *,
    payload: object = None,
    accept: tuple[int, ...] = (200,),
    headers: Mapping[str, str] | None = None,
) -> _Reply:
    """One request whose outcome is always a ``_Reply`` (JSON body or a reason)."""
    started = time.perf_counter()
    status: int | None = None
    try:
        with client.stream(
            method, url, json=payload, headers=headers, timeout=timeout_s
        ) as response:
            status = response.status_code
            raw = _read_body(response, started + timeout_s)
    except Exception as exc:  # noqa: BLE001 - a probe never raises; unexpected errors are logged
        reason = _failure_reason(exc, timeout_s, f"{method} {url}")
        return _Reply(latency_s=_since(started), status_code=status, reason=reason)
    return _decode(raw, status, _since(started), accept)


def _decode(raw: bytes, status: int, latency_s: float, accept: tuple[int, ...]) -> _Reply:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
        if status in accept:
            reason = f"HTTP {status}: response is not JSON: {_short(raw)}"
            return _Reply(latency_s=latency_s, status_code=status, reason=reason)
    if status not in accept:
        reason = f"HTTP {status}: {_error_message(body, raw)}"
        return _Reply(latency_s=latency_s, status_code=status, reason=reason)
    return _Reply(latency_s=latency_s, status_code=status, body=body)


class _BodyTooSlow(Exception):
    pass


class _BodyTooLarge(Exception):
    pass


def _read_body(response: httpx.Response, deadline: float) -> bytes:
    """Read the body, but give up at ``deadline`` even if the server trickles bytes."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        if time.perf_counter() > deadline:
            raise _BodyTooSlow
    return b"".join(chunks)


def _failure_reason(exc: Exception, timeout_s: float, request: str) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout after {timeout_s:g} s ({_TIMEOUT_PHASES.get(type(exc), 'request')})"
    if isinstance(exc, _BodyTooSlow):
        return f"timeout after {timeout_s:g} s (reading the response body)"
    if isinstance(exc, _BodyTooLarge):
        return f"response body larger than {MAX_BODY_BYTES} bytes"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}"
    if not isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        logger.exception("probe %s failed unexpectedly", request)
    return _describe(exc)


_TIMEOUT_PHASES: dict[type[Exception], str] = {
    httpx.ConnectTimeout: "connecting",
    httpx.ReadTimeout: "waiting for the response",
    httpx.WriteTimeout: "sending the request",
    httpx.PoolTimeout: "waiting for a free connection",
}


def _error_message(body: object, raw: bytes) -> str:
    """The server's own error message when it sent the contract's JSON error shape."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("reason"), str):
            return str(body["reason"])
    return _short(raw) or "empty body"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short(value: object, limit: int = 120) -> str:
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    else:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failed(reply: _Reply, reason: str = "") -> ProbeResult:
    return ProbeResult(
        ok=False,
        latency_s=reply.latency_s,
        reason=reason or reply.reason,
        status_code=reply.status_code,
    )


def _url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def _since(started: float) -> float:
    return time.perf_counter() - started
