"""The agent heals a real model server (process backend), end to end.

Each test starts ``python -m agent agent`` with the shipped rules and the packaged default model,
injects a real fault from outside and waits (polling with deadlines) for the healed state.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.agent_harness import (
    RunningAgent,
    healing_rules,
    running_agent,
    swapped_intents,
)
from tests.reliability import record_agent

pytestmark = pytest.mark.integration


def _decisions(agent: RunningAgent, action: str) -> list[dict[str, Any]]:
    return [r for r in agent.audit() if r["kind"] == "decision" and r["action"] == action]


def _wait_serving_v1_again(agent: RunningAgent, what: str) -> None:
    """Until v1 is current again, nothing is in flight and its replica is ready."""
    agent.wait(
        lambda s: (
            s["current_release"] == "v1"
            and not s["in_flight"]
            and s["replicas"][0]["ready"]
            and s["replicas"][0]["release"] == "v1"
        ),
        what,
    )


def _good(agent: RunningAgent, tag: str) -> None:
    agent.wait(lambda s: s["last_good_release"] == tag, f"{tag} promoted good")


def test_killed_replica_is_restarted_and_the_audit_says_why(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with running_agent(tmp_path) as agent:
        agent.wait_serving("v1")
        (old_pid,) = agent.replica_pids()
        fault_at = time.time()
        os.kill(old_pid, signal.SIGKILL)
        healed = agent.wait(
            lambda s: s["replicas"][0]["ready"] and s["replicas"][0]["pid"] not in (None, old_pid),
            "the killed replica to be restarted and ready",
        )
        assert healed["replicas"][0]["release"] == "v1"
        restarts = _decisions(agent, "restart")
        assert [r["rule"] for r in restarts] == ["replica-exited"]
        assert restarts[0]["reason"] == (
            "restart inference-1: inference-1 exited (rule replica-exited)"
        )
        agent.wait(lambda s: not s["in_flight"], "the restart to be verified")
        (action,) = [a for a in agent.actions() if a["kind"] == "restart"]
        assert action["status"] == "verified"
        record_agent("server-crash", request, agent, fault_at)


def test_hung_replica_is_detected_by_health_timeouts_and_restarted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with running_agent(tmp_path) as agent:
        agent.wait_serving("v1")
        (old_pid,) = agent.replica_pids()
        fault_at = time.time()
        os.kill(old_pid, signal.SIGSTOP)
        agent.wait(
            lambda s: s["replicas"][0]["ready"] and s["replicas"][0]["pid"] not in (None, old_pid),
            "the hung replica to be replaced by a ready one",
        )
        (restart,) = _decisions(agent, "restart")
        assert restart["rule"] == "health-failures"
        assert "health failed 3 times in a row" in restart["reason"]
        record_agent("server-hang", request, agent, fault_at)


def test_bad_release_is_reverted_to_last_good_and_marked_bad(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bad_intents = swapped_intents(tmp_path / "swapped.yaml")
    with running_agent(tmp_path) as agent:
        agent.wait_serving("v1")
        _good(agent, "v1")
        fault_at = time.time()
        resp = agent.post("/api/deploy", {"tag": "v2", "args": ["--intents", str(bad_intents)]})
        assert resp.status_code == 202, resp.text
        _wait_serving_v1_again(agent, "the bad release to be reverted to v1")
        releases = {r["tag"]: r for r in agent.get("/api/releases")["releases"]}
        assert releases["v2"]["status"] == "bad"
        assert releases["v1"]["status"] == "good"
        (rollback,) = _decisions(agent, "rollback")
        # a baking release goes back fast: whichever candidate rule sees it first
        assert rollback["rule"] in ("candidate-canary-failing", "candidate-accuracy-decay")
        assert rollback["target_release"] in (None, "v1")
        record_agent("server-garbage", request, agent, fault_at)


def test_release_that_cannot_load_its_model_is_reverted(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{ this is not json")
    with running_agent(tmp_path) as agent:
        agent.wait_serving("v1")
        _good(agent, "v1")
        fault_at = time.time()
        resp = agent.post("/api/deploy", {"tag": "v3", "model": str(broken)})
        assert resp.status_code == 202, resp.text
        _wait_serving_v1_again(agent, "the broken release to be reverted to v1")
        releases = {r["tag"]: r for r in agent.get("/api/releases")["releases"]}
        assert releases["v3"]["status"] == "bad"
        assert len(_decisions(agent, "rollback")) == 1
        record_agent("server-no-load", request, agent, fault_at)


def test_invalid_rules_edit_keeps_the_last_valid_set_and_healing_goes_on(
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    rules = healing_rules(tmp_path)
    with running_agent(tmp_path, rules=rules) as agent:
        agent.wait_serving("v1")
        fault_at = time.time()
        (rules / "health.yaml").write_text("rules:\n  - name: broken\n    when: up >>> 1\n")
        doc = agent.wait(lambda s: bool(s["rules_problems"]), "the invalid edit to be reported")
        assert any("health.yaml:3" in p for p in doc["rules_problems"])
        assert any(r["kind"] == "rules-invalid" for r in agent.audit())
        (old_pid,) = agent.replica_pids()
        os.kill(old_pid, signal.SIGKILL)
        agent.wait(
            lambda s: s["replicas"][0]["ready"] and s["replicas"][0]["pid"] not in (None, old_pid),
            "the kept replica-exited rule to restart the replica",
        )
        assert [r["rule"] for r in _decisions(agent, "restart")] == ["replica-exited"]
        record_agent("rules-invalid", request, agent, fault_at)


def test_agent_killed_during_a_revert_finishes_it_exactly_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bad_intents = swapped_intents(tmp_path / "swapped.yaml")
    with running_agent(tmp_path) as agent:
        agent.wait_serving("v1")
        _good(agent, "v1")
        agent.post("/api/deploy", {"tag": "v2", "args": ["--intents", str(bad_intents)]})
        agent.wait(
            lambda s: any(a["kind"] == "rollback" for a in s["in_flight"]),
            "the rollback to start",
            timeout=90,
        )
        fault_at = time.time()
        agent.kill()
        agent.start()
        _wait_serving_v1_again(agent, "the restarted agent to finish the revert")
        rollbacks = [a for a in agent.actions() if a["kind"] == "rollback"]
        assert [a["status"] for a in rollbacks] == ["verified"]
        assert len(_decisions(agent, "rollback")) == 1
        assert any(r["kind"] == "resume" for r in agent.audit())
        record_agent("agent-kill-revert", request, agent, fault_at)
