"""The Swarm backend: one Swarm service per Warden slot (``inference-1``, ``inference-2``...).

Each slot is a replicated service with one task, published in host mode on its own port
(``port + slot number - 1``: Swarm's ingress needs IPVS, and one host-mode port serves one task per
node). Labels on the service (``warden.service``, ``warden.slot``, ``warden.release``,
``warden.generation``) find the slots again after an agent restart; the same labels on the task's
container spec say what each *task* runs, so a task still being replaced reports its own release.

- ``start_replica`` creates the service, or updates it to the full spec Warden wants with
  ``ForceUpdate`` bumped: any release (not only Swarm's one previous spec) and a restart in one
  call. Swarm replaces the task stop-first (start-first with a host port never finishes).
- ``stop_replica`` scales the service to 0: the slot is then reported ``STOPPED``.
- Tasks never restart on their own (restart condition ``none``) and are not health-checked by
  Swarm (it would kill an unhealthy task; the one exception is the split by replicas below): a
  crash is an ``EXITED`` replica with the container's exit code, and Warden's probes and policy
  (backoff, budgets) decide the restart.
- Images are never resolved at a registry: the SDK talks to the Engine API, which (unlike the CLI
  without ``--no-resolve-image``) does not ask a registry for a digest; the engine is started with
  ``DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1`` so tasks use the local image.

Traffic split by replicas (``alias`` set, ``balancer.kind: replicas``): every slot service joins
``network`` with the network alias ``alias`` in DNS round-robin mode (``dnsrr``: Swarm's virtual
IP needs IPVS), so clients on that network reach each serving task about equally often, and a
release's share of the requests is its share of the tasks. Such tasks get a health check on
``/ready``: Swarm puts a task into DNS only once its check passed (and takes it out before
stopping it), so a replica still loading its model never gets a user's request. The check is
lenient (two minutes of failures before Swarm would act) so Warden's own probes and policy
decide first. The image must have ``python`` on its PATH (Warden's images do). A staged rollout's
canary replicas (``ReleaseSpec.user_traffic`` False) join the network without the alias: only the
agent reaches them. Candidate slots (``<service>-canary-N``) publish ``canary_port + N - 1``.

See docs/decisions.md ("One Swarm service per slot") for why not one service with N replicas.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Healthcheck,
    NetworkAttachmentConfig,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
    UpdateConfig,
)

from agent.backends.base import EventInbox, ReleaseSpec, ResourceSample
from agent.backends.docker_swarm_tasks import (
    LABEL_GENERATION,
    LABEL_RELEASE,
    LABEL_SERVICE,
    LABEL_SLOT,
    container_id,
    live_containers,
    replica_from,
    slot_number,
)
from agent.backends.docker_swarm_watch import Connect, EventStream, StatsSampler
from agent.clock import Clock, SystemClock
from agent.config import WardenConfig
from agent.domain import EngineEvent, Replica, ReplicaState
from agent.errors import BackendError

logger = logging.getLogger(__name__)

LABEL_BACKEND = "warden.backend"  # on containers: "swarm" (the docker backend owns warden.service)
SWARM_SERVICE_LABEL = "com.docker.swarm.service.name"  # set by Swarm on every task container
TARGET_PORT = 8000
# Swarm kills a task whose HEALTHCHECK turns unhealthy; Warden probes the replicas itself (with a
# startup grace and its policy), so the image's check is switched off for tasks.
NO_HEALTHCHECK = Healthcheck(test=["NONE"])
_S = 1_000_000_000  # the engine takes durations in nanoseconds
# When traffic is split by replicas: Swarm adds a task to the alias's DNS records only once this
# passes (the model is loaded), and would stop it only after 60 failures in a row (2 minutes).
READY_CHECK = Healthcheck(
    test=[
        "CMD",
        "python",
        "-c",
        "import sys, urllib.request; sys.exit(urllib.request.urlopen("
        f"'http://127.0.0.1:{TARGET_PORT}/ready', timeout=2).status != 200)",
    ],
    interval=2 * _S,
    timeout=2 * _S,
    retries=60,
    start_period=600 * _S,
)
STOP_POLL_S = 0.1  # how often a replacement polls for the old task to have stopped
STOP_SLACK_S = 5.0  # beyond the stop grace period: SIGKILL and the engine's bookkeeping
INIT_HINT = "docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377"


def connect_from_env() -> docker.DockerClient:
    """A client for the engine named by ``DOCKER_HOST`` (or the default socket)."""
    return docker.from_env(version="auto", timeout=60)


@dataclass(frozen=True, slots=True, kw_only=True)
class SwarmSettings:
    """How slots become services (from ``backend:`` in warden.yaml)."""

    service: str = "inference"
    image_repository: str = "warden-inference"  # releases without an image are its tags
    base_port: int = 8000  # published port of slot 1; slot N gets base_port + N - 1
    host: str = "127.0.0.1"  # where the agent reaches the published ports
    env: Mapping[str, str] | None = None
    memory_limit_bytes: int | None = None
    cpus: float | None = None
    network: str = ""
    alias: str = ""  # traffic split by replicas: the DNS name of the serving tasks on `network`
    canary_port: int = 0  # published port of <service>-canary-1; 0 = base_port + 100
    # Extra labels on the services, not on their containers: a container belongs to its service
    # (remove the service, not the container), and a sweep of labelled containers must not kill
    # tasks behind Swarm's back.
    labels: Mapping[str, str] | None = None
    stop_grace_s: float = 10.0
    stats_interval_s: float = 2.0


class SwarmBackend:
    """Replicas as single-task Swarm services (see module docstring)."""

    kind = "swarm"

    def __init__(
        self,
        settings: SwarmSettings,
        *,
        connect: Connect = connect_from_env,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._clock: Clock = clock or SystemClock()
        self._client = _checked_manager(connect)
        self._check_traffic_mode()
        self._lock = threading.Lock()  # guards the sets, events and callbacks below
        self._ops = threading.RLock()  # one create/update at a time
        self._inbox = EventInbox()
        self._planned: set[str] = set()  # containers Warden is stopping: their die is no event
        self._paused: set[str] = set()
        self._oom: set[str] = set()
        self._stats = StatsSampler(
            connect=connect, clock=self._clock, interval_s=settings.stats_interval_s
        )
        self._stream = EventStream(
            connect=connect,
            filters={
                "type": ["container", "service"],
                "event": ["die", "oom", "pause", "unpause", "remove"],
            },
            handle=self._on_engine_event,
            name=f"warden-swarm-events-{settings.service}",
        )

    @classmethod
    def from_config(cls, cfg: WardenConfig, *, clock: Clock | None = None) -> SwarmBackend:
        """The backend for ``backend: {kind: swarm}`` in warden.yaml (engine from DOCKER_HOST)."""
        b = cfg.backend
        memory = int(b.memory_limit_bytes) if b.memory_limit_bytes else None
        settings = SwarmSettings(
            service=cfg.service,
            image_repository=b.image,
            base_port=b.port,
            host=b.host,
            env=dict(b.env),
            memory_limit_bytes=memory,
            cpus=b.cpus,
            network=b.network,
            alias=cfg.traffic_alias(),
            canary_port=b.canary_port or 0,
        )
        return cls(settings, clock=clock)

    @property
    def events_connected(self) -> threading.Event:
        """Set while the events stream is open (a test waits for it before injecting faults)."""
        return self._stream.connected

    # --- Backend protocol ---------------------------------------------------------------------

    def list_replicas(self) -> list[Replica]:
        """Every slot service of this Warden service, with the state of its current task."""
        services = self._call("list services", self._client.api.services, filters=self._filter())
        if not services:
            return []
        ids = [s["ID"] for s in services]
        tasks = self._call("list tasks", self._client.api.tasks, filters={"service": ids})
        by_service: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for task in tasks:
            by_service.setdefault(task["ServiceID"], []).append(task)
        self._forget_gone({c for t in tasks if (c := container_id(t))})
        replicas = [self._replica(s, by_service[s["ID"]]) for s in services]
        return sorted(replicas, key=lambda r: slot_number(r.id))

    def start_replica(self, slot: str, release: ReleaseSpec, generation: int) -> Replica:
        """Create ``slot``'s service, or update it to ``release`` and restart its task."""
        with self._ops:
            self._require_image(self._image(release))
            current = self._inspect(slot)
            if current is None:
                spec = self._spec(slot, release, generation, force=0)
                self._call(f"create service {slot}", self._client.api.create_service, **spec)
                logger.info("created service %s (%s)", slot, release.tag)
            else:
                force = int(current["Spec"]["TaskTemplate"].get("ForceUpdate", 0)) + 1
                spec = self._spec(slot, release, generation, force=force)
                self._update(slot, current, spec)
                logger.info(
                    "updated service %s to %s (generation %d)", slot, release.tag, generation
                )
            return self._one(slot)

    def stop_replica(self, slot: str) -> None:
        """Scale ``slot``'s service to 0 (reported ``STOPPED``). No error if it does not exist."""
        with self._ops:
            current = self._inspect(slot)
            if current is not None:
                self._update(slot, current, {"mode": ServiceMode("replicated", 0)}, merge=True)

    def restart_replica(self, slot: str) -> None:
        """Replace ``slot``'s task with a new one of the same spec (``ForceUpdate`` + 1)."""
        with self._ops:
            current = self._inspect(slot)
            if current is None:
                raise BackendError(f"cannot restart replica {slot}: no Swarm service {slot}")
            template = dict(current["Spec"]["TaskTemplate"])
            template["ForceUpdate"] = int(template.get("ForceUpdate", 0)) + 1
            change = {"task_template": template, "mode": ServiceMode("replicated", 1)}
            self._update(slot, current, change, merge=True)

    def resources(self, replica: Replica) -> ResourceSample | None:
        """The task container's last ``docker stats`` sample (sampled in the background)."""
        if replica.container_id is None or replica.state is not ReplicaState.RUNNING:
            return None
        return self._stats.latest(replica.container_id)

    def drain_events(self) -> list[EngineEvent]:
        """Crash, OOM, pause and removal events since the last call."""
        return self._inbox.drain()

    def on_event(self, callback: Callable[[EngineEvent], None]) -> None:
        """Call ``callback`` from the events thread as soon as an event arrives."""
        self._inbox.subscribe(callback)

    def close(self) -> None:
        """Stop the background readers. Services keep running: the engine owns them."""
        self._stream.close()
        self._stats.close()
        self._client.close()

    def _check_traffic_mode(self) -> None:
        """Slot services keep the DNS mode, alias and health check they were made with until
        they are replaced; a config that changed ``balancer.kind`` to or from ``replicas`` must
        not leave some on the alias and some off (a "10 %" step could then be 100 %)."""
        want = "dnsrr" if self._settings.alias else "vip"
        services = self._call("list services", self._client.api.services, filters=self._filter())
        wrong = sorted(
            s["Spec"]["Name"]
            for s in services
            if (s["Spec"].get("EndpointSpec") or {}).get("Mode", "vip") != want
        )
        if wrong:
            self._client.close()
            raise BackendError(
                f"swarm: services {', '.join(wrong)} were made "
                + ("without" if want == "dnsrr" else "with")
                + " the split by replicas (balancer.kind replicas) that the config now "
                + ("asks for" if want == "dnsrr" else "does not")
                + "; remove them and the agent makes them again: docker service rm "
                + " ".join(wrong)
            )

    # --- specs ---------------------------------------------------------------------------------

    def _spec(self, slot: str, release: ReleaseSpec, generation: int, force: int) -> dict[str, Any]:
        """Everything Swarm needs for ``slot``: create and update send the same full spec."""
        s = self._settings
        marks = {
            LABEL_SERVICE: s.service,
            LABEL_SLOT: slot,
            LABEL_RELEASE: release.tag,
            LABEL_GENERATION: str(generation),
        }
        image = self._image(release)
        env = {**(s.env or {}), "WARDEN_RELEASE": release.tag, **release.env}
        container = ContainerSpec(
            image=image,
            args=self._args(image, release),
            env=[f"{k}={v}" for k, v in env.items()],
            labels={**marks, LABEL_BACKEND: "swarm"},
            stop_grace_period=int(s.stop_grace_s * 1e9),
            healthcheck=READY_CHECK if s.alias else NO_HEALTHCHECK,
        )
        resources = Resources(
            cpu_limit=int(s.cpus * 1e9) if s.cpus else None,
            mem_limit=s.memory_limit_bytes,
        )
        return {
            "name": slot,
            "labels": {**(s.labels or {}), **marks},
            "task_template": TaskTemplate(
                container_spec=container,
                resources=resources,
                restart_policy=RestartPolicy(condition="none"),
                force_update=force,
                networks=self._networks(release),
            ),
            "mode": ServiceMode("replicated", 1),
            "update_config": UpdateConfig(
                parallelism=1, order="stop-first", failure_action="continue"
            ),
            "endpoint_spec": EndpointSpec(
                mode="dnsrr" if s.alias else None,
                ports={self._port(slot): (TARGET_PORT, "tcp", "host")},
            ),
        }

    def _networks(self, release: ReleaseSpec) -> list[Any] | None:
        """The slot's network; with the traffic alias when it serves users (split by replicas)."""
        s = self._settings
        if not s.network:
            return None
        if not s.alias:
            return [s.network]
        aliases = [s.alias] if release.user_traffic else []
        return [NetworkAttachmentConfig(target=s.network, aliases=aliases)]

    def _args(self, image: str, release: ReleaseSpec) -> list[str] | None:
        """The image's command plus the release's server flags; None keeps the image's own."""
        flags = [*(["--model", release.model] if release.model else [])]
        flags += ["--task", release.task] if release.task else []
        flags += list(release.args)
        if not flags:
            return None
        try:
            command = self._client.images.get(image).attrs["Config"]["Cmd"] or []
        except docker.errors.DockerException as exc:
            raise BackendError(f"image {image}: {exc} (build or load it on this node)") from exc
        return [*command, *flags]

    def _image(self, release: ReleaseSpec) -> str:
        return release.image or f"{self._settings.image_repository}:{release.tag}"

    def _require_image(self, image: str) -> None:
        """Fail early and clearly: without a registry a task cannot get an image this node lacks
        (Swarm would only reject the task, "No such image")."""
        try:
            self._client.api.inspect_image(image)
        except docker.errors.ImageNotFound as exc:
            raise BackendError(
                f"image {image} is not on this node and no registry is used: build it "
                "(scripts/engine.sh) or `docker load` it first"
            ) from exc
        except docker.errors.DockerException as exc:
            raise BackendError(f"swarm: inspect image {image} failed: {_explain(exc)}") from exc

    def _port(self, slot: str) -> int:
        s = self._settings
        if slot.startswith(f"{s.service}-canary-"):  # a staged rollout's candidate replica
            port = (s.canary_port or s.base_port + 100) + slot_number(slot) - 1
        else:
            port = s.base_port + slot_number(slot) - 1
        if not 0 < port < 65536:
            raise BackendError(f"slot {slot}: port {port} is out of range (lower backend.port)")
        return port

    # --- talking to the engine -------------------------------------------------------------------

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except docker.errors.DockerException as exc:
            raise BackendError(f"swarm: {what} failed: {_explain(exc)}") from exc

    def _inspect(self, slot: str) -> dict[str, Any] | None:
        try:
            service: dict[str, Any] = self._client.api.inspect_service(slot)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise BackendError(f"swarm: inspect service {slot} failed: {_explain(exc)}") from exc
        owner = service["Spec"].get("Labels", {}).get(LABEL_SERVICE)
        if owner != self._settings.service:
            raise BackendError(
                f"a Swarm service named {slot} exists but is not Warden's (label {LABEL_SERVICE}="
                f"{owner!r}, expected {self._settings.service!r}); rename one of them"
            )
        return service

    def _update(
        self, slot: str, current: dict[str, Any], change: dict[str, Any], *, merge: bool = False
    ) -> None:
        """Update ``slot`` (retrying once if someone else updated it in between), then wait
        until the task it replaces has stopped: until then that task still answers on the
        slot's port, and a probe would take its answers for the new task's."""
        live = self._plan_stop(current["ID"])
        self._send_update(slot, current, change, merge=merge)
        self._await_stopped(slot, live)

    def _send_update(
        self, slot: str, current: dict[str, Any], change: dict[str, Any], *, merge: bool
    ) -> None:
        for attempt in (1, 2):
            try:
                self._client.api.update_service(
                    current["ID"], current["Version"]["Index"], fetch_current_spec=merge, **change
                )
                return
            except docker.errors.APIError as exc:
                if attempt == 2 or "out of sequence" not in str(exc):
                    raise BackendError(
                        f"swarm: update service {slot} failed: {_explain(exc)}"
                    ) from exc
                current = self._inspect(slot) or current

    def _plan_stop(self, service_id: str) -> set[str]:
        """Remember the containers an update is about to stop (their exits are not crashes);
        returns those that run now."""
        tasks = self._call("list tasks", self._client.api.tasks, filters={"service": service_id})
        with self._lock:
            self._planned |= {c for t in tasks if (c := container_id(t))}
        return live_containers(tasks)

    def _await_stopped(self, slot: str, containers: set[str]) -> None:
        """Poll ``containers`` until none runs (or the stop grace period has passed).

        The containers are asked, not the tasks: a task reports its shutdown seconds after its
        container has stopped."""
        deadline = self._clock.monotonic() + self._settings.stop_grace_s + STOP_SLACK_S
        while containers:
            containers = {c for c in containers if self._running(c)}
            if not containers:
                return
            if self._clock.monotonic() > deadline:
                logger.warning("service %s: old task still runs after the stop grace period", slot)
                return
            self._clock.sleep(STOP_POLL_S)

    def _running(self, container_id: str) -> bool:
        try:
            state = self._client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return False
        except docker.errors.DockerException as exc:
            raise BackendError(
                f"swarm: inspect container {container_id[:12]}: {_explain(exc)}"
            ) from exc
        return bool(state.get("Running"))

    def _one(self, slot: str) -> Replica:
        for replica in self.list_replicas():
            if replica.id == slot:
                return replica
        raise BackendError(f"swarm: service {slot} vanished right after it was started")

    def _forget_gone(self, known: set[str]) -> None:
        """Drop remembered containers whose tasks Swarm no longer keeps (bounded memory)."""
        with self._lock:
            self._planned &= known
            self._paused &= known
            self._oom &= known

    def _filter(self) -> dict[str, str]:
        return {"label": f"{LABEL_SERVICE}={self._settings.service}"}

    # --- what a slot looks like -------------------------------------------------------------

    def _replica(self, service: dict[str, Any], tasks: list[dict[str, Any]]) -> Replica:
        with self._lock:
            paused, oom = frozenset(self._paused), frozenset(self._oom)
        return replica_from(service, tasks, host=self._settings.host, paused=paused, oom=oom)

    # --- engine events -------------------------------------------------------------------------

    def _on_engine_event(self, raw: dict[str, Any]) -> None:
        event = self._translate(raw)
        if event is None:
            return
        logger.warning("replica %s: %s", event.replica_id, event.detail)
        self._inbox.put(event)

    def _translate(self, raw: dict[str, Any]) -> EngineEvent | None:
        """Our engine event for a raw one about this service's slots, else None."""
        actor = raw.get("Actor", {})
        attrs = actor.get("Attributes", {})
        action = raw.get("Action", "")
        if raw.get("Type") == "service":
            slot = attrs.get("name", "")
            if action != "remove" or not self._ours(slot):
                return None
            return self._event(slot, "removed", None, f"Swarm service {slot} was removed")
        slot = attrs.get(SWARM_SERVICE_LABEL, "")
        if attrs.get(LABEL_SERVICE) != self._settings.service or not self._ours(slot):
            return None
        container_id = actor.get("ID", "")
        return self._container_event(slot, container_id, action, attrs)

    def _container_event(
        self, slot: str, container_id: str, action: str, attrs: Mapping[str, str]
    ) -> EngineEvent | None:
        short = container_id[:12]
        with self._lock:
            if action in ("pause", "unpause"):
                (self._paused.add if action == "pause" else self._paused.discard)(container_id)
                return self._event(slot, action, None, f"container {short} {action}d")
            if action == "oom":
                self._oom.add(container_id)
                return self._event(slot, "oom", None, f"container {short} was OOM-killed")
            self._paused.discard(container_id)
            if container_id in self._planned:  # stopped by Warden's own update or scale
                self._planned.discard(container_id)
                return None
        code = int(attrs["exitCode"]) if attrs.get("exitCode", "").isdigit() else None
        return self._event(slot, "die", code, f"container {short} died (exit code {code})")

    def _event(self, slot: str, kind: str, code: int | None, detail: str) -> EngineEvent:
        return EngineEvent(
            at=self._clock.now(), replica_id=slot, kind=kind, exit_code=code, detail=detail
        )

    def _ours(self, slot: str) -> bool:
        prefix, _, number = slot.rpartition("-")
        service = self._settings.service
        return prefix in (service, f"{service}-canary") and number.isdigit()


def _checked_manager(connect: Connect) -> docker.DockerClient:
    """A client of an engine that is a Swarm manager, or a BackendError saying how to get one."""
    try:
        client = connect()
        swarm = client.info().get("Swarm", {})
    except docker.errors.DockerException as exc:
        raise BackendError(f"swarm: cannot reach the Docker engine: {_explain(exc)}") from exc
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        client.close()
        raise BackendError(
            f"swarm: this Docker engine is not a Swarm manager (state "
            f"{swarm.get('LocalNodeState')!r}); run `{INIT_HINT}` or use backend kind docker"
        )
    return client


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)
