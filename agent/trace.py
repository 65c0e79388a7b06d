"""Signal traces for ``warden rules test --trace FILE``: record ticks, replay rules over them.

A trace is JSON lines, one per tick: ``{"at": 1700000000.0, "signals": {subject: {name: value}}}``.
The agent can record one while it runs; replaying the rules over it shows what would have fired,
using the same ``evaluate`` as the agent, so a rule can be tried before it is deployed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.domain import Snapshot
from agent.errors import ConfigError
from agent.evaluate import Key, describe_resolved, evaluate
from agent.rules import RuleSet
from agent.yamlconf import error_message, render_loc


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRecord:
    """The signals of one tick."""

    at: float
    signals: Mapping[str, Mapping[str, float]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayEvent:
    """A rule starting or stopping to fire on a subject during a replay."""

    at: float
    rule: str
    subject: str
    kind: Literal["firing", "resolved"]
    reason: str


class _TraceLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    at: float
    signals: dict[str, dict[str, float]]


class TraceRecorder:
    """Appends one JSON line per tick to ``path`` and flushes it, so a crash loses at most one."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def record(self, snapshot: Snapshot) -> None:
        """Append the signals of ``snapshot``."""
        self.write(TraceRecord(at=snapshot.at, signals=snapshot.signals))

    def write(self, record: TraceRecord) -> None:
        """Append one record."""
        signals = {subject: dict(values) for subject, values in record.signals.items()}
        line = json.dumps({"at": record.at, "signals": signals}, separators=(",", ":"))
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_trace(path: Path) -> list[TraceRecord]:
    """Read a trace file; ``ConfigError`` lists every bad line as ``file:line: path: message``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}:1: (file): cannot read: {exc}"]) from None
    return parse_trace(text.splitlines(), str(path))


def parse_trace(lines: Iterable[str], source: str) -> list[TraceRecord]:
    """Parse trace lines (blank lines are skipped); ``source`` names the file in messages."""
    records: list[TraceRecord] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record, line_problems = _parse_line(line, f"{source}:{number}")
        problems.extend(line_problems)
        if record is None:
            continue
        if records and record.at < records[-1].at:
            problems.append(
                f"{source}:{number}: at: time goes backwards ({record.at} after {records[-1].at})"
            )
        records.append(record)
    if problems:
        raise ConfigError(problems)
    return records


def _parse_line(line: str, where: str) -> tuple[TraceRecord | None, list[str]]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, [f"{where}: (line): not JSON: {exc.msg} (column {exc.colno})"]
    try:
        parsed = _TraceLine.model_validate(data)
    except ValidationError as exc:
        return None, [
            f"{where}: {render_loc(err['loc'])}: {error_message(err, _TraceLine)}"
            for err in exc.errors()
        ]
    return TraceRecord(at=parsed.at, signals=parsed.signals), []


def replay(rules: RuleSet, records: Iterable[TraceRecord]) -> list[ReplayEvent]:
    """What the rules would have done over the trace: each start and end of a firing, in order."""
    pending: dict[Key, float] = {}
    firing: frozenset[Key] = frozenset()
    events: list[ReplayEvent] = []
    for record in records:
        snapshot = Snapshot(at=record.at, replicas=(), signals=record.signals)
        result = evaluate(rules, snapshot, pending, firing_before=firing)
        for fired in result.newly_firing:
            events.append(
                ReplayEvent(
                    at=record.at,
                    rule=fired.rule,
                    subject=fired.subject,
                    kind="firing",
                    reason=fired.reason,
                )
            )
        for name, subject in result.resolved:
            events.append(_resolved_event(rules, record, name, subject))
        pending, firing = result.pending, result.firing_keys
    return events


def _resolved_event(rules: RuleSet, record: TraceRecord, name: str, subject: str) -> ReplayEvent:
    rule = rules.get(name)
    if rule is None:  # cannot happen in a replay: the rule set does not change
        reason = f"rule {name} was removed"
    else:
        value = record.signals.get(subject, {}).get(rule.signal)
        reason = describe_resolved(rule, subject, value)
    return ReplayEvent(at=record.at, rule=name, subject=subject, kind="resolved", reason=reason)
