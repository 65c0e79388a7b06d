"""Hot reload: edits take effect on the next poll; an invalid edit keeps the last valid set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.rules import ReloadResult, RuleWatcher

LATENCY = """\
rules:
  - name: latency-p95
    when: latency_p95_ms > 100
    severity: warning
    actions: [alert, scale]
"""
ERRORS = """\
rules:
  - name: error-rate-high
    when: error_rate > 0.5%
    for: 1m
    severity: warning
    actions: [alert]
"""


@pytest.fixture
def rules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    rules = Path("rules")
    rules.mkdir()
    (rules / "latency.yaml").write_text(LATENCY, encoding="utf-8")
    (rules / "errors.yaml").write_text(ERRORS, encoding="utf-8")
    return rules


class Recorder:
    """Records every result handed to ``on_change``."""

    def __init__(self) -> None:
        self.results: list[ReloadResult] = []

    def __call__(self, result: ReloadResult) -> None:
        self.results.append(result)


def names(result: ReloadResult) -> list[str]:
    return [rule.name for rule in result.rules.rules]


def test_nothing_changed_is_no_reload(rules_dir: Path) -> None:
    seen = Recorder()
    watcher = RuleWatcher(rules_dir, seen)
    result = watcher.poll()
    assert (result.reloaded, result.changed, result.ok, result.problems) == (False, False, True, [])
    assert names(result) == ["error-rate-high", "latency-p95"]
    assert seen.results == []


def test_a_valid_edit_takes_effect(rules_dir: Path) -> None:
    seen = Recorder()
    watcher = RuleWatcher(rules_dir, seen)
    (rules_dir / "latency.yaml").write_text(LATENCY.replace("> 100", "> 250ms"), encoding="utf-8")
    result = watcher.poll()
    assert (result.reloaded, result.changed, result.ok) == (True, True, True)
    assert result.rules.rules[1].threshold == 250.0
    assert seen.results == [result]
    assert watcher.rules == result.rules


def test_an_invalid_edit_keeps_the_last_valid_set_and_says_why(rules_dir: Path) -> None:
    seen = Recorder()
    watcher = RuleWatcher(rules_dir, seen)
    before = watcher.rules
    (rules_dir / "latency.yaml").write_text(LATENCY.replace("latency_p95", "latncy_p95"), "utf-8")
    result = watcher.poll()
    assert (result.reloaded, result.changed, result.ok) == (True, False, False)
    assert result.problems == [
        'rules/latency.yaml:3: rules[0].when: unknown signal "latncy_p95_ms";'
        ' did you mean "latency_p95_ms"?'
    ]
    assert result.rules is before
    assert seen.results == [result]


def test_an_invalid_set_stays_reported_until_fixed_but_is_reloaded_once(rules_dir: Path) -> None:
    seen = Recorder()
    watcher = RuleWatcher(rules_dir, seen)
    (rules_dir / "latency.yaml").write_text("rules: [\n", encoding="utf-8")
    watcher.poll()
    again = watcher.poll()
    assert (again.reloaded, again.ok, len(again.problems)) == (False, False, 1)
    (rules_dir / "latency.yaml").write_text(LATENCY, encoding="utf-8")
    fixed = watcher.poll()
    assert (fixed.reloaded, fixed.ok, fixed.problems) == (True, True, [])
    assert len(seen.results) == 2


def test_a_deleted_file_removes_its_rules(rules_dir: Path) -> None:
    watcher = RuleWatcher(rules_dir)
    (rules_dir / "errors.yaml").unlink()
    result = watcher.poll()
    assert (result.changed, result.ok) == (True, True)
    assert names(result) == ["latency-p95"]
    assert result.rules.files == ("rules/latency.yaml",)


def test_an_added_file_adds_its_rules(rules_dir: Path) -> None:
    watcher = RuleWatcher(rules_dir)
    (rules_dir / "more.yaml").write_text(ERRORS.replace("error-rate-high", "more"), "utf-8")
    assert names(watcher.poll()) == ["error-rate-high", "latency-p95", "more"]


def test_an_atomically_replaced_file_is_reloaded(rules_dir: Path) -> None:
    watcher = RuleWatcher(rules_dir)
    staged = rules_dir / ".latency.yaml.tmp"
    staged.write_text(LATENCY.replace("warning", "critical"), encoding="utf-8")
    os.replace(staged, rules_dir / "latency.yaml")
    result = watcher.poll()
    assert result.changed
    assert result.rules.rules[1].severity == "critical"


def test_a_second_same_size_write_right_after_a_reload_is_seen(rules_dir: Path) -> None:
    watcher = RuleWatcher(rules_dir)
    (rules_dir / "latency.yaml").write_text(LATENCY.replace("> 100", "> 200"), encoding="utf-8")
    watcher.poll()
    (rules_dir / "latency.yaml").write_text(LATENCY.replace("> 100", "> 300"), encoding="utf-8")
    assert watcher.poll().rules.rules[1].threshold == 300.0


def test_touching_a_file_is_not_a_reload(rules_dir: Path) -> None:
    seen = Recorder()
    watcher = RuleWatcher(rules_dir, seen)
    stat = (rules_dir / "latency.yaml").stat()
    os.utime(rules_dir / "latency.yaml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert watcher.poll().reloaded is False
    assert seen.results == []


def test_a_single_watched_file_that_is_deleted_keeps_the_last_valid_set(rules_dir: Path) -> None:
    watcher = RuleWatcher(rules_dir / "latency.yaml")
    (rules_dir / "latency.yaml").unlink()
    result = watcher.poll()
    assert (result.ok, names(result)) == (False, ["latency-p95"])
    assert result.problems == [
        "rules/latency.yaml:1: (file): cannot read: No such file or directory"
    ]


def test_invalid_rules_at_start_are_a_config_error(rules_dir: Path) -> None:
    (rules_dir / "latency.yaml").write_text("rules: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        RuleWatcher(rules_dir)
    assert err.value.problems == ["rules/latency.yaml:1: rules: expected a list, got 3"]
