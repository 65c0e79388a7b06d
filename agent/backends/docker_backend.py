"""The Docker backend: replicas are containers on one Docker engine, found by their labels.

Every container Warden creates carries ``warden.project``, ``warden.service``, ``warden.slot``,
``warden.release`` and ``warden.generation`` (plus ``backend.labels``); the backend lists, stops
and removes only containers with the project, service and slot labels, so anything else on the
engine, even from the same image, is never touched. Containers outlive the agent: a restarted
agent adopts them by label.

Addresses: each replica publishes port 8000 on 127.0.0.1 at a random host port. With
``backend.network`` set, replicas also join that user-defined network (created if missing) with
the service name as network alias. The URL the agent probes (``backend.reach``) is the published
port (``published``: an agent on the host) or the container's IP on the network (``network``: an
agent in a container on that network, e.g. docker-compose); ``auto`` picks ``network`` when the
network is set and the agent itself runs in a container (``/.dockerenv`` exists).

Events: one thread follows the engine's events for our labels (``docker_events``, reconnecting
with backoff when dockerd restarts); ``docker_stops.interpret`` turns ``die``, ``oom``,
``health_status: unhealthy``, ``pause``, ``unpause`` and ``start`` into ``EngineEvent`` at once
and tracks who stopped a container: Warden's own stops are no crashes, and a container a person
stopped with ``docker stop`` is reported STOPPED and left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from agent.backends.base import EventInbox, ReleaseSpec, ResourceSample
from agent.backends.docker_events import ContainerEvent, EventFollower, EventStream, parse_event
from agent.backends.docker_replicas import (
    GENERATION,
    PROJECT,
    RELEASE,
    SERVER_PORT,
    SERVICE_LABEL,
    SLOT,
    Details,
    details_from,
    replica_from,
    slot_order,
    url_from,
)
from agent.backends.docker_stats import StatsSampler
from agent.backends.docker_stops import StopLedger, interpret
from agent.clock import Clock, SystemClock
from agent.config import WardenConfig
from agent.domain import SERVICE, EngineEvent, Replica
from agent.errors import BackendError

log = logging.getLogger(__name__)

API_VERSION = "1.41"  # Debian's docker.io 20.10; newer engines accept it too
DEFAULT_GRACE_S = 5.0
SETUP_HINT = (
    "start the engine or point DOCKER_HOST at it (e.g. `. ./.warden-engine.env` after "
    "`sudo bash scripts/engine.sh`); the agent keeps retrying"
)
_ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException, OSError)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSettings:
    """What every replica container gets, whatever its release (from ``backend:``)."""

    project: str
    service: str
    image_repo: str = "warden-inference"
    network: str = ""
    env: Mapping[str, str] | None = None
    labels: Mapping[str, str] | None = None
    memory_limit_bytes: int | None = None
    cpus: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    via_network: bool = False  # URLs: the container's IP on ``network``, not the published port


class DockerBackend:
    """Replicas as labelled containers on one Docker engine (see module docstring)."""

    kind = "docker"

    def __init__(
        self,
        client: Any,
        settings: ContainerSettings,
        *,
        state_dir: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._cfg = settings
        self._clock: Clock = clock or SystemClock()
        self._ledger = StopLedger(
            state_dir / "docker-stopped.json" if state_dir else None, self._clock
        )
        self._stats = StatsSampler(self._open_stats)
        self._lock = threading.Lock()  # events, callbacks, details cache
        self._ops = threading.RLock()  # one start/stop/restart at a time
        self._inbox = EventInbox()
        self._details: dict[tuple[str, str], Details] = {}
        self._network_ready = False
        self._follower = EventFollower(
            connect=self._connect_events,
            on_event=self._on_raw_event,
            on_connected=self._on_connected,
            on_lost=self._on_lost,
        )
        self._follower.start()

    @classmethod
    def from_config(cls, cfg: WardenConfig, *, clock: Clock | None = None) -> DockerBackend:
        """A backend on the engine named by ``DOCKER_HOST`` (or the default socket)."""
        b = cfg.backend
        settings = ContainerSettings(
            project=cfg.project,
            service=cfg.service,
            image_repo=b.image,
            network=b.network,
            env=dict(b.env),
            labels=dict(b.labels),
            memory_limit_bytes=int(b.memory_limit_bytes) if b.memory_limit_bytes else None,
            cpus=b.cpus,
            via_network=_via_network(b.reach, b.network),
        )
        try:
            client = docker.from_env(version=API_VERSION, timeout=60, max_pool_size=32)
        except docker.errors.DockerException as exc:  # a malformed DOCKER_HOST, bad TLS files
            raise BackendError(f"cannot configure the Docker client: {exc}; {SETUP_HINT}") from exc
        backend = cls(client, settings, state_dir=cfg.state_dir, clock=clock)
        try:
            client.ping()
        except _ENGINE_ERRORS as exc:
            log.error("Docker engine at %s is not reachable: %s; %s", _host(), exc, SETUP_HINT)
        return backend

    # --- Backend protocol ---------------------------------------------------------------------

    def list_replicas(self) -> list[Replica]:
        """Our containers (one engine call, plus an ``inspect`` when a container changed state)."""
        summaries = self._list(self._scope())
        self._stats.keep(s["Id"] for s in summaries)
        self._ledger.prune(s["Id"] for s in summaries)
        newest: dict[str, Mapping[str, Any]] = {}
        for summary in sorted(summaries, key=lambda s: int(s.get("Created", 0))):
            newest[summary["Labels"][SLOT]] = summary  # a leftover twin loses to the newest
        replicas = [r for r in map(self._replica, newest.values()) if r is not None]
        return sorted(replicas, key=slot_order)

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        """Remove ``slot``'s container(s), then create and start one running ``release``."""
        with self._ops:
            self._remove_slot(slot)
            self._ensure_network()
            container_id = self._create(slot, release, generation)
            try:
                self._call(f"start replica {slot}", self._client.api.start, container_id)
            except BackendError:  # a created, never started container would look "starting"
                self._ledger.plan(container_id)
                with contextlib.suppress(*_ENGINE_ERRORS):
                    self._client.api.remove_container(container_id, force=True)
                raise
            for replica in self.list_replicas():
                if replica.id == slot:
                    return replica
            raise BackendError(
                f"replica {slot} vanished right after it started (removed by someone?)"
            )

    def stop_replica(self, slot: str) -> None:
        """Stop (SIGTERM, SIGKILL after the grace period) and remove ``slot``'s container.

        The slot is then absent, not STOPPED: a later scale-out starts it afresh.
        """
        with self._ops:
            self._remove_slot(slot)

    def restart_replica(self, slot: str) -> None:
        """``docker restart`` the slot's container (same release, same container)."""
        with self._ops:
            found = self._list([*self._scope(), f"{SLOT}={slot}"])
            if not found:
                raise BackendError(f"cannot restart replica {slot}: no container has its labels")
            for summary in found:
                self._ledger.plan(summary["Id"])
                self._call(
                    f"restart replica {slot}",
                    self._client.api.restart,
                    summary["Id"],
                    timeout=int(self._cfg.grace_s),
                )

    def resources(self, replica: Replica) -> ResourceSample | None:
        """The last ``docker stats`` reading of the replica (never blocks; None at first)."""
        return None if replica.container_id is None else self._stats.sample(replica.container_id)

    def drain_events(self) -> list[EngineEvent]:
        return self._inbox.drain()

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        self._inbox.subscribe(callback)

    def close(self) -> None:
        """Stop following events and stats. Containers keep running: the next agent adopts them."""
        self._follower.close()
        self._stats.close()
        with contextlib.suppress(*_ENGINE_ERRORS):
            self._client.close()

    # --- engine calls -------------------------------------------------------------------------

    def _scope(self) -> list[str]:
        return [f"{PROJECT}={self._cfg.project}", f"{SERVICE_LABEL}={self._cfg.service}", SLOT]

    def _list(self, labels: list[str]) -> list[Mapping[str, Any]]:
        found: list[Mapping[str, Any]] = self._call(
            "list containers", self._client.api.containers, all=True, filters={"label": labels}
        )
        return found

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An engine call; any failure becomes a ``BackendError`` that says what to do."""
        try:
            return method(*args, **kwargs)
        except docker.errors.APIError as exc:
            raise BackendError(
                f"{what}: the Docker engine refused: {exc.explanation or exc}"
            ) from exc
        except _ENGINE_ERRORS as exc:
            raise BackendError(
                f"{what}: Docker engine at {_host()} is not reachable ({exc}); {SETUP_HINT}"
            ) from exc

    def _create(self, slot: str, release: ReleaseSpec, generation: int) -> str:
        cfg, api = self._cfg, self._client.api
        image = release.image or f"{cfg.image_repo}:{release.tag}"
        labels = {
            **(cfg.labels or {}),
            PROJECT: cfg.project,
            SERVICE_LABEL: cfg.service,
            SLOT: slot,
            RELEASE: release.tag,
            GENERATION: str(generation),
        }
        host_config = api.create_host_config(
            port_bindings={SERVER_PORT: ("127.0.0.1", None)},
            mem_limit=cfg.memory_limit_bytes,
            memswap_limit=cfg.memory_limit_bytes,  # no swap: over the limit is an OOM kill
            nano_cpus=int(cfg.cpus * 1e9) if cfg.cpus else None,
            restart_policy={"Name": "no"},  # Warden is the supervisor
            network_mode=cfg.network or None,
            # The server writes nothing but temporary files: a read-only root filesystem, no
            # capabilities, no privilege gain (setuid); it runs as the image's user (10001).
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=256m"},  # noqa: S108 (the container's own)
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
        )
        networking = None
        if cfg.network:
            endpoint = api.create_endpoint_config(aliases=[cfg.service])
            networking = api.create_networking_config({cfg.network: endpoint})
        try:
            created = api.create_container(
                image,
                name=f"{cfg.project}-{slot}-g{generation}",
                command=_command(release),
                environment={**(cfg.env or {}), **release.env, "WARDEN_RELEASE": release.tag},
                labels=labels,
                ports=[SERVER_PORT],
                host_config=host_config,
                networking_config=networking,
            )
        except docker.errors.ImageNotFound as exc:
            raise BackendError(
                f"start replica {slot}: image {image} is not on the engine; build or load it "
                "(Warden never pulls from a registry)"
            ) from exc
        except _ENGINE_ERRORS as exc:
            raise BackendError(f"start replica {slot}: cannot create the container: {exc}") from exc
        return str(created["Id"])

    def _remove_slot(self, slot: str) -> None:
        """Stop gracefully (a running one) and remove every container of ``slot``."""
        for summary in self._list([*self._scope(), f"{SLOT}={slot}"]):
            container_id = summary["Id"]
            self._ledger.plan(container_id)
            if summary.get("State") == "running":
                self._stop_gracefully(container_id)
            try:
                self._client.api.remove_container(container_id, v=True, force=True)
            except docker.errors.NotFound:
                continue
            except _ENGINE_ERRORS as exc:
                raise BackendError(f"remove replica {slot} ({container_id[:12]}): {exc}") from exc

    def _stop_gracefully(self, container_id: str) -> None:
        """SIGTERM plus SIGCONT (a SIGSTOPped server can then act on it), and wait up to the
        grace period; whatever still runs is killed by the forced remove that follows."""
        api = self._client.api
        try:
            api.kill(container_id, signal="SIGTERM")
            api.kill(container_id, signal="SIGCONT")
            api.wait(container_id, timeout=self._cfg.grace_s)
        except _ENGINE_ERRORS as exc:  # timed out, or exited already: the remove settles it
            log.debug("graceful stop of %s: %r", container_id[:12], exc)

    def _ensure_network(self) -> None:
        """Create ``backend.network`` (a bridge) when it does not exist yet."""
        name = self._cfg.network
        if not name or self._network_ready:
            return
        if not self._call("list networks", self._client.api.networks, names=[name]):
            log.info("creating Docker network %s", name)
            labels = {**(self._cfg.labels or {}), PROJECT: self._cfg.project}
            with contextlib.suppress(BackendError):  # created by someone else meanwhile
                self._call("create network", self._client.api.create_network, name, labels=labels)
        self._network_ready = True

    def _open_stats(self, container_id: str) -> Iterator[Mapping[str, Any]]:
        stream: Iterator[Mapping[str, Any]] = self._client.api.stats(
            container_id, decode=True, stream=True
        )
        return stream

    # --- what a container looks like ---------------------------------------------------------

    def _replica(self, summary: Mapping[str, Any]) -> Replica | None:
        details = self._inspect(summary["Id"], str(summary.get("State")))
        if details is None:
            return None  # removed between the list and the inspect
        network = self._cfg.network if self._cfg.via_network else None
        return replica_from(
            summary,
            details,
            url=url_from(summary, network),
            stopped_by_person=self._ledger.left_alone(summary["Id"]),
        )

    def _inspect(self, container_id: str, state: str) -> Details | None:
        """``inspect`` once per (container, listed state); events clear the cache."""
        key = (container_id, state)
        with self._lock:
            cached = self._details.get(key)
        if cached is not None:
            return cached
        try:
            info = self._client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        except _ENGINE_ERRORS as exc:
            raise BackendError(f"inspect {container_id[:12]}: {exc}; {SETUP_HINT}") from exc
        details = details_from(info, state)
        with self._lock:
            self._details = {k: v for k, v in self._details.items() if k[0] != container_id}
            self._details[key] = details
        return details

    # --- events -------------------------------------------------------------------------------

    def _connect_events(self) -> EventStream:
        stream: EventStream = self._client.events(
            decode=True, filters={"type": "container", "label": self._scope()}
        )
        return stream

    def _on_connected(self, again: bool) -> None:
        with self._lock:
            self._details.clear()  # the engine may have changed anything meanwhile
        self._network_ready = False
        if again:  # a tick now: containers died with the engine
            self._emit(
                EngineEvent(
                    at=self._clock.now(),
                    replica_id=SERVICE,
                    kind="reconnect",
                    detail="Docker engine events reconnected",
                )
            )

    def _on_lost(self, why: str) -> None:
        forgotten = self._ledger.engine_lost()
        if forgotten:
            log.warning(
                "forgetting %d stop(s) seen just before the engine went away (%s): "
                "dockerd stopping its containers, not a person",
                len(forgotten),
                why,
            )

    def _on_raw_event(self, raw: Mapping[str, Any]) -> None:
        event = parse_event(raw, SLOT)
        if event is None or not event.slot or event.action.startswith("exec_"):
            return  # exec_*: Docker's HEALTHCHECK runs, every few seconds; they change nothing
        with self._lock:
            self._details = {k: v for k, v in self._details.items() if k[0] != event.container_id}
        engine_event = self._translate(event)
        if engine_event is not None:
            self._emit(engine_event)

    def _translate(self, event: ContainerEvent) -> EngineEvent | None:
        """The ``EngineEvent`` to report for ``event`` (after updating the stop ledger)."""
        meaning = interpret(event, self._ledger)
        if meaning is None:
            return None
        kind, detail = meaning
        return EngineEvent(
            at=event.at or self._clock.now(),
            replica_id=event.slot,
            kind=kind,
            exit_code=event.exit_code if kind == "die" else None,
            detail=detail,
        )

    def _emit(self, event: EngineEvent) -> None:
        if event.kind in ("die", "oom", "unhealthy", "stop"):
            log.warning("replica %s: %s", event.replica_id, event.detail)
        self._inbox.put(event)


def _command(release: ReleaseSpec) -> list[str] | None:
    """The image's own command unless the release adds server flags (model, task, args)."""
    extra = [*(["--model", release.model] if release.model else [])]
    extra += ["--task", release.task] if release.task else []
    extra += list(release.args)
    if not extra:
        return None
    return ["python", "-m", "inference", "--host", "0.0.0.0", "--port", str(SERVER_PORT), *extra]  # noqa: S104


def _via_network(reach: str, network: str) -> bool:
    """Whether replica URLs use the container's IP on ``network`` (see ``backend.reach``)."""
    if reach == "network" and not network:
        raise BackendError("backend.reach is network but backend.network is not set; set both")
    in_container = Path("/.dockerenv").exists()
    return reach == "network" or (reach == "auto" and bool(network) and in_container)


def _host() -> str:
    return os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
