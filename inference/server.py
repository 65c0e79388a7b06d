"""Run the model server under uvicorn: ``main(argv) -> exit code``.

uvicorn handles SIGTERM and SIGINT gracefully: it stops accepting connections, lets in-flight
requests finish (up to ``GRACEFUL_SHUTDOWN_SECONDS``), then runs the app's shutdown, which drains
the batching queue. ``warden serve`` calls ``main`` with the same flags.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence

import uvicorn

from inference.app import create_app
from inference.settings import Settings, parse_settings
from inference.slow_clients import guarded_http

GRACEFUL_SHUTDOWN_SECONDS = 10
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("inference")


class GracefulServer(uvicorn.Server):
    """uvicorn, but a graceful shutdown on SIGTERM/SIGINT ends with exit status 0.

    uvicorn re-raises the captured signal after shutting down, so the process would die "killed by
    SIGTERM" even though it drained cleanly; a supervisor would then count an orderly stop as a
    crash. Forgetting the captured signal lets ``main`` return 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                for captured in self._captured_signals:
                    log.info("%s received: shut down gracefully", signal.Signals(captured).name)
                self._captured_signals.clear()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, serve until SIGTERM/SIGINT; 0 after a clean shutdown, 1 if it never started."""
    settings = parse_settings(list(argv) if argv is not None else None)
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    server = GracefulServer(uvicorn_config(settings))
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
        http=guarded_http(settings.request_timeout_s),  # slowloris: inference/slow_clients.py
    )
