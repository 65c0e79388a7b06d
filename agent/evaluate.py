"""Rule evaluation: a pure function from rules, one snapshot and the pending state to firings.

A rule's condition must hold on a subject (a replica, or ``service``) continuously for the rule's
``for`` duration before the rule fires there. ``pending`` remembers when each (rule, subject)
condition became true; the caller keeps it between ticks (and persists it), together with the
keys that were firing, so that ``newly_firing`` and ``resolved`` are edges, not levels.

A signal that is absent this tick (not measured) neither fires nor resolves: its state is kept.
A subject that is gone altogether (a replica scaled away: no signals and not among the replicas)
is dropped, and resolves if it was firing. So does a rule that was removed by a reload.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

from agent.domain import SERVICE, Firing, Snapshot
from agent.durations import format_duration, format_number
from agent.rules import Rule, RuleSet
from agent.signals import OPERATORS, SIGNALS, Scope, SignalSpec, Unit

Key = tuple[str, str]  # (rule name, subject)
_MIB = 2.0**20


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """The outcome of evaluating every rule on one snapshot."""

    firing: tuple[Firing, ...]  # every (rule, subject) firing now, in rule order
    pending: dict[Key, float] = field(default_factory=dict)  # condition true since; pass back next
    resolved: tuple[Key, ...] = ()  # were firing, and now are not (condition false or subject gone)
    newly_firing: tuple[Firing, ...] = ()  # firing now and not firing before
    firing_keys: frozenset[Key] = frozenset()  # firing now, or kept firing (signal absent)


def evaluate(
    rules: RuleSet,
    snapshot: Snapshot,
    pending: Mapping[Key, float],
    *,
    firing_before: Collection[Key] = frozenset(),
) -> Evaluation:
    """Evaluate every rule on ``snapshot``.

    ``pending`` maps (rule, subject) to the time its condition first became true, as returned in
    the previous ``Evaluation.pending``. ``firing_before`` is the previous
    ``Evaluation.firing_keys``; without it every firing counts as new and nothing as resolved.
    """
    state = _Pass(snapshot=snapshot, pending=pending, was_firing=set(firing_before))
    for rule in rules.rules:
        state.evaluate(rule)
    state.resolved.extend(sorted(key for key in state.was_firing if rules.get(key[0]) is None))
    firing_keys = frozenset((f.rule, f.subject) for f in state.firing) | state.kept_firing
    return Evaluation(
        firing=tuple(state.firing),
        pending=state.new_pending,
        resolved=tuple(state.resolved),
        newly_firing=tuple(f for f in state.firing if (f.rule, f.subject) not in state.was_firing),
        firing_keys=firing_keys,
    )


@dataclass(slots=True, kw_only=True)
class _Pass:
    """The working state of one ``evaluate`` call."""

    snapshot: Snapshot
    pending: Mapping[Key, float]
    was_firing: set[Key]
    new_pending: dict[Key, float] = field(default_factory=dict)
    firing: list[Firing] = field(default_factory=list)
    kept_firing: set[Key] = field(default_factory=set)
    resolved: list[Key] = field(default_factory=list)

    def evaluate(self, rule: Rule) -> None:
        """One rule on every subject that has its signal; then the subjects that do not."""
        seen: set[str] = set()
        for subject, value in _observations(rule, self.snapshot):
            seen.add(subject)
            self._observed(rule, subject, value)
        for key in _unseen_keys(rule, seen, self.pending, self.was_firing):
            self._unobserved(key)

    def _observed(self, rule: Rule, subject: str, value: float) -> None:
        key = (rule.name, subject)
        if not OPERATORS[rule.op](value, rule.threshold):
            if key in self.was_firing:
                self.resolved.append(key)
            return
        since = self.pending.get(key, self.snapshot.at)
        self.new_pending[key] = since
        if self.snapshot.at - since >= rule.for_s or key in self.was_firing:
            self.firing.append(_firing(rule, subject, value, since))

    def _unobserved(self, key: Key) -> None:
        if _subject_gone(key[1], self.snapshot):
            if key in self.was_firing:
                self.resolved.append(key)
            return
        if key in self.pending:  # not measured this tick: keep the state as it was
            self.new_pending[key] = self.pending[key]
        if key in self.was_firing:
            self.kept_firing.add(key)


def _observations(rule: Rule, snapshot: Snapshot) -> Iterator[tuple[str, float]]:
    """(subject, value) for every subject that has the rule's signal this tick."""
    spec = SIGNALS[rule.signal]
    for subject, values in snapshot.signals.items():
        if (subject == SERVICE) != (spec.scope is Scope.SERVICE):
            continue
        value = values.get(rule.signal)
        if value is not None:
            yield subject, value


