"""Hostile YAML in ``warden.yaml``, rule files and the golden set: a valid result or
``file:line: path: message`` problems, never a traceback, never unbounded work.

tests/unit/test_yaml_fuzz.py fuzzes a handful of keys. Here: every key of every config section
(walked from the pydantic models, so a new section is fuzzed the day it is added) with values
that look like what each key wants, and the classic attacks on YAML parsers, each with the
message an operator gets.
"""

from __future__ import annotations

import re
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.canaries import load_canaries
from agent.config import WardenConfig, load_config
from agent.errors import ConfigError
from agent.rules import load_rules
from agent.signals import SIGNALS

PROBLEM = re.compile(r"^.+:\d+: .+: .+$", re.S)
LOADERS: list[Callable[[Path], object]] = [load_config, load_rules, load_canaries]


def _models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models inside a field's annotation (through Optional, tuple, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def config_tree(model: type[BaseModel] = WardenConfig) -> dict[str, object]:
    """Every key ``warden.yaml`` knows, as written in the file (aliases), nested like the file."""
    tree: dict[str, object] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        inner = _models(field.annotation)
        tree[key] = config_tree(inner[0]) if inner else None
    return tree


VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-5, 70_000)
    | st.sampled_from([0.0, -1.5, 1e308, float("nan"), float("inf")])
    | st.sampled_from(["30s", "500ms", "-1s", "1h30m", "1GiB", "0", "", "\x00", "é" * 3])
    | st.sampled_from(["127.0.0.1:9400", "0.0.0.0:1", "[::1]:9400", "host:99999", "http://x/y"])
    | st.sampled_from(["WARDEN_TOKEN", "not a name", "process", "docker", "swarm", "webhook"])
    | st.sampled_from(["/nonexistent/path", "rules", ".", "../../etc/passwd", "~/x"])
    | st.text(max_size=12)
)


def documents(tree: dict[str, object]) -> st.SearchStrategy[object]:
    """Mappings over ``tree``'s keys, nested where the config nests, with stray keys and lists."""

    def node(subtree: object) -> st.SearchStrategy[object]:
        if isinstance(subtree, dict) and subtree:
            keys = st.sampled_from(sorted(subtree)) | st.text(max_size=6)
            mapping = st.dictionaries(keys, st.deferred(lambda: VALUES), max_size=4).flatmap(
                lambda d: st.fixed_dictionaries(
                    {k: node(subtree.get(k)) if k in subtree else VALUES for k in d}
                )
            )
            return mapping | st.lists(mapping, max_size=2) | VALUES
        return VALUES | st.lists(VALUES, max_size=3)

    return node(tree)


def check(load: Callable[[Path], object], text: str | bytes, name: str = "warden.yaml") -> str:
    """``ok`` or the first problem; fails the test on anything but a ``ConfigError``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        try:
            load(path)
        except ConfigError as err:
            assert err.problems
            for problem in err.problems:
                assert PROBLEM.fullmatch(problem), problem
            return str(err.problems[0]).removeprefix(str(path))
    return "ok"


def test_the_config_tree_has_every_section_and_nested_key() -> None:
    tree = config_tree()

    assert {"api", "backend", "policy", "probe", "alerts", "drift", "decay"} <= set(tree)
    api = tree["api"]
    assert isinstance(api, dict) and {"bind", "tokens", "request_timeout"} <= set(api)
    assert api["tokens"] == {"name": None, "env": None, "file": None}


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(documents(config_tree()))
def test_any_config_built_from_the_real_keys_gives_a_config_or_located_problems(
    data: object,
) -> None:
    check(load_config, yaml.safe_dump({"api": data} if not isinstance(data, dict) else data))


HOSTILE = {
    "deeply nested flow list": ("[" * 1500 + "]" * 1500, ":1: (file): YAML syntax error: nested"),
    "deeply nested mapping": ("{a: " * 1500 + "1" + "}" * 1500, ":1: (file): YAML syntax error"),
    "code execution tag": (
        "!!python/object/apply:os.system ['echo pwned']",
        ':1: (top level): unsupported tag "tag:yaml.org,2002:python/object/apply:os.system"',
    ),
    "billion laughs": (
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
            for p, n in zip("abcdef", "bcdefg", strict=True)
        ),
        ":1: (file): too large (aliases expand too far)",
    ),
    "invalid UTF-8": (b"service: caf\xe9\n", ":1: (file): not UTF-8 text"),
    "UTF-16 with a BOM": ("service: x\n".encode("utf-16"), ":1: (file): not UTF-8 text"),
    "NUL byte": ("service: \x00\n", ":1: (file): YAML syntax error"),
    "huge integer": ("backend: {replicas: " + "9" * 5000 + "}\n", ":1: backend.replicas: "),
    "duplicate key": ("service: a\nservice: b\n", ":2: service: duplicate key (first on line 1)"),
    "complex key": ("? [a, b]\n: c\n", ":1: (top level): keys must be plain text"),
}


# PyYAML needs ~3 s to give up on 1500 nested brackets (bounded: deeper costs no more)
SLOW = {"deeply nested flow list", "deeply nested mapping"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_gets_a_located_message_from_every_loader(case: str) -> None:
    text, expected = HOSTILE[case]

    first = check(load_config, text)

    assert first.startswith(expected), first
    if case in SLOW:
        return  # the same reader serves every loader; once is proof enough
    for load in LOADERS[1:]:
        assert check(load, text, name="hostile.yaml") != "ok"


def test_a_directory_instead_of_a_file_is_a_located_problem(tmp_path: Path) -> None:
    (tmp_path / "warden.yaml").mkdir()

    with pytest.raises(ConfigError) as bad:
        load_config(tmp_path / "warden.yaml")

    assert bad.value.problems == [
        f"{tmp_path / 'warden.yaml'}:1: (file): cannot read: Is a directory"
    ]


def test_a_secret_in_the_config_is_refused_not_read(tmp_path: Path) -> None:
    config = tmp_path / "warden.yaml"
    config.write_text("api:\n  token: hunter2\n", encoding="utf-8")

    with pytest.raises(ConfigError) as bad:
        load_config(config)

    assert bad.value.problems[0].startswith(f"{config}:2: api.token: unknown key")
    assert "hunter2" not in "\n".join(bad.value.problems)


SIGNAL_NAMES = sorted(SIGNALS)
conditions = st.tuples(
    st.sampled_from(SIGNAL_NAMES) | st.text(max_size=8),
    st.sampled_from([">", ">=", "<", "<=", "==", "!=", "=>", "", "> >"]),
    st.sampled_from(["", "-", "1e999", "nan", "0x10", "½"]) | st.decimals(allow_nan=False).map(str),
    st.sampled_from(["", "%", "ms", "s", "MiB", "GiB", "x", " and up"]),
).map(lambda t: f"{t[0]} {t[1]} {t[2]}{t[3]}")
rules = st.fixed_dictionaries(
    {"name": st.sampled_from(["latency-p95", "a b", "", "x" * 300]), "when": conditions},
    optional={
        "for": st.sampled_from(["30s", "0s", "-1s", "1y", 5, None]),
        "severity": st.sampled_from(["warning", "critical", "info", "page", 3]),
        "actions": st.lists(st.sampled_from(["alert", "restart", "scale", "rollback", "reboot"])),
        "cooldown": st.sampled_from(["1m", "", "1h30m", 0.5]),
    },
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(rules, max_size=3))
def test_any_rule_condition_gives_rules_or_located_problems(items: list[dict[str, object]]) -> None:
    check(load_rules, yaml.safe_dump({"rules": items}), name="rules.yaml")
