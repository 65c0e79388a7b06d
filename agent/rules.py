"""Rule files (``rules/*.yaml``): load and validate them all at once, and hot-reload them.

A rule says: when ``<signal> <op> <threshold>`` has held ``for`` a while, raise an alert of some
severity and climb the rule's own action ladder (``docs/decisions.md``). Every problem in every file
is reported together as ``file:line: path: message``; the agent keeps the last valid set when an
edit is invalid.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator

from agent.domain import ActionKind
from agent.durations import quote
from agent.errors import ConfigError
from agent.signals import Condition, parse_condition
from agent.yamlconf import (
    FILE_PATH,
    Document,
    Duration,
    Problem,
    choice,
    describe,
    read_document,
    render,
    validate,
)

SEVERITIES = ("info", "warning", "critical")
RULE_ACTIONS = (ActionKind.ALERT, ActionKind.RESTART, ActionKind.SCALE, ActionKind.ROLLBACK)
GOLDEN_SET_FILE = "canaries.yaml"  # lives next to the rules but is not a rule file
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One validated rule; the threshold is in the signal's base unit (ms, ratio, bytes...)."""

    name: str
    signal: str
    op: str
    threshold: float
    threshold_text: str  # as written in the file, e.g. "0.5%"
    for_s: float
    severity: str
    actions: tuple[ActionKind, ...]  # the rule's escalation ladder, in order
    cooldown_s: float
    description: str
    source: str  # "rules/latency.yaml:3"

    @property
    def condition(self) -> Condition:
        """The ``when`` of the rule as a ``Condition``."""
        return Condition(
            signal=self.signal,
            op=self.op,
            threshold=self.threshold,
            threshold_text=self.threshold_text,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSet:
    """All rules in effect, in file order, and the files they came from."""

    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()

    def get(self, name: str) -> Rule | None:
        """The rule called ``name``, if any."""
        return next((rule for rule in self.rules if rule.name == name), None)


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f'use lowercase letters, digits and "-" (like "latency-p95"); got {quote(value)}'
        )
    return value


def _when(value: object) -> Condition:
    if not isinstance(value, str):
        raise ValueError(f'expected a condition like "latency_p95_ms > 100"; got {describe(value)}')
    return parse_condition(value)


def _check_actions(actions: list[ActionKind]) -> list[ActionKind]:
    if not actions:
        raise ValueError("at least one action is required: alert, restart, scale or rollback")
    for index, action in enumerate(actions):
        if action in actions[:index]:
            raise ValueError(f"action {quote(action.value)} is listed twice")
    return actions


_Action = Annotated[ActionKind, BeforeValidator(choice("action", [a.value for a in RULE_ACTIONS]))]


class _RuleModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Annotated[str, AfterValidator(_check_name)]
    when: Annotated[Condition, PlainValidator(_when)]
    for_s: Duration = Field(0.0, alias="for")
    severity: Annotated[str, BeforeValidator(choice("severity", SEVERITIES))]
    actions: Annotated[list[_Action], AfterValidator(_check_actions)]
    cooldown_s: Duration = Field(60.0, alias="cooldown")
    description: str = ""


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[_RuleModel]


def rule_files(path: Path) -> list[Path]:
    """The rule files at ``path``: a directory's ``*.yaml`` but the golden set, or one file."""
    if path.is_dir():
        found = (p for p in path.glob("*.yaml") if p.name != GOLDEN_SET_FILE and p.is_file())
        return sorted(found)
    return [path]


def load_rules(path: Path) -> RuleSet:
    """Load every rule file at ``path`` (a directory or one file).

    Raises ``ConfigError`` listing every problem in every file, sorted by file and line.
    """
    files = rule_files(path)
    problems: list[Problem] = []
    if not files:
        message = f"no *.yaml rule files in this directory (besides {GOLDEN_SET_FILE})"
        problems.append(Problem(file=str(path), line=1, path=FILE_PATH, message=message))
    rules: list[Rule] = []
    docs: list[Document] = []
    for file in files:
        doc = read_document(file)
        docs.append(doc)
        file_rules, file_problems = _rules_in(doc)
        rules.extend(file_rules)
        problems.extend(file_problems)
    problems.extend(_duplicate_names(docs))
    if problems:
        raise ConfigError(render(problems))
    return RuleSet(rules=tuple(rules), files=tuple(str(file) for file in files))


def _rules_in(doc: Document) -> tuple[list[Rule], list[Problem]]:
    if doc.problems and doc.data is None:
        return [], doc.problems
    if doc.empty:
        message = 'file is empty; expected "rules:" with a list of rules'
        return [], [Problem(file=doc.file, line=1, path=FILE_PATH, message=message)]
    model, problems = validate(_RulesFile, doc)
    if model is None or doc.problems:
        return [], doc.problems + problems
    rules = [
        _to_rule(item, f"{doc.file}:{doc.line_of(('rules', i))}")
        for i, item in enumerate(model.rules)
    ]
    return rules, []


