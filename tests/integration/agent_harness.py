"""A real agent process (``python -m agent agent --config ...``) for integration tests.

The agent runs the real model server as its process-backend replicas on loopback ports. Tests
drive it only from outside, as an operator would: HTTP API, signals to processes, files.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from tests.integration.conftest import REPO_ROOT, free_port
from tests.integration.polling import wait_until

AGENT_START_S = 120.0


@dataclass
class RunningAgent:
    """Handle on an agent process and its state directory."""

    root: Path
    config_path: Path
    api: str
    server_port: int
    token: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    # --- process control ---------------------------------------------------------------------

    def start(self) -> None:
        self.log_path = self.root / f"agent-{len(list(self.root.glob('agent-*.log')))}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WARDEN_TOKEN": self.token}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "agent", "--config", str(self.config_path)],
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """kill -9 the agent (its replicas live on, as they would in production)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("*.log")))

    # --- observing -----------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        return httpx.get(self.api + path, timeout=5.0).json()

    def get_text(self, path: str) -> str:
        return httpx.get(self.api + path, timeout=5.0).text

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            self.api + path,
            json=body,
            timeout=10.0,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/api/status")
        return result

    def try_status(self) -> dict[str, Any] | None:
        try:
            return self.status()
        except (httpx.HTTPError, ValueError):
            return None

    def audit(self) -> list[dict[str, Any]]:
        path = self.root / "state" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def actions(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/actions")["actions"]
        return result

    def wait(
        self, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = 90.0
    ) -> dict[str, Any]:
        """Poll /api/status until ``condition(status)`` holds; return that status."""
        found: dict[str, Any] = {}

        def check() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"agent exited ({self.process.returncode}):\n{self.logs()}")
            doc = self.try_status()
            if doc is not None and condition(doc):
                found.update(doc)
                return True
            return False

        wait_until(check, timeout=timeout, what=what, logs=self.logs)
        return found

    def wait_serving(self, release: str, timeout: float = AGENT_START_S) -> dict[str, Any]:
        """Until every replica runs ``release`` and is ready."""
        return self.wait(
            lambda s: (
                bool(s["replicas"])
                and all(r["ready"] and r["release"] == release for r in s["replicas"])
                and len(s["replicas"]) == s["desired_replicas"]
            ),
            f"all replicas ready on {release}",
            timeout,
        )

    def replica_pids(self) -> list[int]:
        return [r["pid"] for r in self.status()["replicas"] if r["pid"]]


def write_config(root: Path, *, rules: Path, extra: dict[str, Any] | None = None) -> Path:
    """A warden.yaml for a test: process backend on free ports, fast probes, short bake."""
    config = {
        "service": "inference",
        "backend": {"kind": "process", "replicas": 1, "port": free_port()},
        "release": {"tag": "v1"},
        "probe": {"interval": "500ms", "timeout": "500ms", "canary_interval": "2s"},
        "rules": str(rules),
        "canaries": str(REPO_ROOT / "rules" / "canaries.yaml"),
        "state_dir": str(root / "state"),
        "api": {"bind": f"127.0.0.1:{free_port()}"},
        "policy": {"bake": "2s", "cooldown": "20s", "verify_timeout": "60s"},
        **(extra or {}),
    }
    path = root / "warden.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def healing_rules(root: Path) -> Path:
    """The shipped rules without the performance ones (latency, resources).

    Healing scenarios must not depend on how loaded the test machine is: on 2 busy cores a model
    load pushes p95 latency past 100 ms, and a scale-out in flight would hold the action under
    test. The performance rules have their own tests.
    """
    rules = root / "rules"
    rules.mkdir(exist_ok=True)
    for file in (REPO_ROOT / "rules").glob("*.yaml"):
        if file.name not in ("latency.yaml", "resources.yaml"):
            (rules / file.name).write_bytes(file.read_bytes())
    return rules


@contextmanager
def running_agent(
    root: Path, *, rules: Path | None = None, extra: dict[str, Any] | None = None
) -> Iterator[RunningAgent]:
    """Start an agent in ``root``; always stop it and every replica it started."""
    config_path = write_config(root, rules=rules or healing_rules(root), extra=extra)
    config = yaml.safe_load(config_path.read_text())
    agent = RunningAgent(
        root=root,
        config_path=config_path,
        api=f"http://{config['api']['bind']}",
        server_port=config["backend"]["port"],
        token="test-token",
    )
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        _kill_leftover_replicas(root / "state")


def _kill_leftover_replicas(state: Path) -> None:
    """Replicas (and HAProxy) survive a kill -9 of their agent by design; a test must not leak
    them."""
    pid_file = state / "haproxy" / "haproxy.pid"
    if pid_file.exists():
        with contextlib.suppress(psutil.Error, ValueError, IndexError):
            psutil.Process(int(pid_file.read_text().split()[0])).kill()
    path = state / "replicas.json"
    if not path.exists():
        return
    for entry in json.loads(path.read_text()).get("replicas", {}).values():
        pid = entry.get("pid")
        if not pid:
            continue
        try:
            proc = psutil.Process(pid)
            if "inference" in " ".join(proc.cmdline()):
                proc.kill()
        except psutil.Error:
            pass


def swapped_intents(path: Path) -> Path:
    """An intents file with the labels of the default intents swapped in pairs: a release
    whose model serves fine but answers wrongly (its canaries fail)."""
    data = yaml.safe_load((REPO_ROOT / "inference" / "intents.yaml").read_text())
    labels = [i["label"] for i in data["intents"]]
    swap = {labels[0]: labels[1], labels[1]: labels[0], labels[2]: labels[3], labels[3]: labels[2]}
    for intent in data["intents"]:
        intent["label"] = swap[intent["label"]]
    path.write_text(yaml.safe_dump(data))
    return path
