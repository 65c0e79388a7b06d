"""Traffic shares per release -> per-server weights -> HAProxy, in an order that never empties it.

``weights`` is pure: each release's share is split over its ready replicas (HAProxy spreads a
backend's traffic by weight over the servers it sees up, so a share split over replicas that are
down would be lost). ``HaproxyBalancer.apply`` pushes a weight map through the runtime API, raising
weights before lowering others (lowering first can leave the backend briefly empty: "no server
available") and disabling servers whose replica is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from agent.errors import BackendError
from agent.rollout.haproxy import MAX_WEIGHT, HaproxyProcess, Runtime, ServerState, assignments

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """A replica the balancer may send traffic to."""

    slot: str
    url: str  # http://host:port
    release: str
    ready: bool


def weights(members: Sequence[Member], shares: Mapping[str, float]) -> dict[str, int]:
    """Weight per slot: ``shares`` (percent by release) split over each release's ready replicas.

    A release with no ready replica spreads its share over all of its replicas (HAProxy's own
    check decides); releases without a share get 0.
    """
    out: dict[str, int] = {}
    for release, share in shares.items():
        mine = [m for m in members if m.release == release]
        ready = [m for m in mine if m.ready] or mine
        per = share * MAX_WEIGHT / 100.0 / len(ready) if ready else 0.0
        for m in mine:
            out[m.slot] = 0 if share <= 0 or m not in ready else max(1, round(per))
    for m in members:
        out.setdefault(m.slot, 0)
    return out


class Balancer(Protocol):
    """What the rollout needs from a load balancer (``HaproxyBalancer``; fakes in unit tests)."""

    def apply(self, members: Sequence[Member], wanted: Mapping[str, int]) -> list[str]: ...

    def servers_by_slot(self) -> dict[str, ServerState]: ...

    def close(self) -> None: ...


class HaproxyBalancer:
    """The agent's handle on HAProxy: start/adopt it, push weights, read per-server counters."""

    def __init__(self, process: HaproxyProcess) -> None:
        self.process = process
        self.runtime: Runtime | None = None
        self._server_of: dict[str, str] = {}  # slot -> server name
        self._applied: dict[str, tuple[str, int]] = {}  # server -> (address, weight)

    @property
    def bind(self) -> str:
        return self.process.bind

    def start(self) -> None:
        self.runtime = self.process.start()
        servers = self.runtime.servers()
        self._applied = {
            name: (s.address, s.weight) for name, s in servers.items() if s.status != "MAINT"
        }

    def close(self) -> None:
        self.process.close()

    def _rt(self) -> Runtime:
        if self.runtime is None:
            self.start()
        assert self.runtime is not None
        return self.runtime

    def apply(self, members: Sequence[Member], wanted: Mapping[str, int]) -> list[str]:
        """Make HAProxy send traffic by ``wanted`` (slot -> weight). Returns what changed."""
        rt = self._rt()
        targets = [(m.slot, _address(m.url)) for m in members]
        self._server_of = assignments(rt.servers(), targets)
        changes: list[str] = []
        raised, lowered = [], []
        for m in members:
            server, address = self._server_of[m.slot], _address(m.url)
            weight = wanted.get(m.slot, 0)
            before = self._applied.get(server)
            if before is None or before[0] != address:
                host, _, port = address.rpartition(":")
                rt.set_address(server, host, int(port))
                rt.set_weight(server, 0)
                rt.enable(server)
                before = (address, 0)
                self._applied[server] = before
                changes.append(f"{m.slot} -> {server} at {address}")
            if weight > before[1]:
                raised.append((server, m.slot, address, weight))
            elif weight < before[1]:
                lowered.append((server, m.slot, address, weight))
        for server, slot, address, weight in raised + lowered:  # raise before lowering
            rt.set_weight(server, weight)
            self._applied[server] = (address, weight)
            changes.append(f"{slot} weight {weight}")
        used = set(self._server_of.values())
        for server in [s for s in self._applied if s not in used]:
            rt.set_weight(server, 0)
            rt.disable(server)
            del self._applied[server]
            changes.append(f"{server} removed")
        return changes

    def servers_by_slot(self) -> dict[str, ServerState]:
        """HAProxy's counters for each slot it serves (sessions, totals, 5xx, weight, status)."""
        try:
            servers = self._rt().servers()
        except BackendError as exc:
            log.info("haproxy: cannot read counters: %s", exc)
            return {}
        return {slot: servers[name] for slot, name in self._server_of.items() if name in servers}


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 80}"
