"""warden.yaml: defaults for everything, durations in seconds, every problem at once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.backends.base import ReleaseSpec
from agent.config import PACKAGED_CANARIES, PACKAGED_RULES, WardenConfig, load_config
from agent.errors import ConfigError


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with ``rules/`` (and its golden set), as a checkout has."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "canaries.yaml").write_text("canaries: []\n", encoding="utf-8")
    return tmp_path


def load(here: Path, text: str) -> WardenConfig:
    (here / "warden.yaml").write_text(text, encoding="utf-8")
    return load_config(Path("warden.yaml"))


def problems(here: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(here, text)
    return err.value.problems


# --- defaults -------------------------------------------------------------------------------


def test_no_file_is_the_embedded_default(here: Path) -> None:
    config = load_config(None)
    assert (config.service, config.backend.kind, config.backend.replicas) == (
        "inference",
        "process",
        1,
    )
    assert (config.backend.port, config.backend.host, config.backend.max_replicas) == (
        8000,
        "127.0.0.1",
        4,
    )
    assert config.backend.command == (sys.executable, "-m", "inference")
    assert (config.probe.interval_s, config.probe.timeout_s, config.probe.canary_interval_s) == (
        1.0,
        0.5,
        10.0,
    )
    assert (config.api.bind, config.api.token_env, config.api.read_open) == (
        "127.0.0.1:9400",
        "WARDEN_TOKEN",
        True,
    )
    assert (config.release.tag, config.release.model, config.alerts, config.maintenance) == (
        "default",
        "",
        (),
        False,
    )
    assert (config.state_dir, config.rules, config.canaries) == (
        here / ".warden",
        here / "rules",
        here / "rules" / "canaries.yaml",
    )


def test_default_policy(here: Path) -> None:
    policy = load_config(None).policy
    assert (policy.cooldown_s, policy.actions_per_hour, policy.verify_timeout_s) == (60.0, 10, 60.0)
    assert (policy.bake_s, policy.restart_window_s, policy.dry_run) == (300.0, 600.0, False)
    assert (policy.crash_loop_backoff_initial_s, policy.crash_loop_backoff_max_s) == (10.0, 300.0)


def test_an_empty_file_is_the_default(here: Path) -> None:
    assert load(here, "# all defaults\n") == load_config(None)


def test_without_a_rules_directory_the_packaged_rules_are_used(tmp_path: Path) -> None:
    config = load_config(None, base_dir=tmp_path)
    assert (config.rules, config.canaries) == (PACKAGED_RULES, PACKAGED_CANARIES)


def test_paths_are_relative_to_the_config_file_not_the_working_directory(here: Path) -> None:
    (here / "site" / "myrules").mkdir(parents=True)
    (here / "site" / "warden.yaml").write_text("rules: myrules\nstate_dir: ../state\n", "utf-8")
    config = load_config(Path("site/warden.yaml"))
    assert (config.rules, config.state_dir) == (here / "site" / "myrules", here / "state")


def test_durations_and_sizes_are_parsed_once(here: Path) -> None:
    config = load(
        here,
        "probe: {interval: 250ms, timeout: 2s, canary_interval: 1m}\n"
        "policy: {bake: 10m, cooldown: 0}\n"
        "backend: {memory_limit: 512MiB, cpus: 1.5}\n",
    )
    assert (config.probe.interval_s, config.probe.timeout_s, config.probe.canary_interval_s) == (
        0.25,
        2.0,
        60.0,
    )
    assert (config.policy.bake_s, config.policy.cooldown_s) == (600.0, 0.0)
    assert (config.backend.memory_limit_bytes, config.backend.cpus) == (512 * 2**20, 1.5)


def test_read_only_api_is_closed_by_default_off_loopback(here: Path) -> None:
    assert load(here, "api: {bind: '0.0.0.0:9400'}\n").api.read_open is False
    assert load(here, "api: {bind: '[::1]:9400'}\n").api.read_open is True
    assert load(here, "api: {bind: '0.0.0.0:9400', read_open: true}\n").api.read_open is True


def test_api_host_and_port(here: Path) -> None:
    api = load(here, "api: {bind: '[::1]:9500'}\n").api
    assert (api.host, api.port) == ("::1", 9500)


def test_alerts(here: Path) -> None:
    config = load(
        here,
        "alerts:\n"
        "  - {kind: alertmanager, url: 'http://127.0.0.1:9093'}\n"
        "  - {kind: webhook, url: 'http://h/hook', secret_env: HOOK_KEY, timeout: 2s}\n",
    )
    assert [(a.kind, a.url, a.secret_env, a.timeout_s) for a in config.alerts] == [
        ("alertmanager", "http://127.0.0.1:9093", "", 5.0),
        ("webhook", "http://h/hook", "HOOK_KEY", 2.0),
    ]


def test_numbers_in_env_become_text(here: Path) -> None:
    assert load(here, "backend: {env: {OMP_NUM_THREADS: 2}}\n").backend.env == {
        "OMP_NUM_THREADS": "2"
    }


def test_initial_release_for_the_process_backend(here: Path) -> None:
    config = load(here, "release: {tag: v1, model: /models/a, args: [--threads, '2']}\n")
    assert config.initial_release() == ReleaseSpec(
        tag="v1", model="/models/a", args=("--threads", "2")
    )


def test_initial_release_for_docker_is_a_tag_of_the_image(here: Path) -> None:
    config = load(here, "backend: {kind: docker, image: warden-inference}\nrelease: {tag: v2}\n")
    assert config.initial_release().image == "warden-inference:v2"


# --- one test per message -------------------------------------------------------------------


def test_unknown_key(here: Path) -> None:
    assert problems(here, "servce: x\n") == [
        'warden.yaml:1: servce: unknown key; did you mean "service"?'
    ]


def test_unknown_backend_kind(here: Path) -> None:
    assert problems(here, "backend:\n  kind: dockr\n") == [
        'warden.yaml:2: backend.kind: unknown backend "dockr"; did you mean "docker"?'
    ]


def test_more_replicas_than_the_maximum(here: Path) -> None:
    assert problems(here, "backend:\n  replicas: 5\n") == [
        "warden.yaml:1: backend: replicas (5) is more than max_replicas (4)"
    ]


def test_port_out_of_range(here: Path) -> None:
    assert problems(here, "backend: {port: 70000}\n") == [
        "warden.yaml:1: backend.port: must be at most 65535, got 70000"
    ]


def test_not_a_whole_number(here: Path) -> None:
    assert problems(here, "backend: {replicas: two}\n") == [
        'warden.yaml:1: backend.replicas: expected a whole number, got "two"'
    ]


def test_cpus_must_be_positive(here: Path) -> None:
    assert problems(here, "backend: {cpus: 0}\n") == [
        "warden.yaml:1: backend.cpus: must be greater than 0, got 0"
    ]


def test_empty_command(here: Path) -> None:
    assert problems(here, "backend: {command: []}\n") == [
        "warden.yaml:1: backend.command: must not be empty"
    ]


def test_env_value_that_is_not_text(here: Path) -> None:
    assert problems(here, "backend:\n  env:\n    A: [1]\n") == [
        "warden.yaml:3: backend.env.A: expected text, got a list"
    ]


def test_bad_memory_limit(here: Path) -> None:
    assert problems(here, "backend: {memory_limit: 300x}\n") == [
        'warden.yaml:1: backend.memory_limit: "300x" has an unknown unit "x"; use a number'
        ' with a unit: B, KB, MB, GB, KiB, MiB or GiB, e.g. "512MiB", "1GB"'
    ]


def test_duration_without_unit(here: Path) -> None:
    assert problems(here, "probe:\n  interval: 1\n") == [
        "warden.yaml:2: probe.interval: duration 1 has no unit; use a number with a unit:"
        ' ms, s, m, h or d, e.g. "500ms", "30s", "1h30m"'
    ]


def test_zero_interval(here: Path) -> None:
    assert problems(here, "probe:\n  timeout: 0s\n") == [
        "warden.yaml:2: probe.timeout: must be longer than 0s"
    ]


def test_bad_bind(here: Path) -> None:
    assert problems(here, "api: {bind: localhost}\n") == [
        'warden.yaml:1: api.bind: expected "host:port" like "127.0.0.1:9400"; got "localhost"'
    ]


def test_bad_token_env(here: Path) -> None:
    assert problems(here, "api: {token_env: my token}\n") == [
        "warden.yaml:1: api.token_env: expected an environment variable name like WARDEN_TOKEN;"
        ' got "my token"'
    ]


def test_bad_alert_url(here: Path) -> None:
    assert problems(here, "alerts:\n  - {kind: webhook, url: 'ftp://x'}\n") == [
        'warden.yaml:2: alerts[0].url: expected an http:// or https:// URL; got "ftp://x"'
    ]


def test_unknown_alert_kind(here: Path) -> None:
    assert problems(here, "alerts:\n  - {kind: pagerduty, url: 'http://x'}\n") == [
        'warden.yaml:2: alerts[0].kind: unknown alert kind "pagerduty";'
        " expected one of: alertmanager, webhook, slack"
    ]


def test_alert_without_url(here: Path) -> None:
    assert problems(here, "alerts:\n  - kind: slack\n") == [
        "warden.yaml:2: alerts[0].url: required key is missing"
    ]


def test_backoff_max_shorter_than_initial(here: Path) -> None:
    assert problems(here, "policy:\n  crash_loop_backoff_initial: 10m\n") == [
        "warden.yaml:1: policy: crash_loop_backoff_max is shorter than crash_loop_backoff_initial"
    ]


def test_negative_budget(here: Path) -> None:
    assert problems(here, "policy: {actions_per_hour: -1}\n") == [
        "warden.yaml:1: policy.actions_per_hour: must be at least 0, got -1"
    ]


def test_not_true_or_false(here: Path) -> None:
    assert problems(here, "maintenance: sometimes\n") == [
        'warden.yaml:1: maintenance: expected true or false, got "sometimes"'
    ]


def test_missing_rules_path(here: Path) -> None:
    assert problems(here, "rules: nowhere/\n") == [
        f"warden.yaml:1: rules: no such file or directory: {here / 'nowhere'}"
    ]


def test_path_that_is_not_text(here: Path) -> None:
    assert problems(here, "state_dir: [a]\n") == [
        "warden.yaml:1: state_dir: expected a path, got a list"
    ]


def test_bad_service_name(here: Path) -> None:
    assert problems(here, "service: My Service\n") == [
        'warden.yaml:1: service: use lowercase letters, digits, "_", "." and "-"; got "My Service"'
    ]


def test_bad_release_tag(here: Path) -> None:
    assert problems(here, "release: {tag: 'v 1'}\n") == [
        'warden.yaml:1: release.tag: use letters, digits, "_", "." and "-" (a Docker tag);'
        ' got "v 1"'
    ]


def test_section_that_is_not_a_mapping(here: Path) -> None:
    assert problems(here, "probe: fast\n") == [
        'warden.yaml:1: probe: expected a mapping, got "fast"'
    ]


def test_top_level_that_is_not_a_mapping(here: Path) -> None:
    assert problems(here, "- a\n") == ["warden.yaml:1: (top level): expected a mapping, got a list"]


def test_yaml_syntax_error(here: Path) -> None:
    assert problems(here, "api: {bind: x\n") == [
        "warden.yaml:2: (file): YAML syntax error: while parsing a flow mapping:"
        " expected ',' or '}', but got '<stream end>'"
    ]


def test_missing_config_file(here: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Path("absent.yaml"))
    assert err.value.problems == ["absent.yaml:1: (file): cannot read: No such file or directory"]


def test_every_problem_in_every_section_at_once(here: Path) -> None:
    text = "service: X\nbackend: {kind: k8s}\nprobe: {interval: 1}\napi: {tokn_env: T}\n"
    assert [line.split(": ", 2)[1] for line in problems(here, text)] == [
        "service",
        "backend.kind",
        "probe.interval",
        "api.tokn_env",
    ]


def test_split_by_replicas_is_for_swarm_on_a_network_and_is_never_picked_by_auto(
    here: Path,
) -> None:
    wrong = problems(here, "balancer: {kind: replicas}\n")
    assert any("needs backend kind swarm and backend.network" in p for p in wrong)
    swarm = "backend: {kind: swarm, network: mesh}\nbalancer: {kind: %s}\n"
    config = load(here, swarm % "replicas")
    assert config.splits_by_replicas() and config.traffic_alias() == "inference"
    assert not load(here, swarm % "auto").splits_by_replicas()  # never silently
    clash = "backend: {kind: swarm, network: mesh, port: 8000, canary_port: 8002}\n"
    assert any("must not overlap" in p for p in problems(here, clash))
    assert any("below 65536" in p for p in problems(here, clash.replace("8002", "65530")))
    config = load(here, swarm % "replicas" + "service: intent\n")
    assert config.traffic_alias() == "intent"
    assert not load(here, swarm % "none").splits_by_replicas()
    assert load(here, swarm % "none").traffic_alias() == ""
