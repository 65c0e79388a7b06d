"""The fault matrix's results: each scenario test records what it measured; a full run writes
``docs/reliability.md`` (``pytest_sessionfinish`` in tests/conftest.py).

"Lost" is what the fault cost in Warden's promises: an action decided but never finished, one
finished twice, a decision without its audit records, an alert never delivered. Client requests
that a crashed single replica could not answer are not counted here; the benchmarks measure them.
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"


@dataclass(frozen=True, slots=True)
class Scenario:
    component: str
    fault: str
    expected: str  # what Warden must do


SCENARIOS: dict[str, Scenario] = {
    "server-crash": Scenario("model server", "crash (`kill -9`)", "restart"),
    "server-hang": Scenario("model server", "hang (`SIGSTOP`)", "restart after health timeouts"),
    "server-pause": Scenario("model server", "hang (`docker pause`)", "restart"),
    "server-slow": Scenario("model server", "slow (`docker update --cpus 0.05`)", "scale out"),
    "server-oom": Scenario("model server", "OOM (tiny memory limit)", "reported as OOM"),
    "server-garbage": Scenario("model server", "release answers garbage (canaries)", "revert"),
    "server-no-load": Scenario("model server", "release cannot load its model", "revert"),
    "server-all-down": Scenario("model server", "every replica down at once", "restart all"),
    "agent-kill-restart": Scenario("agent", "`kill -9` during a restart", "finish it once"),
    "agent-kill-scale": Scenario("agent", "`kill -9` during a scale-out", "finish it once"),
    "agent-kill-revert": Scenario("agent", "`kill -9` during a revert", "finish it once"),
    "agent-kill-reload": Scenario("agent", "`kill -9` during a rules reload", "new rules on start"),
    "engine-restart": Scenario("engine", "`dockerd` restarted mid-run", "reconnect, keep healing"),
    "engine-no-socket": Scenario(
        "engine", "Docker socket unavailable at agent start", "clear error, retry, no crash loop"
    ),
    "receiver-down": Scenario("receivers", "webhook down when the alert fires", "deliver later"),
    "receiver-500": Scenario("receivers", "webhook answers 500", "retry with backoff"),
    "receiver-slow": Scenario("receivers", "webhook slower than its timeout", "retry, deliver"),
    "rules-invalid": Scenario("rules", "invalid edit", "keep last valid, say so"),
    "rules-deleted": Scenario("rules", "rule file deleted", "its rules gone, others kept"),
    "rules-replaced": Scenario("rules", "file replaced atomically", "new rules at once"),
    "flapping": Scenario(
        "flapping", "replica killed again each time it is back", "bounded actions"
    ),
}


@dataclass(frozen=True, slots=True)
class Result:
    key: str
    lost: str  # "nothing", or what was lost
    healthy_after_s: float | None  # from the fault to healthy again (None: not applicable)
    actions: int  # remediation actions Warden took
    test: str
    note: str = ""


RESULTS: dict[str, Result] = {}


def record(
    key: str,
    *,
    lost: str,
    healthy_after_s: float | None,
    actions: int,
    test: str,
    note: str = "",
) -> None:
    """Record one scenario's outcome (the test asserts ``lost == "nothing"`` itself)."""
    if key not in SCENARIOS:
        raise KeyError(f"unknown fault scenario {key!r}; add it to tests/reliability.py")
    RESULTS[key] = Result(key, lost, healthy_after_s, actions, test, note)


def lost_in_audit(audit: list[dict[str, Any]], actions: list[dict[str, Any]]) -> str:
    """What the audit and action log lost: "nothing", or the first problem found.

    Every remediation action must be finished (verified or failed) exactly once, and every
    action must have its decision and its verify record in the audit log.
    """
    problems = []
    unfinished = [a for a in actions if a["status"] not in ("verified", "failed")]
    if unfinished:
        problems.append(f"{len(unfinished)} action(s) never finished")
    verifies: dict[str, int] = {}
    decided = set()
    for rec in audit:
        if rec.get("kind") == "verify" and rec.get("action_id"):
            verifies[rec["action_id"]] = verifies.get(rec["action_id"], 0) + 1
        if rec.get("kind") == "decision" and rec.get("action_id"):
            decided.add(rec["action_id"])
    for action in actions:
        if action["status"] not in ("verified", "failed"):
            continue
        n = verifies.get(action["id"], 0)
        if n != 1:
            problems.append(f"action {action['id']} verified {n} times in the audit")
        if action.get("rule") != "manual" and action["id"] not in decided:
            problems.append(f"action {action['id']} has no decision record")
    return "; ".join(problems) or "nothing"


def render() -> str:
    """docs/reliability.md from the recorded results (all scenarios must be there)."""
    code = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    rows = []
    for key, s in SCENARIOS.items():
        r = RESULTS[key]
        healthy = "–" if r.healthy_after_s is None else f"{r.healthy_after_s:.1f} s"
        note = f" {r.note}" if r.note else ""
        rows.append(
            f"| {s.component} | {s.fault} | {s.expected} | {r.lost} | {healthy} | {r.actions} "
            f"| `{r.test}`{note} |"
        )
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "# Reliability: the fault matrix\n\n"
        "Generated by the test suite (`bash scripts/test.sh`; `tests/reliability.py` collects, a\n"
        "full run rewrites this page). Every row is an automated scenario on real processes or\n"
        "real containers; its test fails if anything was lost or healing did not happen.\n\n"
        f"Last full run: {when}, code {code or 'unknown'}, {platform.machine()} "
        f"{platform.system()}, Python {platform.python_version()}.\n\n"
        '"Lost": actions decided but never finished or finished twice, decisions missing from\n'
        "the audit log, alerts never delivered. Requests a single crashed replica could not\n"
        'answer are not counted (docs/benchmarks.md measures recovery times). "Healthy after":\n'
        "from the fault to every replica serving again (or the alert delivered, for receivers).\n"
        '"Actions": remediation actions Warden took.\n\n'
        "| component | fault | expected | lost | healthy after | actions | test |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def write_if_complete() -> str:
    """Write docs/reliability.md when every scenario ran; say what happened."""
    missing = [k for k in SCENARIOS if k not in RESULTS]
    if not RESULTS:
        return ""
    if missing:
        return f"fault matrix: {len(missing)} scenario(s) not run, docs/reliability.md unchanged"
    DOC.write_text(render(), encoding="utf-8")
    return f"fault matrix: {len(RESULTS)} scenarios, wrote {DOC.relative_to(REPO)}"


def record_agent(key: str, request: Any, agent: Any, fault_at: float, note: str = "") -> None:
    """Record a scenario run against a ``RunningAgent``: asserts nothing was lost; counts the
    remediation actions decided since ``fault_at`` (wall clock); healthy = now."""
    healthy_after = time.time() - fault_at
    actions = agent.actions()
    lost = lost_in_audit(agent.audit(), actions)
    assert lost == "nothing", lost
    taken = [a for a in actions if a["rule"] != "manual" and a["at"] >= fault_at - 1.0]
    record(
        key,
        lost=lost,
        healthy_after_s=healthy_after,
        actions=len(taken),
        test=str(request.node.nodeid),
        note=note,
    )
