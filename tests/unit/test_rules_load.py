"""Rule files: every problem in every file at once, as ``file:line: path: message``.

One test per message, each asserting the exact text an operator sees.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from agent.domain import ActionKind
from agent.errors import ConfigError
from agent.rules import Rule, load_rules

REPO = Path(__file__).resolve().parents[2]
GOOD = """\
rules:
  - name: latency-p95
    when: latency_p95_ms > 100
    for: 30s
    severity: warning
    actions: [alert, scale]
"""


@pytest.fixture
def rules_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``rules/`` in a fresh working directory, so messages read ``rules/x.yaml:3``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules").mkdir()
    return Path("rules")


def problems(rules_dir: Path, **files: str) -> list[str]:
    for name, text in files.items():
        (rules_dir / f"{name}.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_rules(rules_dir)
    return err.value.problems


def one_rule(**fields: str) -> str:
    """A valid rule with some fields replaced (value "" drops the field)."""
    rule = {
        "name": "latency-p95",
        "when": "latency_p95_ms > 100",
        "for": "30s",
        "severity": "warning",
        "actions": "[alert, scale]",
    } | fields
    lines = [f"    {key}: {value}" for key, value in rule.items() if value != ""]
    lines[0] = "  - " + lines[0].lstrip()
    return "rules:\n" + "\n".join(lines) + "\n"


# --- loading --------------------------------------------------------------------------------


def test_a_valid_rule_becomes_a_frozen_rule_with_base_units(rules_dir: Path) -> None:
    (rules_dir / "latency.yaml").write_text(GOOD, encoding="utf-8")
    rule_set = load_rules(rules_dir)
    assert rule_set.rules == (
        Rule(
            name="latency-p95",
            signal="latency_p95_ms",
            op=">",
            threshold=100.0,
            threshold_text="100",
            for_s=30.0,
            severity="warning",
            actions=(ActionKind.ALERT, ActionKind.SCALE),
            cooldown_s=60.0,
            description="",
            source="rules/latency.yaml:2",
        ),
    )
    assert rule_set.files == ("rules/latency.yaml",)


def test_defaults_are_for_0s_and_cooldown_60s(rules_dir: Path) -> None:
    (rules_dir / "a.yaml").write_text(one_rule(**{"for": ""}), encoding="utf-8")
    rule = load_rules(rules_dir).rules[0]
    assert (rule.for_s, rule.cooldown_s) == (0.0, 60.0)


def test_actions_keep_the_order_written(rules_dir: Path) -> None:
    (rules_dir / "a.yaml").write_text(one_rule(actions="[rollback, alert]"), encoding="utf-8")
    assert load_rules(rules_dir).rules[0].actions == (ActionKind.ROLLBACK, ActionKind.ALERT)


def test_a_single_file_can_be_loaded(rules_dir: Path) -> None:
    (rules_dir / "only.yaml").write_text(GOOD, encoding="utf-8")
    assert [r.name for r in load_rules(rules_dir / "only.yaml").rules] == ["latency-p95"]


def test_the_golden_set_next_to_the_rules_is_not_a_rule_file(rules_dir: Path) -> None:
    (rules_dir / "latency.yaml").write_text(GOOD, encoding="utf-8")
    (rules_dir / "canaries.yaml").write_text("canaries: []\n", encoding="utf-8")
    assert load_rules(rules_dir).files == ("rules/latency.yaml",)


def test_yaml_merge_keys_are_understood(rules_dir: Path) -> None:
    text = """\
base: &base {severity: warning, actions: [alert]}
rules:
  - <<: *base
    name: a
    when: up == 0
