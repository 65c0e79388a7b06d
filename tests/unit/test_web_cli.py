"""The CLI against the agent's HTTP API: tables and --json, deploy --wait progress, events
--follow, one-line errors that say what to do, and an example in every command's --help.

The CLI's HTTP calls go to the real API app (``create_api``) over a TestClient, with an agent
built from fakes whose clock only moves when a test says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import agent.cli_progress as progress
from agent import cli
from agent.api import create_api
from agent.backends.base import ReleaseSpec
from agent.cli import app
from agent.loop import Agent
from tests.unit.test_web import TOKEN, agent  # noqa: F401 (the fixture)

API = "http://127.0.0.1:9400"
Hook = Callable[[str, str], None]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """In an empty directory, with the agent's token in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WARDEN_TOKEN", TOKEN)
    monkeypatch.delenv("WARDEN_CONFIG", raising=False)
    monkeypatch.setenv("WARDEN_API", API)
    return CliRunner()


@pytest.fixture
def served(
    agent: Agent,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[Hook]]:
    """Route the CLI's requests to the API app; hooks run before each request (to tick)."""
    hooks: list[Hook] = []
    client = TestClient(create_api(agent, token=TOKEN))

    def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.pop("timeout", None)
        for hook in hooks:
            hook(method, url)
        return client.request(method, url, **kwargs)

    monkeypatch.setattr(httpx, "request", request)
    yield hooks
    client.close()


def ticks(agent: Agent, count: int) -> None:  # noqa: F811
    for _ in range(count):
        agent.tick()
        agent.clock.sleep(1.0)


def test_status_prints_an_aligned_table_without_colour_when_piped(
    runner: CliRunner,
    agent: Agent,  # noqa: F811
    served: list[Hook],
) -> None:
    ticks(agent, 2)

    result = runner.invoke(app, ["status"])

    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "release v1 (candidate), last good -, fake backend"
    header = next(line for line in lines if line.startswith("REPLICA"))
    row = next(line for line in lines if line.startswith("inference-1"))
    assert row.index("running") == header.index("STATE")
    assert row.index("4242") == header.index("PID")


def test_status_json_is_the_api_document(
    runner: CliRunner,
    agent: Agent,  # noqa: F811
    served: list[Hook],
) -> None:
    ticks(agent, 2)

    result = runner.invoke(app, ["status", "--json"])

    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert (doc["current_release"], doc["replicas"][0]["pid"]) == ("v1", 4242)


def test_releases_table_says_how_far_each_release_got(
    runner: CliRunner,
    agent: Agent,  # noqa: F811
    served: list[Hook],
) -> None:
    long_reason = "baked 300 s with canaries passing and no rule firing; " * 3
    agent.store.mark_good("v1", agent.clock.now() + 45, long_reason)
    agent.clock.sleep(100)
    agent.deploy(ReleaseSpec(tag="v2"))

    result = runner.invoke(app, ["releases"])

    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 3  # piped: a long reason does not wrap a row onto more lines
    assert lines[0].split()[:4] == ["RELEASE", "STATUS", "HOW", "FAR"]
    assert lines[1].split()[:4] == ["v2", "candidate", "rolling", "out"]
    assert lines[2].split()[:5] == ["v1", "good", "good", "after", "45"]


