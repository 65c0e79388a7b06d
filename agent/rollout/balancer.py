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

    A release with a share but no ready replica cannot serve it: its share goes to the releases
    that can (a candidate that died at the 100 % step hands its traffic back to stable, whose
    replicas still run). When no release with a share has a ready replica, every ready replica
    serves, equally; when none at all is ready, the shared releases' replicas get their shares
    and HAProxy's own check decides.
    """
    ready = {r: [m for m in members if m.release == r and m.ready] for r in shares}
    live = {r: share for r, share in shares.items() if share > 0 and ready[r]}
    out = dict.fromkeys((m.slot for m in members), 0)
    if live:
        total = sum(live.values())
        for release, share in live.items():
            per = share / total * MAX_WEIGHT / len(ready[release])
            for m in ready[release]:
                out[m.slot] = max(1, round(per))
        return out
    anyone = [m for m in members if m.ready]
    if anyone:
        for m in anyone:
            out[m.slot] = MAX_WEIGHT // len(anyone) or 1
        return out
    for release, share in shares.items():
        mine = [m for m in members if m.release == release]
        for m in mine:
            out[m.slot] = max(1, round(share * MAX_WEIGHT / 100.0 / len(mine))) if share > 0 else 0
    return out


class Balancer(Protocol):
    """What the rollout needs from a load balancer (``HaproxyBalancer``; fakes in unit tests)."""

    def sync(self, members: Sequence[Member]) -> dict[str, ServerState]: ...

    def apply(self, members: Sequence[Member], wanted: Mapping[str, int]) -> list[str]: ...

    def servers_by_slot(self) -> dict[str, ServerState]: ...

    def close(self) -> None: ...


class HaproxyBalancer:
    """The agent's handle on HAProxy: start/adopt it, push weights, read per-server counters.

    What HAProxy holds is read back on every call (``show stat``), never remembered: an HAProxy
    that restarted or reloaded under a running agent comes back with every server in maintenance,
    and the next ``apply`` configures it again.
    """

    def __init__(self, process: HaproxyProcess) -> None:
        self.process = process
        self.runtime: Runtime | None = None
        self._server_of: dict[str, str] = {}  # slot -> server name, from the last sync

    @property
    def bind(self) -> str:
        return self.process.bind

    def start(self) -> None:
        self.runtime = self.process.start()

    def close(self) -> None:
        self.process.close()

    def _servers(self) -> dict[str, ServerState]:
        """``show stat``; an HAProxy of our own that stopped answering is started again."""
        if self.runtime is None:
            self.start()
        assert self.runtime is not None
        try:
            return self.runtime.servers()
        except BackendError:
            if self.process.external:
                raise  # someone else's process: its supervisor restarts it
            log.warning("haproxy: the admin socket does not answer; starting HAProxy again")
            self.start()
            return self.runtime.servers()

    def sync(self, members: Sequence[Member]) -> dict[str, ServerState]:
        """Which server holds each member (kept where its address already is); HAProxy's state."""
        servers = self._servers()
        self._server_of = assignments(servers, [(m.slot, _address(m.url)) for m in members])
        return servers

    def apply(self, members: Sequence[Member], wanted: Mapping[str, int]) -> list[str]:
        """Make HAProxy send traffic by ``wanted`` (slot -> weight). Returns what changed."""
        servers = self.sync(members)
        rt = self.runtime
        assert rt is not None
        applied = {n: (s.address, s.weight) for n, s in servers.items() if s.status != "MAINT"}
        changes: list[str] = []
        raised, lowered = [], []
        for m in members:
            server, address = self._server_of[m.slot], _address(m.url)
            weight = wanted.get(m.slot, 0)
            before = applied.get(server)
            if before is None or before[0] != address:
                host, _, port = address.rpartition(":")
                rt.set_address(server, host, int(port))
                rt.set_weight(server, 0)
                rt.enable(server)
                before = applied[server] = (address, 0)
                changes.append(f"{m.slot} -> {server} at {address}")
            if weight > before[1]:
                raised.append((server, m.slot, address, weight))
            elif weight < before[1]:
                lowered.append((server, m.slot, address, weight))
        for server, slot, _, weight in raised + lowered:  # raise before lowering
            rt.set_weight(server, weight)
            changes.append(f"{slot} weight {weight}")
        used = set(self._server_of.values())
        for server in [s for s in applied if s not in used]:
            rt.set_weight(server, 0)
            rt.disable(server)
            changes.append(f"{server} removed")
        return changes

    def servers_by_slot(self) -> dict[str, ServerState]:
        """HAProxy's counters for each slot of the last sync (sessions, totals, 5xx, weight,
        status); {} when HAProxy does not answer."""
        try:
            servers = self._servers()
        except BackendError as exc:
            log.info("haproxy: cannot read counters: %s", exc)
            return {}
        return {slot: servers[name] for slot, name in self._server_of.items() if name in servers}


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 80}"


def reachable(url: str) -> bool:
    """A replica URL HAProxy can be pointed at (a container not running has none)."""
    parts = urlsplit(url)
    return bool(parts.hostname) and parts.port is not None
