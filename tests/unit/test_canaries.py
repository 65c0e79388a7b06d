"""The canary golden set: shipped items fit the default router; bad files say file:line why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.canaries import Canary, load_canaries, load_canary_set
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
LABELS = {"billing", "technical support", "product feedback", "account issue"}
ITEM = "  - {name: a, input: I was charged twice, expected: billing}\n"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(here: Path, text: str) -> list[str]:
    (here / "canaries.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_canaries(Path("canaries.yaml"))
    return err.value.problems


def test_shipped_golden_set_covers_every_default_label() -> None:
    golden = load_canary_set(REPO / "rules" / "canaries.yaml")
    assert golden.task == "classify"
    assert len(golden.canaries) == 8
    assert {canary.expected for canary in golden.canaries} == LABELS
    assert {canary.min_confidence for canary in golden.canaries} == {0.3}


def test_shipped_labels_are_the_servers_default_intents() -> None:
    intents = yaml.safe_load((REPO / "inference" / "intents.yaml").read_text(encoding="utf-8"))
    assert {intent["label"] for intent in intents["intents"]} == LABELS


def test_an_item_becomes_a_canary_with_its_source_line(here: Path) -> None:
    (here / "canaries.yaml").write_text("canaries:\n" + ITEM, encoding="utf-8")
    assert load_canaries(Path("canaries.yaml")) == (
        Canary(
            name="a",
            input="I was charged twice",
            expected="billing",
            min_confidence=0.0,
            source="canaries.yaml:2",
        ),
    )


def test_task_is_optional(here: Path) -> None:
    (here / "canaries.yaml").write_text("canaries:\n" + ITEM, encoding="utf-8")
    assert load_canary_set(Path("canaries.yaml")).task == ""


def test_confidence_above_one(here: Path) -> None:
    assert problems(
        here, "canaries:\n  - {name: a, input: x, expected: y, min_confidence: 30}\n"
    ) == ["canaries.yaml:2: canaries[0].min_confidence: must be at most 1, got 30"]


def test_missing_expected(here: Path) -> None:
    assert problems(here, "canaries:\n  - {name: a, input: x}\n") == [
        "canaries.yaml:2: canaries[0].expected: required key is missing"
    ]


def test_blank_input(here: Path) -> None:
    assert problems(here, "canaries:\n  - {name: a, input: ' ', expected: y}\n") == [
        "canaries.yaml:2: canaries[0].input: must not be empty"
    ]


def test_expected_that_is_not_text(here: Path) -> None:
    assert problems(here, "canaries:\n  - {name: a, input: x, expected: 1}\n") == [
        "canaries.yaml:2: canaries[0].expected: expected text, got 1"
    ]


def test_duplicate_name(here: Path) -> None:
    assert problems(here, "canaries:\n" + ITEM + ITEM) == [
        'canaries.yaml:3: canaries[1].name: duplicate canary name "a" (first on line 2)'
    ]


def test_no_items(here: Path) -> None:
    assert problems(here, "canaries: []\n") == [
        "canaries.yaml:1: canaries: at least one canary is required"
    ]


def test_unknown_key(here: Path) -> None:
    assert problems(here, "canaries:\n  - {name: a, input: x, expected: y, label: z}\n") == [
        "canaries.yaml:2: canaries[0].label: unknown key;"
        " expected one of: name, input, expected, min_confidence"
    ]


def test_empty_file(here: Path) -> None:
    assert problems(here, "") == [
        'canaries.yaml:1: (file): file is empty; expected "canaries:" with a list of'
        " golden-set items"
    ]


def test_syntax_error(here: Path) -> None:
    assert problems(here, "canaries:\n  - {name: a\n") == [
        "canaries.yaml:3: (file): YAML syntax error: while parsing a flow mapping:"
        " expected ',' or '}', but got '<stream end>'"
    ]