def test_deploy_wait_prints_progress_lines_and_exits_0_when_good(
    runner: CliRunner,
    agent: Agent,  # noqa: F811
    served: list[Hook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "POLL_S", 0.0)
    monkeypatch.setattr(progress, "BAKE_LINE_EVERY_S", 10)
    ticks(agent, 2)

    def tick_on_poll(method: str, url: str) -> None:
        if url.endswith("/api/rollout"):
            ticks(agent, 1)

    served.append(tick_on_poll)

    result = runner.invoke(app, ["deploy", "v2", "--wait"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "deploying v2 as candidate (was v1; all at once, then a bake); following it until it "
        "is good or bad "
        "(Ctrl-C stops following, not the deploy)"
    )
    assert lines[1] == "v2 starting: 0 of 1 replicas ready"
    assert [line for line in lines if line.startswith("v2 baking")] == [
        "v2 baking: 1 s of 30 s clean, 29 s left",  # then a line per 10 s (30 s in real use)
        "v2 baking: 10 s of 30 s clean, 20 s left",
        "v2 baking: 20 s of 30 s clean, 10 s left",
        "v2 baking: 30 s of 30 s clean, 0 s left",
    ]
    assert lines[-1].startswith("v2 is good: baked 30 s >= 30 s")


def test_deploy_wait_exits_1_when_the_release_is_reverted(
    runner: CliRunner,
    agent: Agent,  # noqa: F811
    served: list[Hook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "POLL_S", 0.0)
    agent.store.mark_good("v1", agent.clock.now(), "baked")
    polls = []

    def revert_on_third_poll(method: str, url: str) -> None:
        if url.endswith("/api/rollout"):
            polls.append(url)
            if len(polls) == 3:
                agent.rollback()

    served.append(revert_on_third_poll)

    result = runner.invoke(app, ["deploy", "v2", "--wait"])

    assert result.exit_code == 1
    assert (
        result.stderr == "v2 is bad, serving v1 again: rollback v2 -> v1 requested by an operator\n"
    )


def test_deploy_with_a_bad_timeout_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["deploy", "v2", "--wait", "--timeout", "soon"])

    assert result.exit_code == 2
    assert result.stderr.startswith("error: --timeout: ")


def test_events_follow_prints_events_and_stops_quietly_on_ctrl_c(
    runner: CliRunner,
    agent: Agent,  # noqa: F811
    served: list[Hook],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent.set_flags(maintenance=True)
    sleeps: list[float] = []

    def interrupted_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            agent.set_flags(maintenance=False)  # happens while the CLI follows
            return
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.time, "sleep", interrupted_sleep)

    result = runner.invoke(app, ["events", "--follow"])

    assert result.exit_code == 0
    messages = [line.split(None, 3)[3] for line in result.stdout.splitlines()]
    assert messages == [
        "maintenance on, frozen no (operator)",
        "maintenance off, frozen no (operator)",
    ]
    assert sleeps == [cli.EVENTS_POLL_S, cli.EVENTS_POLL_S]


def test_a_mutation_without_a_token_says_which_variable_to_set(
    runner: CliRunner, served: list[Hook], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WARDEN_TOKEN")

    result = runner.invoke(app, ["maintenance", "on"])

    assert result.exit_code == 1
    assert result.stderr == (
        "error: the agent needs its API token (missing or wrong bearer token): set WARDEN_TOKEN, "
        f"or run where {tmp_path}/.warden/api-token is readable\n"
    )


def test_a_wrong_token_is_refused_in_one_line(
    runner: CliRunner, served: list[Hook], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARDEN_TOKEN", "not-it")

    result = runner.invoke(app, ["rollback"])

    assert result.exit_code == 1
    assert result.stderr == (
        "error: the agent refused the token (missing or wrong bearer token): set WARDEN_TOKEN "
        "to the token the agent was started with\n"
    )


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a sub-app (rules, ...)
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_has_an_example_in_its_help(runner: CliRunner) -> None:
    group = typer.main.get_command(app)
    commands = list(_commands(group))
    missing = []
    for path in commands:
        if path == ("serve",):  # every flag goes to the server; its help is the server's
            continue
        result = runner.invoke(app, [*path, "--help"])
        if result.exit_code != 0 or "Example:" not in result.stdout:
            missing.append(" ".join(path))

    assert len(commands) >= 12
    assert missing == []


def test_top_level_help_documents_exit_codes_and_completion(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "Exit codes: 0 ok; 1 the operation failed or found problems; 2 bad usage;" in text
    assert "--install-completion" in text


def test_a_staged_deploy_from_the_cli_pause_status_and_releases(
    runner: CliRunner,
    agent: Agent,  # noqa: F811
    served: list[Hook],
) -> None:
    from agent.rollout.controller import Rollouts, RolloutSettings, RolloutStore
    from tests.unit.test_rollout import FakeBalancer

    agent.rollouts = Rollouts(
        service="inference",
        store=RolloutStore(agent.store.load_kv, agent.store.save_kv),
        balancer=FakeBalancer(),
        settings=RolloutSettings(),
        hooks=agent.rollout_hooks(lambda: ["hello"]),
    )
    ticks(agent, 2)

    deployed = runner.invoke(app, ["deploy", "v2", "--steps", "10,100", "--note", "try it"])
    assert deployed.exit_code == 0, deployed.output
    assert "staged rollout, steps 10,100 %" in deployed.stdout
    paused = runner.invoke(app, ["deploy", "--pause"])
    assert paused.exit_code == 0, paused.output
    assert paused.stdout.startswith("v2: paused by an operator")
    status = runner.invoke(app, ["status"])
    assert "rollout: v2 over v1, starting (0 % of traffic, PAUSED)" in status.stdout
    releases = runner.invoke(app, ["releases"])
    row = next(line for line in releases.stdout.splitlines() if line.startswith("v2"))
    assert "staged, starting" in row and "default" in row  # who asked: the token's name
    listed = json.loads(runner.invoke(app, ["releases", "--json"]).stdout)["releases"]
    assert next(r for r in listed if r["tag"] == "v2")["rollout"]["note"] == "try it"
    both = runner.invoke(app, ["deploy", "--pause", "--abort"])
    assert both.exit_code == 2
    again = runner.invoke(app, ["deploy", "v3", "--steps", "50,100"])
    assert again.exit_code == 1 and "in progress" in again.stderr
