"""The closed set of signals and how thresholds on them are written, converted and refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.signals import SIGNALS, Scope, ThresholdError, Unit, parse_condition

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def test_every_signal_in_the_contract_exists() -> None:
    section = CONTRACTS.read_text(encoding="utf-8").split("## Agent signals", 1)[1]
    named = set(re.findall(r"`([a-z][a-z0-9_]*)`", section)) - {"service"}
    assert named <= set(SIGNALS)


def test_replica_and_service_signals_have_their_scope() -> None:
    assert SIGNALS["cpu_percent"].scope is Scope.REPLICA
    assert SIGNALS["health_failures"].scope is Scope.REPLICA
    assert SIGNALS["latency_p95_ms"].scope is Scope.SERVICE
    assert SIGNALS["error_rate"].scope is Scope.SERVICE
    assert Scope.SERVICE.value == "service"


def test_specs_are_named_by_their_key() -> None:
    assert all(name == spec.name for name, spec in SIGNALS.items())


def test_bool_signals_have_words_for_both_states() -> None:
    flags = [spec for spec in SIGNALS.values() if spec.unit is Unit.BOOL]
    assert {spec.name for spec in flags} >= {"up", "ready", "oom", "exited", "drift_detected"}
    assert all(spec.true_text and spec.false_text for spec in flags)


@pytest.mark.parametrize(
    ("when", "threshold"),
    [
        ("error_rate > 0.5%", 0.005),
        ("error_rate > 0.005", 0.005),
        ("latency_p95_ms > 100", 100.0),
        ("latency_p95_ms > 100ms", 100.0),
        ("latency_p95_ms > 1s", 1000.0),
        ("latency_p95_ms > 1.5 s", 1500.0),
        ("inference_time_p95_ms >= 1m", 60_000.0),
        ("cpu_percent > 80", 80.0),
        ("cpu_percent > 80%", 80.0),
        ("cpu_percent > 150%", 150.0),  # of one core, like top: two busy cores are 200%
        ("memory_bytes > 1GiB", 2.0**30),
        ("memory_bytes > 500MB", 500e6),
        ("canary_accuracy < 75%", 0.75),
        ("health_failures >= 3", 3.0),
        ("up == 0", 0.0),
        ("ready != 1", 1.0),
        ("drift_p_value < 0.01", 0.01),
        ("throughput_rps < 1e3", 1000.0),
    ],
)
def test_thresholds_are_converted_to_the_base_unit(when: str, threshold: float) -> None:
    assert parse_condition(when).threshold == threshold


def test_threshold_text_is_kept_as_written() -> None:
    condition = parse_condition("  error_rate>=0.5%  ")
    assert (condition.signal, condition.op, condition.threshold_text) == (
        "error_rate",
        ">=",
        "0.5%",
    )


def test_condition_holds_with_its_operator() -> None:
    condition = parse_condition("latency_p95_ms > 100")
    assert condition.holds(100.5)
    assert not condition.holds(100.0)


def _error(when: str) -> str:
    with pytest.raises(ThresholdError) as err:
        parse_condition(when)
    return str(err.value)


def test_condition_without_operator_is_refused() -> None:
    assert _error("latency_p95_ms 100") == (
        'expected "<signal> <op> <threshold>", e.g. "latency_p95_ms > 100";'
        ' got "latency_p95_ms 100"'
    )


def test_unknown_signal_suggests_the_closest() -> None:
    assert _error("latncy_p95_ms > 100") == (
        'unknown signal "latncy_p95_ms"; did you mean "latency_p95_ms"?'
    )


def test_unknown_signal_without_a_close_one_lists_all() -> None:
    assert _error("zzz > 1").startswith('unknown signal "zzz"; known signals: up, ready, exited')


def test_unknown_operator_lists_the_operators() -> None:
    assert _error("up => 1") == 'unknown operator "=>"; use one of >, >=, <, <=, ==, !='


def test_threshold_that_is_not_a_number_is_refused() -> None:
    assert _error("up == yes") == 'threshold "yes" is not a number'


def test_percent_signal_refuses_other_units() -> None:
    assert _error("cpu_percent > 80ms") == (
        'cpu_percent takes a percentage like 80 or 80%; got "80ms"'
    )


def test_ratio_signal_refuses_other_units() -> None:
    assert _error("error_rate > 5ms") == (
        'error_rate takes a ratio like 0.005 or a percentage like 0.5%; got "5ms"'
    )


def test_latency_signal_refuses_a_non_duration() -> None:
    assert _error("latency_p95_ms > 100 parsecs") == (
        "latency_p95_ms takes milliseconds like 100, or a duration like 100ms or 1s;"
        ' got "100 parsecs"'
    )


def test_bytes_signal_refuses_a_non_size() -> None:
    assert _error("memory_bytes > 1 parsec") == (
        'memory_bytes takes bytes like 1073741824, or a size like 1GiB or 500MB; got "1 parsec"'
    )


def test_count_signal_takes_a_plain_number() -> None:
    assert _error("health_failures >= 3s") == (
        'health_failures is a count and takes a plain number; got "3s"'
    )


def test_percent_above_100_is_impossible() -> None:
    assert _error("memory_percent > 120%") == (
        'threshold "120%" is impossible: memory_percent is between 0% and 100%'
    )


def test_ratio_above_one_suggests_a_percentage() -> None:
    assert _error("error_rate > 5") == (
        'threshold "5" is impossible: error_rate is a ratio between 0 and 1; did you mean 5%?'
    )


def test_ratio_above_100_percent_is_impossible() -> None:
    assert _error("error_rate > 150%") == (
        'threshold "150%" is impossible: error_rate is between 0% and 100%'
    )


def test_p_value_above_one_is_impossible() -> None:
    assert _error("drift_p_value < 5") == (
        'threshold "5" is impossible: drift_p_value is between 0 and 1'
    )


def test_negative_threshold_is_impossible() -> None:
    assert _error("latency_p95_ms > -5ms") == (
        'threshold "-5ms" is impossible: latency_p95_ms is never negative'
    )


def test_bool_compared_with_other_than_0_or_1_is_refused() -> None:
    assert _error("up == 2") == 'up is 1 or 0: compare it with 1 or 0, not "2"'


def test_infinite_threshold_is_refused() -> None:
    assert _error("throughput_rps > 1e999") == 'threshold "1e999" is not a finite number'


def test_condition_that_can_never_be_true_is_refused() -> None:
    assert _error("error_rate < 0") == 'condition "error_rate < 0" can never be true'


def test_condition_that_is_always_true_is_refused() -> None:
    assert _error("ready >= 0") == 'condition "ready >= 0" is always true'
