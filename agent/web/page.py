"""The status page: ``GET /`` (the page), ``GET /ui/panels`` (the part that refreshes) and
``/static/*`` (its one script and one stylesheet), added to the agent's API app.

Server-rendered with Jinja2 (autoescaped); the script only re-fetches the panels every two
seconds and sends the operator's actions with the bearer token. No CDN, no build step: the page
works offline, served by the agent on its API bind with the API's auth rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from agent.history import SignalHistory
from agent.loop import Agent
from agent.web.views import page_context

STATIC_DIR = Path(__file__).parent / "static"
# No inline script or style, no other origin: a page that shows replica reasons and rule text
# (operator-controlled strings) must not be able to run anything it did not ship with.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_templates = Environment(
    loader=PackageLoader("agent.web", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_panels(agent: Agent, history: SignalHistory) -> str:
    """The panels of the page (release, firing rules, replicas, charts, timeline, releases)."""
    return _templates.get_template("panels.html").render(page_context(agent, history))


def add_status_page(
    app: FastAPI,
    agent: Agent,
    history: SignalHistory,
    *,
    read: Sequence[Any],
    may_read: Callable[[str | None], bool],
    token_hint: str,
) -> None:
    """Add the page's routes to ``app``. ``may_read(authorization)`` says whether a request may
    see the data; a browser's first request carries no token, so when reads need one the page
    is served empty and its script fetches the panels once the operator entered the token."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request, authorization: str | None = Header(default=None)) -> HTMLResponse:
        readable = may_read(authorization)
        context: dict[str, Any] = {
            "service": agent.settings.service,
            "readable": readable,
            "token_hint": token_hint,
        }
        if readable:
            context.update(page_context(agent, history))
        html = _templates.get_template("page.html").render(context)
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    @app.get(
        "/ui/panels", response_class=HTMLResponse, dependencies=list(read), include_in_schema=False
    )
    def panels() -> HTMLResponse:
        return HTMLResponse(render_panels(agent, history), headers=SECURITY_HEADERS)
