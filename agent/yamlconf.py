"""YAML files with line numbers, validated by pydantic, every problem as ``file:line: path: msg``.

Rule files, ``warden.yaml`` and the canary golden set all go through here, so an operator sees the
same kind of message for any file, and sees every problem at once rather than the first.

PyYAML's composed nodes carry the line of every key and value; we build plain Python data from the
nodes ourselves (remembering where each path came from), let pydantic check the shape, and turn
each pydantic error back into a line of the file.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent.durations import DurationError, parse_duration, parse_size, quote

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

FILE_PATH = "(file)"  # path shown for problems with the file itself (unreadable, syntax, empty)
TOP_PATH = "(top level)"  # path shown for problems with the document as a whole
_MAX_NODES = 100_000  # refuses alias bombs ("billion laughs") long before memory runs out
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One problem in one file; ``str()`` gives ``file:line: path: message``."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path}: {self.message}"


def render(problems: Iterable[Problem]) -> list[str]:
    """Problems as text lines, sorted by file and line (stable for problems on one line)."""
    return [str(p) for p in sorted(problems, key=lambda p: (p.file, p.line))]


@dataclass(slots=True, kw_only=True)
class Document:
    """A YAML file read into plain data, with the line of every path and any problems so far."""

    file: str  # as shown in messages
    data: object = None
    empty: bool = True
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line_of(self, loc: Sequence[str | int]) -> int:
        """Line of the longest prefix of ``loc`` that is in the file (a missing key: its parent)."""
        for end in range(len(loc), 0, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return self.lines.get((), 1)

    def problem(self, loc: Sequence[str | int], message: str, line: int | None = None) -> Problem:
        """A problem at ``loc`` (line looked up unless given)."""
        at = self.line_of(loc) if line is None else line
        return Problem(file=self.file, line=at, path=render_loc(loc), message=message)


def read_document(path: Path, shown: str | None = None) -> Document:
    """Read and compose a YAML file. Never raises: unreadable files, bad syntax are problems."""
    doc = Document(file=shown if shown is not None else str(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        doc.problems.append(_file_problem(doc, 1, f"cannot read: {exc.strerror or exc}"))
        return doc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        doc.problems.append(_file_problem(doc, line, "not UTF-8 text"))
        return doc
    parse_text(doc, text)
    return doc


def parse_text(doc: Document, text: str) -> None:
    """Compose ``text`` into ``doc.data`` and ``doc.lines``, adding problems instead of raising."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        detail = ": ".join(str(part) for part in (exc.context, exc.problem) if part)
        doc.problems.append(_file_problem(doc, line, f"YAML syntax error: {detail}"))
        return
    except yaml.YAMLError as exc:
        position = getattr(exc, "position", 0)
        line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
        reason = getattr(exc, "reason", "") or "unreadable"
        doc.problems.append(_file_problem(doc, line, f"YAML syntax error: {reason}"))
        return
    except RecursionError:
        doc.problems.append(_file_problem(doc, 1, "YAML syntax error: nested too deeply"))
        return
    if node is None:
        return
    doc.empty = False
    builder = _Builder(doc)
    try:
        doc.data = builder.build(node, ())
    except _TooBig:
        doc.data = None
        doc.problems.append(_file_problem(doc, 1, "too large (aliases expand too far)"))
    except RecursionError:
        doc.data = None
        doc.problems.append(_file_problem(doc, 1, "YAML syntax error: nested too deeply"))


def _file_problem(doc: Document, line: int, message: str) -> Problem:
    return Problem(file=doc.file, line=line, path=FILE_PATH, message=message.replace("\n", " "))


class _TooBig(Exception):
    pass


class _Builder:
    """Turns composed nodes into dicts, lists and scalars, recording the line of each path."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.constructor = SafeConstructor()
        self.remaining = _MAX_NODES
        self.active: set[int] = set()  # nodes being built: an alias back to one is recursive

    def build(self, node: Node, loc: Loc) -> object:
        self.remaining -= 1
        if self.remaining < 0:
            raise _TooBig
        self.doc.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, ScalarNode):
            return self._scalar(node, loc)
        if id(node) in self.active:
            self._problem(loc, node, "an alias refers to itself")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self._sequence(node, loc)
            if isinstance(node, MappingNode):
                return self._mapping(node, loc)
            return None
        finally:
            self.active.discard(id(node))

    def _problem(self, loc: Loc, node: Node, message: str) -> None:
        self.doc.problems.append(self.doc.problem(loc, message, node.start_mark.line + 1))

    def _scalar(self, node: ScalarNode, loc: Loc) -> object:
        try:
            return self.constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            self._problem(loc, node, f"cannot read value {quote(node.value)}: {reason}")
            return None

    def _sequence(self, node: SequenceNode, loc: Loc) -> list[object]:
        if node.tag != _SEQ_TAG:
            self._problem(loc, node, f"unsupported tag {quote(node.tag)}")
        return [self.build(child, (*loc, index)) for index, child in enumerate(node.value)]

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, object]:
        if node.tag != _MAP_TAG:
            self._problem(loc, node, f"unsupported tag {quote(node.tag)}")
        own_keys = {id(key) for key, _ in node.value}
        try:
            self.constructor.flatten_mapping(node)  # YAML merge keys ("<<: *defaults")
        except yaml.YAMLError as exc:
            self._problem(loc, node, f"cannot merge: {getattr(exc, 'problem', exc)}")
            return {}
        result: dict[str, object] = {}
        first_line: dict[str, tuple[int, bool]] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, ScalarNode):
                self._problem(loc, key_node, "keys must be plain text")
                continue
            key, own = str(key_node.value), id(key_node) in own_keys
            seen = first_line.get(key)
            if seen is not None and seen[1] and own:
                self._problem((*loc, key), key_node, f"duplicate key (first on line {seen[0]})")
                continue
            first_line[key] = (line, own)
            self.doc.lines[(*loc, key)] = line
            result[key] = self.build(value_node, (*loc, key))
        return result


def render_loc(loc: Sequence[str | int]) -> str:
    """``("rules", 2, "when")`` -> ``rules[2].when``; the empty path is ``(top level)``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier():
            text += f".{part}" if text else part
        elif part != "[key]":
            text += f"[{quote(part)}]"
    return text or TOP_PATH


