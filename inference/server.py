"""Run the model server under uvicorn: ``main(argv) -> exit code``.

uvicorn handles SIGTERM and SIGINT gracefully: it stops accepting connections, lets in-flight
requests finish (up to ``GRACEFUL_SHUTDOWN_SECONDS``), then runs the app's shutdown, which drains
the batching queue. ``warden serve`` calls ``main`` with the same flags.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import uvicorn

from inference.app import create_app
from inference.settings import Settings, parse_settings

GRACEFUL_SHUTDOWN_SECONDS = 10
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("inference")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, serve until SIGTERM/SIGINT; 0 after a clean shutdown, 1 if it never started."""
    settings = parse_settings(list(argv) if argv is not None else None)
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    server = uvicorn.Server(uvicorn_config(settings))
    log.info(
        "starting release %s on http://%s:%d (model loads in the background; see /ready)",
        *(settings.release, settings.host, settings.port),
    )
    server.run()
    if not server.started:
        log.error("the server did not start (see the error above, e.g. the port is in use)")
        return 1
    log.info("stopped")
    return 0


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    """uvicorn settings for ``settings``; logging is left to the root logger."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        lifespan="on",
    )
