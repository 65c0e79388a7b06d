"""The fault matrix scenarios that the healing tests do not already cover, on real processes.

Each test injects one fault into a real agent (``python -m agent agent``) running real model
servers, waits for the healed state, checks that nothing was lost (``lost_in_audit``) and records
the outcome for docs/reliability.md (``tests/reliability.py``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.agent_harness import RunningAgent, healing_rules, running_agent
from tests.integration.polling import wait_until
from tests.reliability import lost_in_audit, record

pytestmark = pytest.mark.integration


def _nothing_lost(agent: RunningAgent) -> str:
    lost = lost_in_audit(agent.audit(), agent.actions())
    assert lost == "nothing", lost
    return lost


def _remediations(agent: RunningAgent, kind: str | None = None) -> list[dict[str, Any]]:
    return [a for a in agent.actions() if a["rule"] != "manual" and kind in (None, a["kind"])]


def _all_ready_on_new_pids(old: set[int]) -> Any:
    return lambda s: (
        len(s["replicas"]) == s["desired_replicas"]
        and all(r["ready"] and r["pid"] not in (None, *old) for r in s["replicas"])
        and not s["in_flight"]
    )


class SlowSink:
    """A webhook receiver that answers its first ``slow_first`` POSTs only after ``delay_s``."""

    def __init__(self, *, slow_first: int, delay_s: float) -> None:
        self.bodies: list[bytes] = []
        self.slow_left = slow_first
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at close: no handler outlives the test
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with sink.lock:
                    slow = sink.slow_left > 0
                    sink.slow_left -= 1
                if slow:
                    sink.release.wait(delay_s)  # the agent's timeout fires first
                else:
                    with sink.lock:
                        sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivered(self) -> int:
        with self.lock:
            return len(self.bodies)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_sink() -> Iterator[SlowSink]:
    sink = SlowSink(slow_first=2, delay_s=3.0)
    yield sink
    sink.close()


def test_every_replica_down_at_once_and_a_slow_receiver(
    request: pytest.FixtureRequest, tmp_path: Path, slow_sink: SlowSink
) -> None:
    """Both replicas killed together are both restarted; the alert reaches a receiver that
    timed out twice (timeout 500 ms, it answers after 3 s) once it answers in time."""
    extra = {
        "backend": {"kind": "process", "replicas": 2, "port": 0},
        # two model loads at once on two cores: a health probe may wait longer than 500 ms
        "probe": {"interval": "500ms", "timeout": "2s", "canary_interval": "2s"},
        "alerts": [{"kind": "webhook", "url": slow_sink.url, "timeout": "500ms"}],
    }
    with running_agent(tmp_path, extra=_with_port(extra)) as agent:
        agent.wait_serving("v1")
        pids = set(agent.replica_pids())
        assert len(pids) == 2
        fault_at = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        agent.wait(_all_ready_on_new_pids(pids), "both replicas restarted and ready", 180)
        healthy_after = time.monotonic() - fault_at
        restarts = _remediations(agent, "restart")
        assert sorted(a["subject"] for a in restarts) == ["inference-1", "inference-2"]
        lost = _nothing_lost(agent)
        record("server-all-down", lost=lost, healthy_after_s=healthy_after,
               actions=len(restarts), test=request.node.nodeid)  # fmt: skip
        wait_until(lambda: slow_sink.delivered() >= 1, timeout=60,
                   what="the alert delivered after two timeouts", logs=agent.logs)  # fmt: skip
        delivered_after = time.monotonic() - fault_at
        assert slow_sink.slow_left <= 0  # it really timed out before
        wait_until(lambda: agent.get("/api/status") is not None and _outbox_empty(agent),
                   timeout=60, what="the outbox to drain", logs=agent.logs)  # fmt: skip
        record("receiver-slow", lost="nothing", healthy_after_s=delivered_after, actions=0,
               test=request.node.nodeid,
               note="(alert delivered)")  # fmt: skip


def _with_port(extra: dict[str, Any]) -> dict[str, Any]:
    from tests.integration.conftest import free_port

    backend = dict(extra["backend"])
    backend["port"] = free_port()
    return {**extra, "backend": backend}


def _outbox_empty(agent: RunningAgent) -> bool:
    text = str(agent.get_text("/metrics"))
    for line in text.splitlines():
        if line.startswith("warden_alerts_pending "):
            return float(line.split()[1]) == 0
    return False


def test_agent_killed_during_a_restart_finishes_it_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with running_agent(tmp_path) as agent:
        agent.wait_serving("v1")
        (old_pid,) = agent.replica_pids()
        fault_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        agent.wait(lambda s: any(a["kind"] == "restart" for a in s["in_flight"]),
                   "the restart to be in flight", 60)  # fmt: skip
        agent.kill()
        agent.start()
        agent.wait(_all_ready_on_new_pids({old_pid}), "the new agent to finish the restart")
        healthy_after = time.monotonic() - fault_at
        restarts = _remediations(agent, "restart")
        assert [a["status"] for a in restarts] == ["verified"]
        assert any(r["kind"] == "resume" for r in agent.audit())
        record("agent-kill-restart", lost=_nothing_lost(agent), healthy_after_s=healthy_after,
               actions=len(restarts), test=request.node.nodeid)  # fmt: skip


SCALE_RULE = """\
rules:
  - name: always-scale
    when: replicas_ready >= 1
    severity: info
    actions: [scale]
    description: Scale out as soon as one replica serves (a test's way to start a scale-out).
"""


def test_agent_killed_during_a_scale_out_finishes_it_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    rules = healing_rules(tmp_path)
    (rules / "scale.yaml").write_text(SCALE_RULE)
    extra = {"backend": {"kind": "process", "replicas": 1, "max_replicas": 2, "port": 0}}
    with running_agent(tmp_path, rules=rules, extra=_with_port(extra)) as agent:
        agent.wait(lambda s: any(a["kind"] == "scale" for a in s["in_flight"]),
                   "the scale-out to be in flight", 120)  # fmt: skip
        fault_at = time.monotonic()
        agent.kill()
        agent.start()
        agent.wait(
            lambda s: (
                s["desired_replicas"] == 2
                and len(s["replicas"]) == 2
                and all(r["ready"] for r in s["replicas"])
                and not s["in_flight"]
            ),
            "the new agent to finish the scale-out",
            180,
        )
        healthy_after = time.monotonic() - fault_at
        scales = _remediations(agent, "scale")
        assert [a["status"] for a in scales] == ["verified"]  # once, and no third replica
        assert len(agent.status()["replicas"]) == 2
        record("agent-kill-scale", lost=_nothing_lost(agent), healthy_after_s=healthy_after,
               actions=len(scales), test=request.node.nodeid)  # fmt: skip


EXTRA_RULE = """\
rules:
  - name: extra-{n}
    when: health_failures >= 100
    severity: info
    actions: [alert]
    description: A rule that never fires; its name says which edit is in effect.
"""


def _replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rule_names(agent: RunningAgent) -> set[str]:
    return {r["name"] for r in agent.get("/api/rules")["rules"]}


def test_rules_deleted_replaced_and_a_kill_during_a_reload(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    rules = healing_rules(tmp_path)
    extra_file = rules / "extra.yaml"
    extra_file.write_text(EXTRA_RULE.format(n=1))
    with running_agent(tmp_path, rules=rules) as agent:
        agent.wait_serving("v1")
        assert "extra-1" in _rule_names(agent)

        # a file deleted: its rules go, the others stay
        t0 = time.monotonic()
        extra_file.unlink()
        agent.wait(lambda s: True, "status")  # the agent answers
        wait_until(lambda: "extra-1" not in _rule_names(agent), timeout=30,
                   what="the deleted file's rule gone", logs=agent.logs)  # fmt: skip
        assert "replica-exited" in _rule_names(agent) and not agent.status()["rules_problems"]
        record("rules-deleted", lost="nothing", healthy_after_s=time.monotonic() - t0, actions=0,
               test=request.node.nodeid,
               note="(rules reloaded)")  # fmt: skip

        # a file replaced atomically (rename over it): the new rules at once
        t0 = time.monotonic()
        _replace_atomically(extra_file, EXTRA_RULE.format(n=2))
        wait_until(lambda: "extra-2" in _rule_names(agent), timeout=30,
                   what="the replaced file's rule in effect", logs=agent.logs)  # fmt: skip
        record("rules-replaced", lost="nothing", healthy_after_s=time.monotonic() - t0, actions=0,
               test=request.node.nodeid,
               note="(rules reloaded)")  # fmt: skip

        # kill -9 right after an atomic edit: the next agent starts on the edited rules
        _replace_atomically(extra_file, EXTRA_RULE.format(n=3))
        t0 = time.monotonic()
        agent.kill()
        agent.start()
        wait_until(lambda: agent.try_status() is not None, timeout=60,
                   what="the new agent answering", logs=agent.logs)  # fmt: skip
        names = _rule_names(agent)
        assert "extra-3" in names and "extra-2" not in names
        agent.wait_serving("v1")  # the replica was adopted, not lost
        healthy_after = time.monotonic() - t0
        record("agent-kill-reload", lost=_nothing_lost(agent), healthy_after_s=healthy_after,
               actions=len(_remediations(agent)),
               test=request.node.nodeid)  # fmt: skip


def test_docker_socket_unavailable_at_start_is_one_clear_error_and_no_crash_loop(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{missing}")
    extra = {
        "backend": {"kind": "docker", "image": "warden-inference", "replicas": 1, "port": 8000}
    }
    with running_agent(tmp_path, extra=extra) as agent:
        status = agent.wait(lambda s: bool(s.get("engine_problem")), "the engine problem reported")
        assert str(missing) in status["engine_problem"]
        started = agent.process.pid if agent.process else None
        # it keeps ticking (and retrying) without exiting: several ticks later, same process
        ticks_before = _ticks(agent)
        wait_until(lambda: _ticks(agent) >= ticks_before + 5, timeout=30,
                   what="five more ticks", logs=agent.logs)  # fmt: skip
        assert agent.process is not None and agent.process.poll() is None
        assert agent.process.pid == started
        assert psutil.Process(started).is_running()
        events = agent.get("/api/events")["events"]
        events = [e for e in events if e["kind"] == "engine-unreachable"]
        assert len(events) == 1, events  # said once per outage, not once per tick
        log = agent.logs()
        assert log.count("retrying every tick") == 1
        assert "DOCKER_HOST" in log or "scripts/engine.sh" in log  # says what to do
        record("engine-no-socket", lost=_nothing_lost(agent), healthy_after_s=None, actions=0,
               test=request.node.nodeid,
               note="(agent up, 1 error line)")  # fmt: skip


def _ticks(agent: RunningAgent) -> float:
    for line in str(agent.get_text("/metrics")).splitlines():
        if line.startswith("warden_tick_duration_seconds_count"):
            return float(line.split()[-1])
    return 0.0


def test_flapping_replica_gets_a_bounded_number_of_restarts(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The replica is killed again each time it is back; the hourly budget (3) bounds the
    restarts, the rest are held and said so, and no restart storm follows."""
    extra = {
        "policy": {
            "bake": "2s",
            "cooldown": "1s",
            "verify_timeout": "60s",
            "actions_per_hour": 3,
            "crash_loop_backoff_initial": "1s",
            "crash_loop_backoff_max": "2s",
        }
    }
    with running_agent(tmp_path, extra=extra) as agent:
        agent.wait_serving("v1")
        killed: set[int] = set()
        for _ in range(4):
            (pid,) = agent.replica_pids()
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
            if len(killed) == 4:
                break
            agent.wait(_all_ready_on_new_pids(killed), "the replica back", 120)
        agent.wait(lambda s: bool(_held_by_budget(agent)), "a restart held by the budget", 60)
        remediations = _remediations(agent)
        assert len(remediations) <= 3, remediations  # the budget, not one per kill
        assert all(a["status"] in ("verified", "failed") for a in remediations)
        restarts = remediations
        record("flapping", lost=_nothing_lost(agent), healthy_after_s=None, actions=len(restarts),
               test=request.node.nodeid,
               note="(4 kills; 4th held by the budget, alerted)")  # fmt: skip


def _held_by_budget(agent: RunningAgent) -> list[dict[str, Any]]:
    return [
        r
        for r in agent.audit()
        if r["kind"] == "decision" and "budget" in str(r.get("held_because"))
    ]
