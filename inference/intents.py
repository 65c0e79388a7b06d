"""Intent definitions for the ``classify`` task: labels and example phrases from a YAML file.

The file shape (see ``inference/intents.yaml``)::

    intents:
      - label: billing
        examples: ["I was charged twice", "Can I get a refund?"]

Every problem is reported at once as ``FILE:LINE: PATH: message``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from inference.errors import ConfigError

DEFAULT_INTENTS_FILE = Path(__file__).with_name("intents.yaml")

_Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]


class _IntentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: _Text
    examples: list[_Text] = Field(min_length=1)


class _IntentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    intents: list[_IntentSpec] = Field(min_length=2)


@dataclass(frozen=True, slots=True, kw_only=True)
class Intent:
    """One routing target: a label and the phrases that define it."""

    label: str
    examples: tuple[str, ...]


def load_intents(path: Path = DEFAULT_INTENTS_FILE) -> tuple[Intent, ...]:
    """Read and validate an intents file; raises ``ConfigError`` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read intents file: {exc.strerror or exc}"]) from exc
    return parse_intents(text, source=str(path))


def parse_intents(text: str, *, source: str) -> tuple[Intent, ...]:
    """Validate intents YAML ``text``; ``source`` names it in error messages."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError([f"{where}: not valid YAML: {exc}"]) from exc
    try:
        parsed = _IntentsFile.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error, root, source) for error in exc.errors()]
        raise ConfigError(problems) from exc
    problems = _duplicate_labels(parsed, root, source)
    if problems:
        raise ConfigError(problems)
    return tuple(Intent(label=i.label, examples=tuple(i.examples)) for i in parsed.intents)


def _duplicate_labels(parsed: _IntentsFile, root: yaml.Node | None, source: str) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for index, intent in enumerate(parsed.intents):
        if intent.label in seen:
            loc = ("intents", index, "label")
            problems.append(
                f"{source}:{_line(root, loc)}: {_path(loc)}: label {intent.label!r} is already "
                f"used by intents[{seen[intent.label]}]; labels must be unique"
            )
        seen.setdefault(intent.label, index)
    return problems


def _describe(error: object, root: yaml.Node | None, source: str) -> str:
    assert isinstance(error, dict)
    loc = tuple(error["loc"])
    message = str(error["msg"])
    if error["type"] == "model_type" and not loc:
        message = "expected a mapping with key 'intents' (a list of labels and examples)"
    elif error["type"] in {"string_type", "dict_type", "list_type"}:
        got = type(error["input"]).__name__
        message = f"{message} (got {got})"
        if isinstance(error["input"], dict) and loc[-2:-1] == ("examples",):
            message += "; quote phrases that contain ': '"
    return f"{source}:{_line(root, loc)}: {_path(loc) or '(top level)'}: {message}"


def _path(loc: tuple[object, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(root: yaml.Node | None, loc: tuple[object, ...]) -> int:
    """1-based line of the deepest YAML node on ``loc`` (the file's first line if none)."""
    node = root
    best = 1 if root is None else root.start_mark.line + 1
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
        best = node.start_mark.line + 1
    return best


def _child(node: yaml.Node | None, part: object) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return value  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None
