"""HAProxy in front of the replicas: its config, its runtime API, and its process.

The agent writes the config HAProxy starts with: a frontend on the public address, one backend of
``slots`` pre-declared servers (all in maintenance until the agent gives one an address), HAProxy's
own ``/ready`` health check on each (it takes a dead server out by itself; the agent's decisions
stay the agent's), and retries with redispatch so a connection refused by a stopping replica is
retried on another one instead of failing the client. After start, everything goes through the
runtime API on the admin socket (``set server … addr``, ``weight``, ``enable/disable server``): no
reload, no dropped connection.

HAProxy runs as its own daemon (``-D``) with a pid file next to the config, so it keeps serving
while the agent restarts; a restarted agent adopts it through the socket. ``external``: HAProxy is
someone else's process (docker-compose.yml's ``haproxy`` service, sharing ``directory``): the agent
only writes the config it starts (or reloads) with and waits for its socket.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import BackendError

log = logging.getLogger(__name__)

BACKEND = "replicas"
MAX_WEIGHT = 256  # HAProxy's absolute weight range is 0..256


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerState:
    """One pre-declared server as ``show stat`` reports it."""

    name: str
    address: str  # "host:port"; "127.0.0.1:1" while unassigned
    weight: int
    status: str  # UP, DOWN, MAINT, DRAIN, "no check"...
    sessions: int  # current connections (scur)
    total: int  # sessions since start (stot)
    responses_5xx: int


def render_config(
    *, bind: str, socket_path: Path, slots: int, check_interval_ms: int = 1000
) -> str:
    """The HAProxy config the agent starts it with (``haproxy -c`` accepts it)."""
    servers = "\n".join(f"    server s{i} 127.0.0.1:1" for i in range(1, slots + 1))
    return f"""# Written by the Warden agent, which changes servers through the runtime API.
