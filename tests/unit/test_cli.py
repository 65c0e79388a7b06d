"""The warden command line: rules check / rules test output and exit codes, unreachable agent."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.rules import load_rules

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_RULES = REPO_ROOT / "rules"
T0 = 1_700_000_000.0
EXITED_RULE = """\
rules:
  - name: replica-exited
    when: exited == 1
    severity: critical
    actions: [alert, restart]
"""
BROKEN_RULES = """\
rules:
  - name: Latency
    when: latency_p95_ms >> 100
    severity: urgent
    actions: [alert, reboot]
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner in an empty directory (no ./warden.yaml) with no token in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WARDEN_TOKEN", raising=False)
    monkeypatch.delenv("WARDEN_CONFIG", raising=False)
    monkeypatch.delenv("WARDEN_API", raising=False)
    return CliRunner()


def unused_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def write_trace(path: Path, *signals: dict[str, dict[str, float]]) -> Path:
    lines = [json.dumps({"at": T0 + i, "signals": s}) for i, s in enumerate(signals)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_rules_check_on_the_shipped_rules_prints_the_count_and_exits_0(
    runner: CliRunner,
) -> None:
    count = len(load_rules(SHIPPED_RULES).rules)

    result = runner.invoke(app, ["rules", "check", str(SHIPPED_RULES)])

    assert result.exit_code == 0
    assert result.stdout == f"{SHIPPED_RULES}: {count} rules OK\n"


def test_rules_check_prints_every_problem_as_file_line_path_message_and_exits_1(
    runner: CliRunner, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    bad = rules / "latency.yaml"
    bad.write_text(BROKEN_RULES, encoding="utf-8")

    result = runner.invoke(app, ["rules", "check", str(rules)])

    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f'{bad}:2: rules[0].name: use lowercase letters, digits and "-" (like "latency-p95"); '
        'got "Latency"',
        f'{bad}:3: rules[0].when: unknown operator ">>"; use one of >, >=, <, <=, ==, !=',
        f'{bad}:4: rules[0].severity: unknown severity "urgent"; '
        "expected one of: info, warning, critical",
        f'{bad}:5: rules[0].actions[1]: unknown action "reboot"; '
        "expected one of: alert, restart, scale, rollback",
    ]


def test_rules_check_of_an_empty_directory_says_there_are_no_rule_files(
    runner: CliRunner, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()

    result = runner.invoke(app, ["rules", "check", str(empty)])

    assert result.exit_code == 1
    assert result.stdout == (
        f"{empty}:1: (file): no *.yaml rule files in this directory (besides canaries.yaml)\n"
    )


def test_rules_test_prints_when_a_rule_fires_and_resolves_over_a_trace(
    runner: CliRunner, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(EXITED_RULE, encoding="utf-8")
    trace = write_trace(
        tmp_path / "incident.jsonl",
        {"inference-1": {"exited": 0.0}},
        {"inference-1": {"exited": 1.0}},
        {"inference-1": {"exited": 0.0}},
    )

    result = runner.invoke(app, ["rules", "test", "--trace", str(trace), "--rules", str(rules)])

    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "+     1.0s firing   replica-exited on inference-1: inference-1 exited "
        "(rule replica-exited)",
        "+     2.0s resolved replica-exited on inference-1: inference-1 running again "
        "(rule replica-exited resolved)",
        "2 events over 3 ticks",
    ]


def test_rules_test_json_lists_the_events(runner: CliRunner, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(EXITED_RULE, encoding="utf-8")
    trace = write_trace(tmp_path / "t.jsonl", {"inference-1": {"exited": 1.0}})

    result = runner.invoke(
        app, ["rules", "test", "--trace", str(trace), "--rules", str(rules), "--json"]
    )

    assert result.exit_code == 0
    assert json.loads(result.stdout) == [
        {
            "at": T0,
            "kind": "firing",
            "reason": "inference-1 exited (rule replica-exited)",
            "rule": "replica-exited",
            "subject": "inference-1",
        }
    ]


def test_rules_test_reports_a_bad_trace_line_and_exits_1(runner: CliRunner, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(EXITED_RULE, encoding="utf-8")
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"at": 1, "signals": {}}\nnot json\n', encoding="utf-8")

    result = runner.invoke(app, ["rules", "test", "--trace", str(trace), "--rules", str(rules)])

    assert result.exit_code == 1
    assert result.stderr == f"{trace}:2: (line): not JSON: Expecting value (column 1)\n"


def test_status_with_no_agent_listening_exits_3_saying_it_cannot_reach_it(
    runner: CliRunner,
) -> None:
    api = f"http://127.0.0.1:{unused_loopback_port()}"

    result = runner.invoke(app, ["status", "--api", api])

    assert result.exit_code == 3
    assert result.stderr.startswith(f"error: cannot reach the Warden agent at {api} (")
    assert result.stderr.endswith(
        "). Start it with `warden up`, or point --api / WARDEN_API at it.\n"
    )


def test_maintenance_with_a_word_other_than_on_or_off_is_a_usage_error(
    runner: CliRunner,
) -> None:
    result = runner.invoke(app, ["maintenance", "maybe"])

    assert result.exit_code == 2
    assert result.stderr == "error: expected on or off, got 'maybe'\n"