def _to_rule(model: _RuleModel, source: str) -> Rule:
    return Rule(
        name=model.name,
        signal=model.when.signal,
        op=model.when.op,
        threshold=model.when.threshold,
        threshold_text=model.when.threshold_text,
        for_s=model.for_s,
        severity=model.severity,
        actions=tuple(model.actions),
        cooldown_s=model.cooldown_s,
        description=model.description,
        source=source,
    )


def _duplicate_names(docs: list[Document]) -> list[Problem]:
    """Names must be unique across all files; read from the raw data so that a rule with other
    problems still takes part."""
    first: dict[str, str] = {}
    problems: list[Problem] = []
    for doc in docs:
        items = doc.data.get("rules") if isinstance(doc.data, dict) else None
        for index, item in enumerate(items if isinstance(items, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str):
                continue
            loc = ("rules", index, "name")
            where = f"{doc.file}:{doc.line_of(loc)}"
            if name in first:
                message = f"duplicate rule name {quote(name)} (first defined at {first[name]})"
                problems.append(doc.problem(loc, message))
            else:
                first[name] = where
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """What one ``RuleWatcher.poll()`` found."""

    reloaded: bool  # the files changed on disk and were read again
    changed: bool  # the rules in effect changed
    ok: bool  # the files on disk are valid; False: they are not and the last valid set is kept
    problems: list[str]  # when not ok: every problem, as ``load_rules`` reports them
    rules: RuleSet  # the rules in effect (the new set, or the last valid one)


_Fingerprint = tuple[tuple[str, int, int, int, int], ...]


class RuleWatcher:
    """Hot reload: ``poll()`` every tick; it stats the files (cheap) and re-reads them only when
    something changed (edited, added, deleted, atomically replaced). Contents are hashed, so a
    touch or a rewrite with the same text is not a reload.

    Construction loads the rules (``ConfigError`` if they are invalid) unless ``rules`` is given.
    ``on_change`` is called with the result of every reload, valid or not, so the caller can log,
    audit and count it.
    """

    def __init__(
        self,
        path: Path,
        on_change: Callable[[ReloadResult], None] | None = None,
        *,
        rules: RuleSet | None = None,
    ) -> None:
        self._path = path
        self._on_change = on_change
        self._fingerprint = self._stat()
        self._recheck = True
        self._digest = self._hash()
        self._rules = rules if rules is not None else load_rules(path)
        self._problems: list[str] = []

    @property
    def rules(self) -> RuleSet:
        """The rules in effect."""
        return self._rules

    def poll(self) -> ReloadResult:
        """Check the files; reload them if they changed. Never raises for invalid files."""
        fingerprint = self._stat()
        moved = fingerprint != self._fingerprint
        if not moved and not self._recheck:
            return self._result(reloaded=False, changed=False)
        # A second write within the file system's timestamp granularity can leave size and
        # mtime as they were; so after any change, the next poll compares contents once more.
        self._fingerprint, self._recheck = fingerprint, moved
        digest = self._hash()
        if digest == self._digest:  # touched or rewritten with the same content
            return self._result(reloaded=False, changed=False)
        self._digest = digest
        try:
            rules = load_rules(self._path)
        except ConfigError as exc:
            self._problems = list(exc.problems)
            result = self._result(reloaded=True, changed=False)
        else:
            changed, self._rules, self._problems = rules != self._rules, rules, []
            result = self._result(reloaded=True, changed=changed)
        if self._on_change is not None:
            self._on_change(result)
        return result

    def _result(self, *, reloaded: bool, changed: bool) -> ReloadResult:
        return ReloadResult(
            reloaded=reloaded,
            changed=changed,
            ok=not self._problems,
            problems=list(self._problems),
            rules=self._rules,
        )

    def _stat(self) -> _Fingerprint:
        entries = []
        for file in [self._path, *rule_files(self._path)]:
            try:
                st = file.stat()
            except OSError:
                entries.append((str(file), -1, -1, -1, -1))
                continue
            entries.append((str(file), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
        return tuple(entries)

    def _hash(self) -> str:
        digest = hashlib.sha256()
        for file in rule_files(self._path):
            digest.update(str(file).encode() + b"\0")
            try:
                digest.update(file.read_bytes())
            except OSError as exc:
                digest.update(f"unreadable: {exc}".encode())
            digest.update(b"\0")
        return digest.hexdigest()
