"""The closed set of signals rules can watch, and how a condition on one is written and checked.

This module is the source of truth for signal names (``docs/contracts.md`` lists the same set).
Each ``SignalSpec`` knows its unit, which threshold spellings it accepts ("0.5%", "100ms", "1GiB")
and the range of values it can take, so impossible thresholds are refused when rules load.
"""

from __future__ import annotations

import difflib
import enum
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agent.domain import SERVICE
from agent.durations import DurationError, format_number, parse_duration, parse_size, quote


class Scope(enum.StrEnum):
    """Whom a signal describes: one replica, or the whole service (subject ``"service"``)."""

    REPLICA = "replica"
    SERVICE = SERVICE


class Unit(enum.StrEnum):
    """Base unit of a signal's values (thresholds are converted to it when rules load)."""

    BOOL = "bool"  # 1 or 0
    COUNT = "count"
    RATIO = "ratio"  # 0..1
    PERCENT = "percent"  # 0..100
    BYTES = "bytes"
    MS = "ms"
    P_VALUE = "p"  # 0..1
    RPS = "rps"
    NUMBER = "number"


class ThresholdError(ValueError):
    """A condition or threshold that cannot be used. The message says why and what to write."""


OPERATORS: Mapping[str, Callable[[float, float], bool]] = MappingProxyType(
    {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
    | {"==": operator.eq, "!=": operator.ne}
)

_NUMBER = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*)", re.DOTALL)
_CONDITION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*([<>=!]+)\s*(\S.*?)\s*", re.DOTALL)
_UNIT_HINTS: Mapping[Unit, str] = MappingProxyType(
    {
        Unit.PERCENT: "takes a percentage like 80 or 80%",
        Unit.RATIO: "takes a ratio like 0.005 or a percentage like 0.5%",
        Unit.MS: "takes milliseconds like 100, or a duration like 100ms or 1s",
        Unit.BYTES: "takes bytes like 1073741824, or a size like 1GiB or 500MB",
    }
)
_UNIT_WORDS: Mapping[Unit, str] = MappingProxyType(
    {
        Unit.BOOL: "1 or 0",
        Unit.COUNT: "a count",
        Unit.P_VALUE: "a p-value",
        Unit.RPS: "in requests per second",
        Unit.NUMBER: "a number",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalSpec:
    """One signal: its name, unit, scope, meaning, and the words used for it in reasons."""

    name: str
    unit: Unit
    scope: Scope
    description: str
    label: str  # short words for reasons: "p95", "CPU", "error rate"
    true_text: str = ""  # bool signals: "ready" / "not ready"
    false_text: str = ""
    maximum: float | None = None  # highest possible value in the base unit (None: unbounded)

    @property
    def minimum(self) -> float:
        """Lowest possible value: every signal in the set is non-negative."""
        return 0.0

    def parse_threshold(self, text: str) -> float:
        """Convert a threshold as written ("0.5%", "1s", "1GiB", "3") to the base unit.

        Raises ``ThresholdError`` for a wrong unit or an impossible value.
        """
        match = _NUMBER.fullmatch(text.strip())
        if match is None:
            raise ThresholdError(f"threshold {quote(text)} is not a number")
        number = float(match.group(1))
        if number < 0 and self.unit is not Unit.BOOL:
            raise ThresholdError(
                f"threshold {quote(text)} is impossible: {self.name} is never negative"
            )
        value = self._convert(number, match.group(2).strip(), text.strip())
        if not math.isfinite(value):
            raise ThresholdError(f"threshold {quote(text)} is not a finite number")
        self._check_range(value, text)
        return value

    def _convert(self, number: float, unit: str, text: str) -> float:
        if self.unit in (Unit.PERCENT, Unit.RATIO) and unit in ("", "%"):
            return number / 100 if self.unit is Unit.RATIO and unit == "%" else number
        if self.unit is Unit.MS:
            return number if unit == "" else self._as_duration_ms(text)
        if self.unit is Unit.BYTES:
            return number if unit == "" else self._as_size(text)
        if unit == "":
            return number
        hint = _UNIT_HINTS.get(self.unit)
        if hint is None:
            word = _UNIT_WORDS[self.unit]
            raise ThresholdError(
                f"{self.name} is {word} and takes a plain number; got {quote(text)}"
            )
        raise ThresholdError(f"{self.name} {hint}; got {quote(text)}")

    def _as_duration_ms(self, text: str) -> float:
        try:
            return parse_duration("".join(text.split())) * 1000
        except DurationError:
            raise ThresholdError(f"{self.name} {_UNIT_HINTS[Unit.MS]}; got {quote(text)}") from None

    def _as_size(self, text: str) -> float:
        try:
            return parse_size(text)
        except DurationError:
            hint = _UNIT_HINTS[Unit.BYTES]
            raise ThresholdError(f"{self.name} {hint}; got {quote(text)}") from None

    def _check_range(self, value: float, text: str) -> None:
        shown = quote(text)
        if self.unit is Unit.BOOL and value not in (0.0, 1.0):
            raise ThresholdError(f"{self.name} is 1 or 0: compare it with 1 or 0, not {shown}")
        if value < self.minimum:
            raise ThresholdError(f"threshold {shown} is impossible: {self.name} is never negative")
        if self.maximum is None or value <= self.maximum:
            return
        if self.unit is Unit.RATIO and "%" not in text and value <= 100:
            raise ThresholdError(
                f"threshold {shown} is impossible: {self.name} is a ratio between 0 and 1;"
                f" did you mean {format_number(value)}%?"
            )
        low, high = self.format_bound(self.minimum), self.format_bound(self.maximum)
        raise ThresholdError(
            f"threshold {shown} is impossible: {self.name} is between {low} and {high}"
        )

    def format_bound(self, value: float) -> str:
        """A range end in the unit operators write: "100%" for ratios and percentages."""
        if self.unit is Unit.RATIO:
            return f"{format_number(value * 100)}%"
        if self.unit is Unit.PERCENT:
            return f"{format_number(value)}%"
        return format_number(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """A parsed ``when``: ``<signal> <op> <threshold>``, threshold in the signal's base unit."""

    signal: str
    op: str
    threshold: float
    threshold_text: str  # as written, for messages

    def holds(self, value: float) -> bool:
        """Whether ``value`` satisfies the condition."""
        return OPERATORS[self.op](value, self.threshold)


def parse_condition(text: str) -> Condition:
    """Parse ``"latency_p95_ms > 100ms"``; raise ``ThresholdError`` saying what is wrong."""
    match = _CONDITION.fullmatch(text)
    if match is None:
        raise ThresholdError(
            f'expected "<signal> <op> <threshold>", e.g. "latency_p95_ms > 100"; got {quote(text)}'
        )
    name, op, threshold_text = match.groups()
    spec = SIGNALS.get(name)
    if spec is None:
        raise ThresholdError(f"unknown signal {quote(name)}{_suggest(name)}")
    if op not in OPERATORS:
        raise ThresholdError(f"unknown operator {quote(op)}; use one of {', '.join(OPERATORS)}")
    threshold = spec.parse_threshold(threshold_text)
    condition = Condition(signal=name, op=op, threshold=threshold, threshold_text=threshold_text)
    _check_useful(spec, condition)
    return condition


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, SIGNALS, n=1)
    if close:
        return f'; did you mean "{close[0]}"?'
    return f"; known signals: {', '.join(SIGNALS)}"


def _check_useful(spec: SignalSpec, condition: Condition) -> None:
    """Refuse conditions that hold for no possible value, or for every possible value."""
    written = f"{spec.name} {condition.op} {condition.threshold_text}"
    op, threshold = condition.op, condition.threshold
    never = (op == "<" and threshold <= spec.minimum) or (
        op == ">" and spec.maximum is not None and threshold >= spec.maximum
    )
    if never:
        raise ThresholdError(f"condition {quote(written)} can never be true")
    always = (op == ">=" and threshold <= spec.minimum) or (
        op == "<=" and spec.maximum is not None and threshold >= spec.maximum
    )
    if always:
        raise ThresholdError(f"condition {quote(written)} is always true")


def _spec(
    name: str,
    unit: Unit,
    scope: Scope,
    label: str,
    description: str,
    *,
    true_text: str = "",
    false_text: str = "",
    unbounded: bool = False,
) -> SignalSpec:
    maximum = None if unbounded else _MAXIMUM.get(unit)
    return SignalSpec(
        name=name,
        unit=unit,
        scope=scope,
        label=label,
        description=description,
        true_text=true_text,
        false_text=false_text,
        maximum=maximum,
    )


_MAXIMUM = {Unit.BOOL: 1.0, Unit.RATIO: 1.0, Unit.P_VALUE: 1.0, Unit.PERCENT: 100.0}
_R, _S = Scope.REPLICA, Scope.SERVICE
_ALL = (
    _spec("up", Unit.BOOL, _R, "up", "1 when the health probe answered, else 0",
          true_text="up", false_text="down"),
    _spec("ready", Unit.BOOL, _R, "ready", "1 when /ready says the model is loaded and warm",
          true_text="ready", false_text="not ready"),
    _spec("exited", Unit.BOOL, _R, "exited", "1 when the replica process/container died on its own",
          true_text="exited", false_text="running"),
    _spec("oom", Unit.BOOL, _R, "OOM", "1 when the replica's last exit was an out-of-memory kill",
          true_text="was OOM-killed", false_text="was not OOM-killed"),
    _spec("load_failed", Unit.BOOL, _R, "model load", "1 when the server says its model failed "
          "to load (it will not become ready by itself)", true_text="failed",
          false_text="did not fail"),
    _spec("health_failures", Unit.COUNT, _R, "health failed", "consecutive failed health probes"),
    _spec("canary_failures", Unit.COUNT, _R, "canary failures",
          "golden-set items that failed in the last canary run"),
    _spec("candidate_canary_failures", Unit.COUNT, _R, "canary failures of the new release",
          "canary_failures of a replica serving a release that is still baking (not yet proven "
          "good); 0 otherwise"),
    _spec("canary_accuracy", Unit.RATIO, _R, "canary accuracy",
          "share of golden-set items answered correctly in the last canary run"),
    _spec("cpu_percent", Unit.PERCENT, _R, "CPU",
          "CPU use in percent of one core, like top (can exceed 100 on several cores)",
          unbounded=True),
    _spec("memory_percent", Unit.PERCENT, _R, "memory",
          "memory use in percent of the replica's limit (or of host memory when unlimited)"),
    _spec("memory_bytes", Unit.BYTES, _R, "memory", "resident memory in bytes"),
    _spec("gpu_util_percent", Unit.PERCENT, _R, "GPU", "GPU utilisation in percent"),
    _spec("gpu_memory_percent", Unit.PERCENT, _R, "GPU memory",
          "GPU memory use in percent of the device's memory"),
    _spec("restarts_recent", Unit.COUNT, _R, "restarts in 10 min",
          "restarts of the replica in the last 10 minutes"),
    _spec("error_rate", Unit.RATIO, _S, "error rate",
          "share of /predict requests that failed (5xx) recently"),
    _spec("latency_p50_ms", Unit.MS, _S, "p50", "median /predict request latency in ms"),
    _spec("latency_p95_ms", Unit.MS, _S, "p95", "95th percentile /predict latency in ms"),
    _spec("latency_p99_ms", Unit.MS, _S, "p99", "99th percentile /predict latency in ms"),
    _spec("inference_time_p95_ms", Unit.MS, _S, "inference time p95",
          "95th percentile model forward time per batch in ms"),
    _spec("throughput_rps", Unit.RPS, _S, "throughput", "/predict requests per second"),
    _spec("replicas_ready", Unit.COUNT, _S, "ready replicas", "replicas answering /ready"),
    _spec("drift_detected", Unit.BOOL, _S, "drift", "1 when live traffic drifted from reference",
          true_text="drift detected", false_text="no drift"),
    _spec("drift_p_value", Unit.P_VALUE, _S, "drift p-value",
          "smallest corrected p-value of the per-feature drift tests"),
    _spec("drift_features_fraction", Unit.RATIO, _S, "drifted features",
          "share of features whose drift test rejected"),
    _spec("drift_statistic", Unit.NUMBER, _S, "drift statistic",
          "largest per-feature drift test statistic (KS distance for the scipy engine)"),
    _spec("drift_since_deploy", Unit.BOOL, _S, "drift since deploy",
          "1 when drift began with the current release's deploy: against the replaced good "
          "release's reference, within drift.deploy_windows windows, while that release was not "
          "drifting", true_text="drifting since the deploy",
          false_text="no drift since the deploy"),
    _spec("decay_detected", Unit.BOOL, _S, "accuracy decay",
          "1 when canary or feedback accuracy fell significantly below the baseline",
          true_text="accuracy decay detected", false_text="no accuracy decay"),
    _spec("decay_p_value", Unit.P_VALUE, _S, "decay p-value",
          "p-value of the accuracy decay test"),
    _spec("canary_accuracy_drop", Unit.RATIO, _S, "canary accuracy drop",
          "how far canary accuracy fell below the promoted release's baseline (0 if not)"),
    _spec("candidate_decay_detected", Unit.BOOL, _S, "candidate accuracy decay",
          "1 when a candidate release answers significantly worse than the last good release's "
          "baseline", true_text="accuracy decayed below the last good release's",
          false_text="no accuracy decay against the last good release"),
    _spec("accuracy", Unit.RATIO, _S, "accuracy",
          "share of labelled feedback answered correctly in the live window (POST /api/feedback)"),
    _spec("accuracy_drop", Unit.RATIO, _S, "accuracy drop",
          "how far feedback accuracy fell below the baseline release's (0 if not)"),
)  # fmt: skip

SIGNALS: Mapping[str, SignalSpec] = MappingProxyType({spec.name: spec for spec in _ALL})
"""Every signal a rule may name, by name."""
