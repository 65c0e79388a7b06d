"""Helpers for tests against a real Docker engine (fixtures are in conftest.py)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest


@dataclass
class Replica:
    """A running test container with its loopback URL."""

    container: Any
    port: int
    url: str
    image: str

    def logs(self, tail: int = 60) -> str:
        try:
            return str(self.container.logs(tail=tail).decode("utf-8", "replace"))
        except Exception as exc:
            return f"(no logs: {exc})"

    def status(self) -> str:
        self.container.reload()
        return str(self.container.status)


def host_port(container: Any, deadline: float) -> int:
    while True:
        container.reload()
        bindings = (container.attrs["NetworkSettings"]["Ports"] or {}).get("8000/tcp")
        if bindings:
            return int(bindings[0]["HostPort"])
        if container.status == "exited" or time.monotonic() > deadline:
            raise AssertionError(
                f"container {container.name} has no published port (status {container.status})"
            )
        time.sleep(0.1)


def wait_ready(replica: Replica, timeout: float = 90.0) -> dict[str, Any]:
    """Poll ``/ready`` until 200 or ``timeout``; fail with the last reason and the logs."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            try:
                response = http.get(f"{replica.url}/ready")
                if response.status_code == 200:
                    return dict(response.json())
                last = f"{response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if replica.status() in {"exited", "dead"}:
                raise AssertionError(
                    f"{replica.image} exited before ready; last /ready: {last}\n{replica.logs()}"
                )
            time.sleep(0.25)
    raise AssertionError(
        f"{replica.image} not ready within {timeout:.0f} s; last /ready: {last}\n{replica.logs()}"
    )


def wait_health(docker_client: Any, replica: Replica, want: str, timeout: float) -> str:
    """Poll ``State.Health.Status`` until ``want`` or ``timeout``; returns the last status."""
    deadline = time.monotonic() + timeout
    status = "none"
    while time.monotonic() < deadline:
        replica.container.reload()
        status = str(replica.container.attrs["State"].get("Health", {}).get("Status", "none"))
        if status == want:
            return status
        time.sleep(0.5)
    return status


def restart_engine(docker_client: Any, timeout: float = 90.0) -> float:
    """Restart the dockerd that scripts/engine.sh started: SIGTERM the pid in its pidfile, wait
    for it to exit, start it again with the very same command line and environment (read from
    /proc), and wait until it answers. Returns the seconds the engine was away."""
    import signal
    import subprocess

    pidfile = os.environ.get("WARDEN_DOCKER_PIDFILE", "/run/warden-docker.pid")
    log_path = os.environ.get("WARDEN_DOCKER_LOG", "/var/log/warden-docker.log")
    with open(pidfile, encoding="ascii") as handle:
        pid = int(handle.read().strip())
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        argv = [a.decode() for a in handle.read().split(b"\0") if a]
    with open(f"/proc/{pid}/environ", "rb") as handle:
        env = dict(e.decode().split("=", 1) for e in handle.read().split(b"\0") if b"=" in e)
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    deadline = started + timeout
    while os.path.exists(f"/proc/{pid}") and _not_zombie(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"dockerd (pid {pid}) still runs {timeout:.0f} s after SIGTERM")
        time.sleep(0.1)
    with open(log_path, "ab") as log:  # like engine.sh: setsid nohup dockerd ... >>LOG
        subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    while True:
        try:
            docker_client.ping()
            return time.monotonic() - started
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"dockerd did not answer again within {timeout:.0f} s"
                ) from exc
        time.sleep(0.2)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pause_container(container: Any, timeout: float = 30.0) -> None:
    """``docker pause``, retried: freezing a container that is busy (importing torch) sometimes
    fails with "unable to freeze" on this engine; a moment later it works."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            container.pause()
            return
        except Exception as exc:
            if "unable to freeze" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@contextmanager
def docker_host(host: str) -> Iterator[None]:
    """``DOCKER_HOST`` set to ``host`` meanwhile: an agent process started inside inherits it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCKER_HOST", host)
        yield


def remove_network(net: Any) -> bool:
    """Remove ``net``; False while tasks are still detaching from it (poll it)."""
    import docker.errors

    try:
        net.remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as exc:
        if "active endpoints" in str(exc) or "in use" in str(exc):
            return False
        raise
    return True


def free_ports(count: int) -> int:
    """A port p such that p .. p + count - 1 are free on every interface (host-mode ports)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            base = int(probe.getsockname()[1])
        if base + count < 65536 and all(_free(p) for p in range(base, base + count)):
            return base
    raise AssertionError(f"no {count} consecutive free ports found")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
