"""prometheus/ with the real tools: promtool checks and rule unit tests, and a real Prometheus that
scraped the real agent and server (``obs_stack``), with replicas found through the agent's file_sd
target file."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest_obs import PROMETHEUS_DIR, ObsStack, ObsTools

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]


def promtool(tools: ObsTools, *args: str, stdin: str | None = None) -> str:
    """Run promtool; fail with its output when it exits non-zero. Returns stdout + stderr."""
    result = subprocess.run(
        [tools.promtool, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_repository_config_passes_promtool_check_config(obs_tools: ObsTools) -> None:
    output = promtool(obs_tools, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert "SUCCESS: 2 rule files found" in output


def test_generated_test_config_passes_promtool_check_config(obs_stack: ObsStack) -> None:
    promtool(obs_stack.tools, "check", "config", str(obs_stack.prometheus_config))


def test_alert_and_recording_rules_pass_promtool_check_rules(obs_tools: ObsTools) -> None:
    output = promtool(
        obs_tools,
        "check",
        "rules",
        str(PROMETHEUS_DIR / "alerts.yml"),
        str(PROMETHEUS_DIR / "recording_rules.yml"),
    )
    assert output.count("SUCCESS") == 2


def test_rule_unit_tests_pass(obs_tools: ObsTools) -> None:
    files = sorted(str(p) for p in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert len(files) >= 2
    output = promtool(obs_tools, "test", "rules", *files)
    assert output.count("SUCCESS") == len(files)


@pytest.mark.parametrize("which", ["agent", "server"])
def test_live_metrics_pass_promtool_check_metrics(obs_stack: ObsStack, which: str) -> None:
    url = obs_stack.agent_url if which == "agent" else obs_stack.replica_url
    text = httpx.get(f"{url}/metrics", timeout=5.0).text
    assert ("warden_" if which == "agent" else "inference_") in text
    promtool(obs_stack.tools, "check", "metrics", stdin=text)


def test_every_alert_rule_is_known_to_the_unit_tests() -> None:
    tested = "".join(p.read_text() for p in (PROMETHEUS_DIR / "tests").glob("*.yml"))
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    names = [r["alert"] for group in rules["groups"] for r in group["rules"]]
    untested = [name for name in names if f"alertname: {name}\n" not in tested]
    assert untested == []


def test_agent_writes_file_sd_targets_that_prometheus_scrapes_without_reload(
    obs_stack: ObsStack,
) -> None:
    groups = json.loads(obs_stack.targets_file.read_text())
    address = obs_stack.replica_url.removeprefix("http://")
    assert groups == [
        {"labels": {"replica": "inference-1", "service": "inference"}, "targets": [address]}
    ]
    assert not list(obs_stack.targets_file.parent.glob(".*.tmp"))  # no temporary file left over

    targets = httpx.get(f"{obs_stack.prometheus_url}/api/v1/targets", timeout=5.0).json()
    scraped = {
        t["labels"]["job"]: t for t in targets["data"]["activeTargets"] if t["health"] == "up"
    }
    assert scraped["inference"]["labels"]["replica"] == "inference-1"
    assert scraped["inference"]["labels"]["instance"] == address
    assert "warden-agent" in scraped
    # The configuration was loaded once, at start; the target file changed after that.
    loaded = obs_stack.query("prometheus_config_last_reload_success_timestamp_seconds")
    assert float(loaded[0]["value"][1]) < obs_stack.targets_file.stat().st_mtime


def test_killed_replica_is_scraped_again_as_a_new_process(obs_stack: ObsStack) -> None:
    # Whether a failed scrape (up == 0) falls into the few hundred ms between the kill and the
    # restarted server binding its port depends on timing; that the target is a new process
    # afterwards, scraped successfully, does not.
    starts = obs_stack.query_range(
        'process_start_time_seconds{job="inference", replica="inference-1"}'
    )
    # Two processes were scraped under the one target: the killed one and its replacement.
    # (process_start_time_seconds is derived from the kernel's whole-second boot time, so it is
    # not compared with the test's own clock.)
    values = {float(v) for s in starts for _, v in s["values"]}
    assert len(values) == 2, values
    series = obs_stack.query_range('up{job="inference", replica="inference-1"}')
    assert float(series[0]["values"][-1][1]) == 1


def test_rules_evaluate_in_prometheus_without_errors(obs_stack: ObsStack) -> None:
    data = httpx.get(f"{obs_stack.prometheus_url}/api/v1/rules", timeout=5.0).json()
    groups = {g["name"]: g for g in data["data"]["groups"]}
    assert set(groups) == {"warden-inference-recording", "warden-service", "warden-agent"}
    problems = [
        f"{rule['name']}: {rule.get('lastError')}"
        for group in groups.values()
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert problems == []
    p95 = obs_stack.query_range("service:inference_predict_duration_seconds:p95_1m")
    finite = [float(v) for s in p95 for _, v in s["values"] if math.isfinite(float(v))]
    assert finite and all(0 < v <= 5 for v in finite)  # 5 s: the largest bucket


def test_prometheus_dir_holds_only_what_the_compose_globs_expect() -> None:
    # deploy/prometheus.compose.yml loads /etc/prometheus/alerts*.yml and *rules*.yml
    names = sorted(p.name for p in Path(PROMETHEUS_DIR).glob("*.yml"))
    assert names == ["alerts.yml", "prometheus.yml", "recording_rules.yml"]
