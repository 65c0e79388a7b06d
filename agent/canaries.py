"""The canary golden set (``rules/canaries.yaml``): inputs whose right answer we know.

The canary probe sends each input to every replica and checks the top-1 ``label`` (a class for
``classify``, a token for ``fill-mask``) and, when ``min_confidence`` is set, its ``score``.
Problems are reported like rule files: ``file:line: path: message``, all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from agent.durations import quote
from agent.errors import ConfigError
from agent.yamlconf import FILE_PATH, Document, Problem, read_document, render, validate


@dataclass(frozen=True, slots=True, kw_only=True)
class Canary:
    """One golden-set item: send ``input``, expect ``expected`` with at least ``min_confidence``."""

    name: str
    input: str
    expected: str
    min_confidence: float = 0.0
    source: str = ""  # "rules/canaries.yaml:4"


@dataclass(frozen=True, slots=True, kw_only=True)
class CanarySet:
    """The golden set and the task it was written for ("" = any)."""

    task: str
    canaries: tuple[Canary, ...]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


_Text = Annotated[str, AfterValidator(_not_blank)]


class _CanaryModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: _Text
    input: _Text
    expected: _Text
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)


def _at_least_one(items: list[_CanaryModel]) -> list[_CanaryModel]:
    if not items:
        raise ValueError("at least one canary is required")
    return items


class _CanaryFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = ""
    canaries: Annotated[list[_CanaryModel], AfterValidator(_at_least_one)]


def load_canary_set(path: Path) -> CanarySet:
    """Load the golden set at ``path``; ``ConfigError`` lists every problem."""
    doc = read_document(path)
    if doc.problems and doc.data is None:
        raise ConfigError(render(doc.problems))
    if doc.empty:
        message = 'file is empty; expected "canaries:" with a list of golden-set items'
        raise ConfigError(render([Problem(file=doc.file, line=1, path=FILE_PATH, message=message)]))
    model, problems = validate(_CanaryFile, doc)
    problems = doc.problems + problems + _duplicate_names(doc)
    if model is None or problems:
        raise ConfigError(render(problems))
    canaries = tuple(
        Canary(
            name=item.name,
            input=item.input,
            expected=item.expected,
            min_confidence=item.min_confidence,
            source=f"{doc.file}:{doc.line_of(('canaries', index))}",
        )
        for index, item in enumerate(model.canaries)
    )
    return CanarySet(task=model.task, canaries=canaries)


def load_canaries(path: Path) -> tuple[Canary, ...]:
    """The golden-set items at ``path``; ``ConfigError`` lists every problem."""
    return load_canary_set(path).canaries


def _duplicate_names(doc: Document) -> list[Problem]:
    items = doc.data.get("canaries") if isinstance(doc.data, dict) else None
    first: dict[str, int] = {}
    problems = []
    for index, item in enumerate(items if isinstance(items, list) else []):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        loc = ("canaries", index, "name")
        if name in first:
            message = f"duplicate canary name {quote(name)} (first on line {first[name]})"
            problems.append(doc.problem(loc, message))
        else:
            first[name] = doc.line_of(loc)
    return problems