def validate(
    model: type[M], doc: Document, *, context: Mapping[str, object] | None = None
) -> tuple[M | None, list[Problem]]:
    """Validate ``doc.data`` as ``model``; the problems say where in the file each error is."""
    try:
        return model.model_validate(doc.data, context=dict(context or {})), []
    except ValidationError as exc:
        return None, [doc.problem(err["loc"], error_message(err, model)) for err in exc.errors()]


def describe(value: object) -> str:
    """A value from a file as it reads in a message: "text", 3, true, a list, a mapping."""
    if isinstance(value, bool) or value is None:
        return {None: "nothing", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int | float):
        return repr(value)
    kinds: dict[type, str] = {list: "a list", tuple: "a list", dict: "a mapping"}
    return kinds.get(type(value), f"a {type(value).__name__}")


_TYPE_MESSAGES = {
    "string_type": "expected text",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "path_type": "expected a path",
}
_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt"}
_BOUNDS |= {"less_than_equal": "le"}
_BOUND_WORDS = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}


def error_message(err: ErrorDetails, model: type[BaseModel]) -> str:
    """One pydantic error as an operator-facing message (no location: the caller adds it)."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        loc = err["loc"]
        return f"unknown key{did_you_mean(str(loc[-1]), allowed_keys(model, loc[:-1]))}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"]).replace("\n", " ")
    if kind in _TYPE_MESSAGES:
        return f"{_TYPE_MESSAGES[kind]}, got {describe(err['input'])}"
    if kind in _BOUNDS:
        bound = _BOUNDS[kind]
        limit = ctx[bound]
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {_BOUND_WORDS[bound]} {limit}, got {describe(err['input'])}"
    message = err["msg"].replace("\n", " ")
    return message[:1].lower() + message[1:]


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``'; did you mean "x"?'`` for a close choice, else the list of choices (or nothing)."""
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f'; did you mean "{close[0]}"?'
    if choices:
        return f"; expected one of: {', '.join(choices)}"
    return ""


def allowed_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys the model accepts at ``loc`` (empty when ``loc`` is not a model)."""
    current: Any = model
    for part in loc:
        current = _step_into(current, part)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [info.alias or name for name, info in current.model_fields.items()]
    return []


def _step_into(annotation: Any, part: str | int) -> Any:
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, info in annotation.model_fields.items():
            if part in (name, info.alias):
                return info.annotation
        return None
    args = [arg for arg in typing.get_args(annotation) if arg is not Ellipsis]
    if isinstance(part, int) and args:
        return args[0]
    if isinstance(part, str) and len(args) == 2:  # dict[str, X]
        return args[1]
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to the type that holds the keys."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            annotation = options[0] if len(options) == 1 else annotation
            if len(options) != 1:
                return annotation
        else:
            return annotation


def choice(word: str, choices: Sequence[str]) -> Callable[[object], object]:
    """A before-validator accepting one of ``choices``: 'unknown severity "warn"; did you mean…'."""

    def check(value: object) -> object:
        if not isinstance(value, str):
            raise ValueError(f"expected one of: {', '.join(choices)}; got {describe(value)}")
        if value not in choices:
            raise ValueError(f"unknown {word} {quote(value)}{did_you_mean(value, choices)}")
        return value

    return check


def _duration(value: object) -> float:
    return parse_duration(value)


def _optional_size(value: object) -> float | None:
    return None if value is None else parse_size(value)


def _positive(value: float) -> float:
    if value <= 0:
        raise DurationError("must be longer than 0s")
    return value


Duration = Annotated[float, BeforeValidator(_duration)]
"""Seconds, written as "500ms", "30s", "1h30m" (or 0)."""
PositiveDuration = Annotated[float, BeforeValidator(_duration), AfterValidator(_positive)]
"""Seconds, more than zero."""
ByteSize = Annotated[float | None, BeforeValidator(_optional_size)]
"""Bytes, written as "512MiB", "1GB" or a plain number of bytes; null = none."""