def _unseen_keys(
    rule: Rule, seen: set[str], pending: Mapping[Key, float], was_firing: set[Key]
) -> list[Key]:
    keys = {key for key in (*pending, *was_firing) if key[0] == rule.name and key[1] not in seen}
    return sorted(keys)


def _subject_gone(subject: str, snapshot: Snapshot) -> bool:
    if subject == SERVICE or subject in snapshot.signals:
        return False
    return all(replica.id != subject for replica in snapshot.replicas)


def _firing(rule: Rule, subject: str, value: float, since: float) -> Firing:
    return Firing(
        rule=rule.name,
        subject=subject,
        severity=rule.severity,
        value=value,
        since=since,
        reason=describe_firing(rule, subject, value),
        actions=rule.actions,
    )


def describe_firing(rule: Rule, subject: str, value: float) -> str:
    """One sentence with value, threshold, duration and rule name, in the operator's units.

    ``p95 183 ms > 100 ms for 30 s (rule latency-p95)``;
    ``inference-1 health failed 3 times in a row >= 3 (rule health-failures)``;
    ``inference-2 not ready for 1 min (rule not-ready)``.
    """
    spec = SIGNALS[rule.signal]
    prefix = "" if subject == SERVICE else f"{subject} "
    duration = f" for {format_duration(rule.for_s)}" if rule.for_s > 0 else ""
    if spec.unit is Unit.BOOL:
        return f"{prefix}{format_value(rule.signal, value)}{duration} (rule {rule.name})"
    shown = _with_label(spec, value)
    threshold = format_value(rule.signal, rule.threshold)
    return f"{prefix}{shown} {rule.op} {threshold}{duration} (rule {rule.name})"


def describe_resolved(rule: Rule, subject: str, value: float | None) -> str:
    """One sentence for a rule that stopped firing: ``p95 80 ms, back within <= 100 ms ...``."""
    spec = SIGNALS[rule.signal]
    prefix = "" if subject == SERVICE else f"{subject} "
    if value is None:
        return f"{prefix}is gone (rule {rule.name} resolved)"
    if spec.unit is Unit.BOOL:
        return f"{prefix}{format_value(rule.signal, value)} again (rule {rule.name} resolved)"
    threshold = format_value(rule.signal, rule.threshold)
    shown = _with_label(spec, value)
    return f"{prefix}{shown}, no longer {rule.op} {threshold} (rule {rule.name} resolved)"


def _with_label(spec: SignalSpec, value: float) -> str:
    if spec.name == "health_failures":
        times = "time" if value == 1 else "times"
        return f"{spec.label} {format_number(value)} {times} in a row"
    return f"{spec.label} {format_value(spec.name, value)}"


def format_value(signal: str, value: float) -> str:
    """A signal value in the unit operators read: "183 ms", "1.2 s", "0.5%", "93%", "512 MiB",
    "3", "0.003", "12 req/s", and the words for flags ("ready" / "not ready")."""
    spec = SIGNALS[signal]
    if spec.unit is Unit.BOOL:
        return spec.true_text if value >= 0.5 else spec.false_text
    return _FORMATS.get(spec.unit, format_number)(value)


def _milliseconds(value: float) -> str:
    return f"{format_number(value)} ms" if value < 1000 else f"{format_number(value / 1000)} s"


_FORMATS: Mapping[Unit, Callable[[float], str]] = {
    Unit.MS: _milliseconds,
    Unit.PERCENT: lambda v: f"{format_number(v)}%",
    Unit.RATIO: lambda v: f"{format_number(v * 100)}%",
    Unit.BYTES: lambda v: f"{format_number(v / _MIB)} MiB",
    Unit.P_VALUE: lambda v: f"{v:.2g}",
    Unit.RPS: lambda v: f"{format_number(v)} req/s",
}
