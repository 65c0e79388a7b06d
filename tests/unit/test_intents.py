"""Intents YAML: the default file loads; every problem is reported with file, line and path."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.errors import ConfigError
from inference.intents import DEFAULT_INTENTS_FILE, load_intents, parse_intents


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_intents(text, source="intents.yaml")
    return caught.value.problems


def test_default_intents_are_the_four_customer_service_routes() -> None:
    intents = load_intents(DEFAULT_INTENTS_FILE)
    assert [i.label for i in intents] == [
        "billing",
        "technical support",
        "product feedback",
        "account issue",
    ]
    assert all(len(i.examples) >= 8 for i in intents)


def test_every_problem_is_reported_with_line_and_path() -> None:
    text = (
        "intents:\n"
        "  - label: a\n"
        "    examples:\n"
        "      - Note: this is a mapping\n"
        "  - label: b\n"
        "    examples: []\n"
        "  - label: c\n"
        "    sample: [x]\n"
    )
    assert problems(text) == [
        "intents.yaml:4: intents[0].examples[0]: Input should be a valid string (got dict); "
        "quote phrases that contain ': '",
        "intents.yaml:6: intents[1].examples: List should have at least 1 item after "
        "validation, not 0",
        "intents.yaml:7: intents[2].examples: Field required",
        "intents.yaml:8: intents[2].sample: Extra inputs are not permitted",
    ]


def test_duplicate_labels_are_rejected() -> None:
    text = "intents:\n  - {label: a, examples: [x]}\n  - {label: a, examples: [y]}\n"
    assert problems(text) == [
        "intents.yaml:3: intents[1].label: label 'a' is already used by intents[0]; "
        "labels must be unique"
    ]


def test_at_least_two_intents_are_needed() -> None:
    assert problems("intents:\n  - {label: a, examples: [x]}\n") == [
        "intents.yaml:2: intents: List should have at least 2 items after validation, not 1"
    ]


def test_an_empty_file_says_what_shape_is_expected() -> None:
    assert problems("") == [
        "intents.yaml:1: (top level): expected a mapping with key 'intents' "
        "(a list of labels and examples)"
    ]


def test_invalid_yaml_names_the_line() -> None:
    (problem,) = problems("intents:\n  - label: [unclosed\n")
    assert problem.startswith("intents.yaml:3: not valid YAML")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read intents file"):
        load_intents(tmp_path / "nope.yaml")
