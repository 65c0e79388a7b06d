"""The agent's HTTP API: ``/metrics``, ``/api/status``, ``/api/releases``, ``/api/events`` and the
mutating endpoints (deploy, rollback, maintenance, freeze) that need a bearer token.

Routes only translate HTTP to ``Agent`` calls. Tokens are compared in constant time; each token
has a name, and the audit records of an operator's request say ``by`` which token asked.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from agent.audit import acting_as
from agent.backends.base import ReleaseSpec
from agent.body_limit import BodyLimitMiddleware
from agent.decay_monitor import DecayMonitor
from agent.durations import DurationError, parse_duration
from agent.errors import WardenError
from agent.feedback import FeedbackItem
from agent.history import SignalHistory
from agent.loop import Agent
from agent.status import action_json, event_json, release_json, status_document
from agent.web.page import add_status_page
from agent.web.rollout import rollout_document


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$")
    model: str = ""
    task: str = ""
    image: str = ""
    args: list[str] = Field(default_factory=list, max_length=64)
    force: bool = False
    # Staged rollout (needs HAProxy): None = staged when the agent runs a balancer.
    staged: bool | None = None
    steps: list[Annotated[int, Field(gt=0, le=100)]] | None = Field(None, max_length=20)
    step_duration: str | None = Field(None, max_length=32)  # "2m", "30s"
    load_test: bool = False
    canary_replicas: int = Field(1, ge=1, le=16)
    note: str = Field("", max_length=500)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to: str | None = None


class FlagBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool


class FeedbackItemBody(BaseModel):
    """One labelled answer: what the service predicted and what was right (docs/decay.md)."""

    model_config = ConfigDict(extra="forbid")
    predicted: str = Field(min_length=1, max_length=256)
    label: str = Field(min_length=1, max_length=256)
    release: str | None = Field(None, min_length=1, max_length=128)  # None: the current one
    id: str | None = Field(None, min_length=1, max_length=256)  # a repeated id counts once


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[FeedbackItemBody] = Field(min_length=1, max_length=1000)


MAX_ID = 2**63 - 1  # SQLite's largest integer: a bigger cursor is a 422, not a 500
DEFAULT_TOKEN_NAME = "default"  # noqa: S105 (the name of api.token_env's token, not a token)


class BearerTokens:
    """Named bearer tokens; calling it with an ``Authorization`` header gives the token's name."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._secrets = [(name, secret.encode()) for name, secret in tokens.items() if secret]

    def __call__(self, authorization: str | None) -> str:
        if not self._secrets:
            raise HTTPException(403, "no API token is configured; set WARDEN_TOKEN and restart")
        scheme, _, presented = (authorization or "").partition(" ")
        given = presented.encode() if scheme.lower() == "bearer" else b""
        # every token is compared, each in constant time: the answer's timing tells nothing
        matched = [name for name, secret in self._secrets if hmac.compare_digest(given, secret)]
        if not matched:
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        return matched[0]