"""
    problems_ = problems(rules_dir, a=text)
    assert problems_ == ["rules/a.yaml:1: base: unknown key; expected one of: rules"]


def test_shipped_rules_load_clean() -> None:
    rule_set = load_rules(REPO / "rules")
    assert len(rule_set.rules) >= 10
    assert {"latency-p95", "health-failures", "error-rate-critical", "canary-failing"} <= {
        rule.name for rule in rule_set.rules
    }


def test_packaged_copy_of_the_rules_is_identical_to_rules_dir() -> None:
    shipped, packaged = REPO / "rules", REPO / "agent" / "defaults" / "rules"
    names = sorted(p.name for p in shipped.glob("*.yaml"))
    assert names == sorted(p.name for p in packaged.glob("*.yaml"))
    _same, mismatch, errors = filecmp.cmpfiles(shipped, packaged, names, shallow=False)
    assert (mismatch, errors) == ([], [])


# --- every problem at once ------------------------------------------------------------------


def test_every_problem_in_every_file_is_reported_at_once_sorted(rules_dir: Path) -> None:
    bad_a = one_rule(when="latncy_p95_ms > 100", severity="warn")
    bad_b = one_rule(name="latency-p95", actions="[alert, reboot]")
    assert problems(rules_dir, b=bad_b, a=bad_a, c="rules: [\n") == [
        'rules/a.yaml:3: rules[0].when: unknown signal "latncy_p95_ms";'
        ' did you mean "latency_p95_ms"?',
        'rules/a.yaml:5: rules[0].severity: unknown severity "warn"; did you mean "warning"?',
        'rules/b.yaml:2: rules[0].name: duplicate rule name "latency-p95"'
        " (first defined at rules/a.yaml:2)",
        'rules/b.yaml:6: rules[0].actions[1]: unknown action "reboot";'
        " expected one of: alert, restart, scale, rollback",
        "rules/c.yaml:2: (file): YAML syntax error: while parsing a flow node:"
        " expected the node content, but found '<stream end>'",
    ]


# --- one test per message -------------------------------------------------------------------


def test_unknown_signal(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(when="latncy_p95_ms > 100")) == [
        'rules/a.yaml:3: rules[0].when: unknown signal "latncy_p95_ms";'
        ' did you mean "latency_p95_ms"?'
    ]


def test_bad_unit(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(when="cpu_percent > 80ms")) == [
        'rules/a.yaml:3: rules[0].when: cpu_percent takes a percentage like 80 or 80%; got "80ms"'
    ]


def test_impossible_threshold(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(when="error_rate > 5")) == [
        'rules/a.yaml:3: rules[0].when: threshold "5" is impossible: error_rate is a ratio'
        " between 0 and 1; did you mean 5%?"
    ]


def test_malformed_condition(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(when="latency_p95_ms is high")) == [
        'rules/a.yaml:3: rules[0].when: expected "<signal> <op> <threshold>",'
        ' e.g. "latency_p95_ms > 100"; got "latency_p95_ms is high"'
    ]


def test_condition_that_is_not_text(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(when="5")) == [
        'rules/a.yaml:3: rules[0].when: expected a condition like "latency_p95_ms > 100"; got 5'
    ]


def test_unknown_action(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(actions="[alert, rollbak]")) == [
        'rules/a.yaml:6: rules[0].actions[1]: unknown action "rollbak"; did you mean "rollback"?'
    ]


def test_freeze_is_not_a_rule_action(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(actions="[freeze]")) == [
        'rules/a.yaml:6: rules[0].actions[0]: unknown action "freeze";'
        " expected one of: alert, restart, scale, rollback"
    ]


def test_no_actions(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(actions="[]")) == [
        "rules/a.yaml:6: rules[0].actions: at least one action is required:"
        " alert, restart, scale or rollback"
    ]


def test_action_listed_twice(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(actions="[alert, restart, alert]")) == [
        'rules/a.yaml:6: rules[0].actions: action "alert" is listed twice'
    ]


def test_actions_not_a_list(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(actions="alert")) == [
        'rules/a.yaml:6: rules[0].actions: expected a list, got "alert"'
    ]


def test_unknown_severity(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(severity="warn")) == [
        'rules/a.yaml:5: rules[0].severity: unknown severity "warn"; did you mean "warning"?'
    ]


def test_unknown_key(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(sevrity="warning", severity="")) == [
        "rules/a.yaml:2: rules[0].severity: required key is missing",
        'rules/a.yaml:6: rules[0].sevrity: unknown key; did you mean "severity"?',
    ]


def test_missing_key(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(when="")) == [
        "rules/a.yaml:2: rules[0].when: required key is missing"
    ]


def test_duration_without_unit(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(**{"for": "30"})) == [
        "rules/a.yaml:4: rules[0].for: duration 30 has no unit; use a number with a unit:"
        ' ms, s, m, h or d, e.g. "500ms", "30s", "1h30m"'
    ]


def test_bad_cooldown(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(cooldown="soon")) == [
        'rules/a.yaml:7: rules[0].cooldown: "soon" is not a duration; use a number with a unit:'
        ' ms, s, m, h or d, e.g. "500ms", "30s", "1h30m"'
    ]


def test_bad_rule_name(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(name="Latency P95")) == [
        'rules/a.yaml:2: rules[0].name: use lowercase letters, digits and "-"'
        ' (like "latency-p95"); got "Latency P95"'
    ]


def test_name_that_is_not_text(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(name="404")) == [
        "rules/a.yaml:2: rules[0].name: expected text, got 404"
    ]


def test_duplicate_rule_name_in_another_file(rules_dir: Path) -> None:
    assert problems(rules_dir, a=GOOD, b=GOOD) == [
        'rules/b.yaml:2: rules[0].name: duplicate rule name "latency-p95"'
        " (first defined at rules/a.yaml:2)"
    ]


def test_duplicate_rule_name_in_the_same_file(rules_dir: Path) -> None:
    text = GOOD + GOOD.removeprefix("rules:\n")
    assert problems(rules_dir, a=text) == [
        'rules/a.yaml:7: rules[1].name: duplicate rule name "latency-p95"'
        " (first defined at rules/a.yaml:2)"
    ]


def test_duplicate_yaml_key(rules_dir: Path) -> None:
    assert problems(rules_dir, a=GOOD + "    severity: critical\n") == [
        "rules/a.yaml:7: rules[0].severity: duplicate key (first on line 5)"
    ]


def test_empty_file(rules_dir: Path) -> None:
    assert problems(rules_dir, a="# nothing yet\n") == [
        'rules/a.yaml:1: (file): file is empty; expected "rules:" with a list of rules'
    ]


def test_yaml_syntax_error_has_its_line(rules_dir: Path) -> None:
    assert problems(rules_dir, a="rules:\n  - name: a\n    when: up: 0\n") == [
        "rules/a.yaml:3: (file): YAML syntax error: mapping values are not allowed here"
    ]


def test_two_documents_in_one_file(rules_dir: Path) -> None:
    assert problems(rules_dir, a=GOOD + "---\nrules: []\n") == [
        "rules/a.yaml:7: (file): YAML syntax error: expected a single document in the stream:"
        " but found another document"
    ]


def test_not_utf8(rules_dir: Path) -> None:
    (rules_dir / "a.yaml").write_bytes(b"rules:\n  - name: caf\xe9\n")
    assert problems(rules_dir) == ["rules/a.yaml:2: (file): not UTF-8 text"]


def test_top_level_not_a_mapping(rules_dir: Path) -> None:
    assert problems(rules_dir, a="- name: a\n") == [
        "rules/a.yaml:1: (top level): expected a mapping, got a list"
    ]


def test_rules_not_a_list_is_reported_on_the_key_line(rules_dir: Path) -> None:
    assert problems(rules_dir, a="rules:\n  name: a\n") == [
        "rules/a.yaml:1: rules: expected a list, got a mapping"
    ]


def test_rule_not_a_mapping(rules_dir: Path) -> None:
    assert problems(rules_dir, a="rules:\n  - latency-p95\n") == [
        'rules/a.yaml:2: rules[0]: expected a mapping, got "latency-p95"'
    ]


def test_unknown_top_level_key(rules_dir: Path) -> None:
    assert problems(rules_dir, a=GOOD + "rule: []\n") == [
        'rules/a.yaml:7: rule: unknown key; did you mean "rules"?'
    ]


def test_value_that_cannot_be_read(rules_dir: Path) -> None:
    assert problems(rules_dir, a=one_rule(name="!!int abc")) == [
        'rules/a.yaml:2: rules[0].name: cannot read value "abc": invalid literal for int()'
        " with base 10: 'abc'",
        "rules/a.yaml:2: rules[0].name: expected text, got nothing",
    ]


def test_unsupported_tag(rules_dir: Path) -> None:
    assert problems(rules_dir, a="rules: !!set {a}\n") == [
        'rules/a.yaml:1: rules: unsupported tag "tag:yaml.org,2002:set"',
        "rules/a.yaml:1: rules: expected a list, got a mapping",
    ]


def test_key_that_is_not_plain_text(rules_dir: Path) -> None:
    assert problems(rules_dir, a="? [a, b]\n: 1\nrules: []\n") == [
        "rules/a.yaml:1: (top level): keys must be plain text"
    ]


def test_alias_that_refers_to_itself(rules_dir: Path) -> None:
    assert problems(rules_dir, a="rules: &r [*r]\n") == [
        "rules/a.yaml:1: rules[0]: an alias refers to itself",
        "rules/a.yaml:1: rules[0]: expected a mapping, got nothing",
    ]


def test_alias_bomb_is_refused(rules_dir: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    assert problems(rules_dir, a="\n".join(lines) + "\n") == [
        "rules/a.yaml:1: (file): too large (aliases expand too far)"
    ]


def test_directory_without_rule_files(rules_dir: Path) -> None:
    assert problems(rules_dir) == [
        "rules:1: (file): no *.yaml rule files in this directory (besides canaries.yaml)"
    ]


def test_missing_path(rules_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_rules(Path("nowhere.yaml"))
    assert err.value.problems == ["nowhere.yaml:1: (file): cannot read: No such file or directory"]
