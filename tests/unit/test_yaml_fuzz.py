"""Any YAML at all gives a valid result or a ConfigError of ``file:line: path: message`` lines.

Never another exception: an operator's typo must never crash the agent or ``warden rules check``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.canaries import load_canaries
from agent.config import load_config
from agent.errors import ConfigError
from agent.rules import load_rules
from agent.signals import SIGNALS

PROBLEM = re.compile(r"^.+:\d+: .+: .+$")
RULE_KEYS = ["name", "when", "for", "severity", "actions", "cooldown", "description", "x"]
CONFIG_KEYS = ["service", "backend", "release", "probe", "api", "alerts", "policy", "state_dir"]
CONFIG_KEYS += ["maintenance", "kind", "replicas", "port", "interval", "bind", "url", "bake"]
WORDS = [*SIGNALS, "alert", "restart", "warning", "30s", "0.5%", "1GiB", ">", ">=", "==", "-"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(WORDS)
    | st.lists(st.sampled_from(WORDS), max_size=4).map(" ".join)
)


def documents(keys: list[str]) -> st.SearchStrategy[object]:
    """YAML-able structures whose keys are often the ones the loader knows."""
    key = st.sampled_from(keys) | st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key, inner, max_size=6),
        max_leaves=25,
    )


def dump(data: object) -> str:
    return yaml.safe_dump(data)


rule_files = st.one_of(
    documents(RULE_KEYS).map(dump),
    st.lists(documents(RULE_KEYS), max_size=3).map(lambda rules: yaml.safe_dump({"rules": rules})),
    st.text(max_size=200),
)
config_files = st.one_of(
    documents(CONFIG_KEYS).map(dump),
    st.dictionaries(st.sampled_from(CONFIG_KEYS), documents(CONFIG_KEYS), max_size=6).map(dump),
    st.text(max_size=200),
)


def check(load: Callable[[Path], object], name: str, text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text, encoding="utf-8")
        try:
            load(path)
        except ConfigError as err:
            assert err.problems
            for problem in err.problems:
                assert PROBLEM.fullmatch(problem), problem


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(rule_files)
def test_any_rule_file_gives_rules_or_located_problems(text: str) -> None:
    check(load_rules, "fuzz.yaml", text)


@FUZZ
@given(config_files)
def test_any_config_file_gives_a_config_or_located_problems(text: str) -> None:
    check(load_config, "warden.yaml", text)


@FUZZ
@given(rule_files)
def test_any_golden_set_gives_canaries_or_located_problems(text: str) -> None:
    check(load_canaries, "canaries.yaml", text)