global
    stats socket {socket_path} mode 600 level admin
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    # A replica being stopped refuses or drops a connection: retry it on another server.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend public
    bind {bind}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option httpchk GET /ready
    http-check expect status 200
    default-server inter {check_interval_ms} fall 2 rise 1 weight 0 disabled check
{servers}
"""


class Runtime:
    """HAProxy's runtime API on its admin (unix) socket; one command per connection."""

    def __init__(self, socket_path: Path, timeout_s: float = 2.0) -> None:
        self.socket_path = socket_path
        self._timeout_s = timeout_s

    def command(self, line: str) -> str:
        """Send one command and return HAProxy's answer (raises ``BackendError`` on failure)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self._timeout_s)
                sock.connect(str(self.socket_path))
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise BackendError(f"HAProxy admin socket {self.socket_path}: {exc}") from exc
        return b"".join(chunks).decode(errors="replace").strip()

    def answers(self) -> bool:
        try:
            self.command("show info")
        except BackendError:
            return False
        return True

    def worker_pid(self) -> str | None:
        """The answering process's ``Pid`` (changes when HAProxy reloads); None when silent."""
        try:
            info = self.command("show info")
        except BackendError:
            return None
        for line in info.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Pid":
                return value.strip()
        return ""

    def _ok(self, line: str) -> None:
        answer = self.command(line)
        # Success is an empty answer, or an informational one about an address/port change.
        if answer and not answer.startswith(("no need to change", "IP changed", "port changed")):
            raise BackendError(f"HAProxy refused {line!r}: {answer}")

    def set_address(self, server: str, host: str, port: int) -> None:
        self._ok(f"set server {BACKEND}/{server} addr {host} port {port}")

    def set_weight(self, server: str, weight: int) -> None:
        self._ok(f"set server {BACKEND}/{server} weight {max(0, min(MAX_WEIGHT, weight))}")

    def enable(self, server: str) -> None:
        self._ok(f"enable server {BACKEND}/{server}")

    def disable(self, server: str) -> None:
        self._ok(f"disable server {BACKEND}/{server}")

    def servers(self) -> dict[str, ServerState]:
        """Every server of the backend, by name, from ``show stat``."""
        text = self.command("show stat").lstrip("# ")
        out = {}
        for row in csv.DictReader(text.splitlines()):
            if row.get("pxname") != BACKEND or row.get("svname") in ("BACKEND", "FRONTEND"):
                continue
            out[row["svname"]] = ServerState(
                name=row["svname"],
                address=row.get("addr", ""),
                weight=_int(row.get("weight")),
                status=row.get("status", ""),
                sessions=_int(row.get("scur")),
                total=_int(row.get("stot")),
                responses_5xx=_int(row.get("hrsp_5xx")),
            )
        return out


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class HaproxyProcess:
    """Starts HAProxy with the agent's config, or adopts the one a previous agent started."""

    def __init__(
        self,
        *,
        directory: Path,
        bind: str,
        slots: int,
        binary: str = "haproxy",
        stop_on_close: bool = True,
        external: bool = False,
        external_timeout_s: float = 60.0,
    ) -> None:
        self.directory = directory
        self.bind = bind
        self.slots = slots
        self.binary = binary
        self.external = external
        self.external_timeout_s = external_timeout_s
        self.stop_on_close = stop_on_close and not external
        self.config_path = directory / "haproxy.cfg"
        self.pid_path = directory / "haproxy.pid"
        self.runtime = Runtime(directory / "haproxy.sock")
        self.adopted = False

    @staticmethod
    def available(binary: str = "haproxy") -> bool:
        return shutil.which(binary) is not None

    def start(self) -> Runtime:
        """HAProxy answering on its admin socket: adopted when already running, else started."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = render_config(
            bind=self.bind, socket_path=self.runtime.socket_path, slots=self.slots
        )
        if self.runtime.answers() and self._config_unchanged(config):
            self.adopted = True
            log.info("haproxy: adopted the running instance (pid %s)", self._pid())
            return self.runtime
        if self.external:
            return self._start_external(config)
        self.stop()  # a different config or a dead socket: start afresh
        self._write(config)
        binary = shutil.which(self.binary)
        if binary is None:
            raise BackendError(
                f"{self.binary} is not installed: staged rollouts need HAProxy "
                "(Debian: apt-get install haproxy; or bash scripts/observability.sh)"
            )
        argv = [binary, "-f", str(self.config_path), "-D", "-p", str(self.pid_path)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise BackendError(
                f"haproxy did not start on {self.bind}: {(done.stderr or done.stdout).strip()}"
            )
        deadline = time.monotonic() + 10.0
        while not self.runtime.answers():
            if time.monotonic() > deadline:
                raise BackendError(f"haproxy started but {self.runtime.socket_path} never answered")
            time.sleep(0.05)
        log.info("haproxy: serving %s (pid %s)", self.bind, self._pid())
        return self.runtime

    def _write(self, config: str) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(config)
        os.replace(tmp, self.config_path)

    def _start_external(self, config: str) -> Runtime:
        """Write the config an external HAProxy starts with (its entrypoint waits for the file
        and reloads on a change), then wait for a fresh process to answer on the socket."""
        before = self.runtime.worker_pid()  # the old worker's, when the config changed
        self._write(config)
        log.info("haproxy (external): wrote %s; waiting for its socket", self.config_path)
        deadline = time.monotonic() + self.external_timeout_s
        while (pid := self.runtime.worker_pid()) is None or (before and pid == before):
            if time.monotonic() > deadline:
                raise BackendError(
                    f"the external HAProxy did not answer on {self.runtime.socket_path} within "
                    f"{self.external_timeout_s:.0f} s after the agent wrote {self.config_path} "
                    "(is the haproxy service running with this directory mounted?)"
                )
            time.sleep(0.2)
        log.info("haproxy (external): serving %s (pid %s)", self.bind, pid)
        return self.runtime

    def _config_unchanged(self, config: str) -> bool:
        try:
            return self.config_path.read_text() == config
        except OSError:
            return False

    def _pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop the HAProxy of this directory (if any) and wait for it to be gone."""
        pid = self._pid()
        if pid is None:
            return
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            raise BackendError(f"cannot stop haproxy pid {pid}: {exc}") from exc
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.stop_on_close:
            self.stop()


def assignments(
    servers: Mapping[str, ServerState], targets: Sequence[tuple[str, str]]
) -> dict[str, str]:
    """Which server holds each target ``(slot, "host:port")``: kept where its address already is
    (an adopted HAProxy), else the first free server. Raises when there are more targets than
    servers."""
    by_address = {s.address: name for name, s in servers.items() if s.status != "MAINT"}
    chosen: dict[str, str] = {}
    for slot, address in targets:
        if address in by_address and by_address[address] not in chosen.values():
            chosen[slot] = by_address[address]
    free = [name for name in _ordered(servers) if name not in chosen.values()]
    for slot, _ in targets:
        if slot in chosen:
            continue
        if not free:
            raise BackendError(
                f"more replicas than HAProxy server slots ({len(servers)}); raise balancer.slots"
            )
        chosen[slot] = free.pop(0)
    return chosen


def _ordered(servers: Mapping[str, ServerState]) -> list[str]:
    return sorted(servers, key=lambda n: int(n[1:]) if n[1:].isdigit() else 0)
