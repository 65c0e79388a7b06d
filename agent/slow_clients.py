"""A uvicorn HTTP protocol that cuts off clients who send a request too slowly (slowloris).

uvicorn closes a keep-alive connection that stays idle (``timeout_keep_alive``), but nothing
bounds a client that *trickles* a request: every byte cancels the keep-alive timer and there is
no header or body timeout, so one byte a second holds a connection (a file descriptor and a
parser) forever, and a few hundred such clients exhaust the server. This protocol gives each
request ``request_timeout_s`` from the connection's start (or the previous response) until its
head and body have arrived; a client still sending then is disconnected. A request that has
arrived whole is never cut off, however long the answer takes.

``inference/slow_clients.py`` is a copy of this module: the agent and the server never import
each other.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.auto import AutoHTTPProtocol

if TYPE_CHECKING:  # what both of uvicorn's HTTP protocols (h11, httptools) have
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Protocol
else:
    _Protocol = object

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 10.0


class _RequestDeadline(_Protocol):
    """Mixed into one of uvicorn's HTTP protocols by ``guarded_http``."""

    request_timeout_s = DEFAULT_REQUEST_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection gets its own full allowance

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.request_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        cycle = self.cycle
        # None or answered: waiting for the next request's head; more_body: for its body.
        still_sending = cycle is None or cycle.response_complete or cycle.more_body
        if still_sending and not self.transport.is_closing():
            log.info(
                "closing the connection from %s: no whole request within %.0f s",
                *(self.client, self.request_timeout_s),
            )
            self.transport.close()


def guarded_http(
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    base: type[asyncio.Protocol] = AutoHTTPProtocol,
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (``base``: what uvicorn's "auto" picks, httptools when installed,
    else h11 as in the images) with a ``request_timeout_s`` deadline per request; pass it as
    ``uvicorn.Config(http=...)``."""
    guarded = type(
        "GuardedHTTP", (_RequestDeadline, base), {"request_timeout_s": request_timeout_s}
    )
    return cast(type[asyncio.Protocol], guarded)