def create_api(
    agent: Agent,
    *,
    token: str | None,
    tokens: Mapping[str, str] | None = None,
    read_open: bool = True,
    history: SignalHistory | None = None,
    token_hint: str = "$WARDEN_TOKEN",  # noqa: S107 (where to find it, not a token)
) -> FastAPI:
    """The API app and the status page at ``/``. ``token`` is the ``default`` token, ``tokens``
    more by name; none at all: mutating endpoints answer 403 saying how to set one.
    ``history`` feeds the page's charts (the runtime records it)."""
    app = FastAPI(title="Warden agent", version="0.1.0")
    app.add_middleware(BodyLimitMiddleware)  # 413 before an unauthenticated body is buffered
    history = history if history is not None else SignalHistory()
    _check = BearerTokens({**({DEFAULT_TOKEN_NAME: token} if token else {}), **(tokens or {})})

    def require_token(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> None:
        request.state.operator = _check(authorization)  # the token's name, for the audit log

    def require_read(authorization: Annotated[str | None, Header()] = None) -> None:
        if not read_open:
            _check(authorization)

    write = [Depends(require_token)]
    read = [Depends(require_read)]

    @app.exception_handler(WardenError)
    async def _warden_error(request: Request, exc: WardenError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input as UTF-8; a lone surrogate in it made that a 500
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, default=str)
        return Response(body, status_code=422, media_type="application/json")

    @app.get("/metrics", dependencies=read, response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(generate_latest(agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/status", dependencies=read)
    def status() -> dict[str, Any]:
        return status_document(agent)

    @app.get("/api/releases", dependencies=read)
    def releases() -> dict[str, Any]:
        staged = agent.rollouts.store.history() if agent.rollouts is not None else {}
        out = []
        for r in agent.store.releases():
            doc = release_json(r)
            rollout = staged.get(r.tag)
            doc["rollout"] = None if rollout is None else rollout.document()
            out.append(doc)
        return {"releases": out}

    @app.get("/api/actions", dependencies=read)
    def actions(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        return {"actions": [action_json(a) for a in agent.store.actions(limit=limit)]}

    @app.get("/api/events", dependencies=read)
    def events(
        after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        items = agent.store.events(after_id=after, limit=limit)
        return {"events": [event_json(e) for e in items], "next": items[-1].id if items else after}

    @app.get("/api/rules", dependencies=read)
    def rules() -> dict[str, Any]:
        """The rules in effect (the last valid set) and the files they came from."""
        ruleset = agent.rules.rules
        return {
            "files": list(ruleset.files),
            "problems": list(agent.mem.rules_problems),
            "rules": [
                {
                    "name": r.name,
                    "when": f"{r.signal} {r.op} {r.threshold_text}",
                    "for_s": r.for_s,
                    "severity": r.severity,
                    "actions": [a.value for a in r.actions],
                    "source": r.source,
                    "description": r.description,
                }
                for r in ruleset.rules
            ],
        }

    @app.get("/api/history", dependencies=read)
    def signal_history() -> dict[str, Any]:
        return history.to_json()

    @app.get("/api/rollout", dependencies=read)
    def rollout(release: str | None = None) -> dict[str, Any]:
        doc = rollout_document(agent, release)
        if doc is None:
            raise HTTPException(404, f"release {release} is unknown; `warden releases` lists them")
        return doc

    def may_read(authorization: str | None) -> bool:
        try:
            require_read(authorization)
        except HTTPException:
            return False
        return True

    add_status_page(app, agent, history, read=read, may_read=may_read, token_hint=token_hint)

    _deploy_routes(app, agent, write=write)

    @app.post("/api/rollback", dependencies=write, status_code=202)
    def rollback(body: RollbackBody, request: Request) -> dict[str, Any]:
        with acting_as(request.state.operator):
            return agent.rollback(body.to)

    _feedback_routes(app, agent, read=read, write=write)

    @app.post("/api/maintenance", dependencies=write)
    def maintenance(body: FlagBody, request: Request) -> dict[str, Any]:
        with acting_as(request.state.operator):
            return agent.set_flags(maintenance=body.on)

    @app.post("/api/freeze", dependencies=write)
    def freeze(body: FlagBody, request: Request) -> dict[str, Any]:
        with acting_as(request.state.operator):
            return agent.set_flags(frozen=body.on)

    return app


def _deploy_routes(app: FastAPI, agent: Agent, *, write: list[Any]) -> None:
    """``POST /api/deploy`` (all at once, or staged behind HAProxy) and the rollout commands."""

    @app.post("/api/deploy", dependencies=write, status_code=202)
    def deploy(body: DeployBody, request: Request) -> dict[str, Any]:
        spec = ReleaseSpec(
            tag=body.tag, model=body.model, task=body.task, image=body.image, args=tuple(body.args)
        )
        staged = body.staged
        if staged is None:
            staged = agent.rollouts is not None and agent.rollouts.can_stage
        with acting_as(request.state.operator):
            if not staged:
                if body.steps or body.load_test:
                    raise WardenError("--steps and --load-test need a staged rollout")
                return agent.deploy(spec, force=body.force)
            try:
                duration = (
                    None if body.step_duration is None else parse_duration(body.step_duration)
                )
            except DurationError as exc:
                raise WardenError(f"step_duration: {exc}") from exc
            return agent.staged_deploy(
                spec,
                steps=body.steps,
                step_duration_s=duration,
                load_test=body.load_test,
                replicas=body.canary_replicas,
                force=body.force,
                by=request.state.operator,
                note=body.note,
            )

    @app.post("/api/rollout/{command}", dependencies=write)
    def rollout_command(
        command: Literal["pause", "resume", "abort", "promote"], request: Request
    ) -> dict[str, Any]:
        with acting_as(request.state.operator):
            return agent.rollout_command(command, by=request.state.operator)


def _feedback_routes(app: FastAPI, agent: Agent, *, read: list[Any], write: list[Any]) -> None:
    """``POST /api/feedback`` (labelled answers, token) and ``GET /api/feedback`` (decay state)."""

    def decay() -> DecayMonitor:
        if agent.decay is None:
            raise HTTPException(409, "accuracy decay detection is off (decay: enabled: false)")
        return agent.decay

    def current_release() -> str:
        desired = agent.store.desired()
        return desired.release if desired is not None else ""

    @app.post("/api/feedback", dependencies=write)
    def feedback(body: FeedbackBody) -> dict[str, Any]:
        monitor, release = decay(), current_release()
        items = [
            FeedbackItem(
                predicted=i.predicted, label=i.label, release=i.release or release, key=i.id
            )
            for i in body.items
        ]
        added = monitor.feedback.add(items, agent.clock.now())
        counts = {"accepted": added.accepted, "duplicates": added.duplicates}
        return counts | monitor.describe(release)

    @app.get("/api/feedback", dependencies=read)
    def feedback_status() -> dict[str, Any]:
        return decay().describe(current_release())
