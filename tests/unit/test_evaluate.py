"""Rule evaluation: for-durations, per-replica subjects, absent signals, one-sentence reasons."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from agent.clock import FakeClock
from agent.domain import SERVICE, ActionKind, Replica, ReplicaState, Snapshot
from agent.evaluate import Evaluation, describe_resolved, evaluate, format_value
from agent.rules import Rule, RuleSet
from agent.signals import parse_condition


def rule(name: str, when: str, *, for_s: float = 0.0, severity: str = "warning") -> Rule:
    condition = parse_condition(when)
    return Rule(
        name=name,
        signal=condition.signal,
        op=condition.op,
        threshold=condition.threshold,
        threshold_text=condition.threshold_text,
        for_s=for_s,
        severity=severity,
        actions=(ActionKind.ALERT, ActionKind.SCALE),
        cooldown_s=60.0,
        description="",
        source="rules/test.yaml:2",
    )


def replica(slot: str) -> Replica:
    return Replica(id=slot, url="http://127.0.0.1:8000", release="v1", state=ReplicaState.RUNNING)


class Ticker:
    """Feeds snapshots at the fake clock's time and carries the state between ticks."""

    def __init__(self, *rules: Rule) -> None:
        self.rules = RuleSet(rules=rules, files=("rules/test.yaml",))
        self.clock = FakeClock(start=1000.0)
        self.last = Evaluation(firing=())

    def tick(
        self,
        signals: Mapping[str, Mapping[str, float]],
        *,
        after: float = 0.0,
        replicas: tuple[Replica, ...] = (),
    ) -> Evaluation:
        self.clock.advance(after)
        snapshot = Snapshot(at=self.clock.now(), replicas=replicas, signals=signals)
        self.last = evaluate(
            self.rules, snapshot, self.last.pending, firing_before=self.last.firing_keys
        )
        return self.last


def keys(firings: Evaluation) -> list[tuple[str, str]]:
    return [(f.rule, f.subject) for f in firings.firing]


P95 = rule("latency-p95", "latency_p95_ms > 100", for_s=30.0)
SLOW = {SERVICE: {"latency_p95_ms": 183.0}}
FAST = {SERVICE: {"latency_p95_ms": 40.0}}


def test_condition_must_hold_for_the_whole_for_duration() -> None:
    ticker = Ticker(P95)
    assert keys(ticker.tick(SLOW)) == []
    assert ticker.last.pending == {("latency-p95", SERVICE): 1000.0}
    assert keys(ticker.tick(SLOW, after=29.0)) == []
    fired = ticker.tick(SLOW, after=1.0)
    assert keys(fired) == [("latency-p95", SERVICE)]
    assert fired.newly_firing == fired.firing
    assert fired.firing[0].since == 1000.0


def test_a_firing_rule_is_new_only_once() -> None:
    ticker = Ticker(P95)
    ticker.tick(SLOW)
    ticker.tick(SLOW, after=30.0)
    again = ticker.tick(SLOW, after=1.0)
    assert keys(again) == [("latency-p95", SERVICE)]
    assert again.newly_firing == ()


def test_a_break_in_the_condition_restarts_the_for_duration() -> None:
    ticker = Ticker(P95)
    ticker.tick(SLOW)
    ticker.tick(FAST, after=20.0)
    assert ticker.last.pending == {}
    ticker.tick(SLOW, after=1.0)
    assert keys(ticker.tick(SLOW, after=29.0)) == []
    assert keys(ticker.tick(SLOW, after=1.0)) == [("latency-p95", SERVICE)]


def test_a_firing_rule_resolves_when_the_condition_stops() -> None:
    ticker = Ticker(P95)
    ticker.tick(SLOW)
    ticker.tick(SLOW, after=30.0)
    done = ticker.tick(FAST, after=1.0)
    assert (done.firing, done.resolved, done.pending) == ((), (("latency-p95", SERVICE),), {})
    assert done.firing_keys == frozenset()


def test_a_pending_rule_that_never_fired_does_not_resolve() -> None:
    ticker = Ticker(P95)
    ticker.tick(SLOW)
    assert ticker.tick(FAST, after=1.0).resolved == ()


def test_an_absent_signal_neither_fires_nor_resolves() -> None:
    ticker = Ticker(P95)
    ticker.tick(SLOW)
    ticker.tick(SLOW, after=30.0)
    blind = ticker.tick({SERVICE: {}}, after=1.0)
    assert (blind.firing, blind.resolved) == ((), ())
    assert blind.pending == {("latency-p95", SERVICE): 1000.0}
    assert blind.firing_keys == {("latency-p95", SERVICE)}
    back = ticker.tick(SLOW, after=1.0)
    assert keys(back) == [("latency-p95", SERVICE)]
    assert back.newly_firing == ()


def test_an_absent_signal_keeps_the_pending_start() -> None:
    ticker = Ticker(P95)
    ticker.tick(SLOW)
    ticker.tick({}, after=20.0)
    assert keys(ticker.tick(SLOW, after=10.0)) == [("latency-p95", SERVICE)]


def test_replica_rules_fire_per_replica_subject() -> None:
    cpu = rule("cpu-high", "cpu_percent > 80", for_s=0.0)
    ticker = Ticker(cpu)
    fired = ticker.tick(
        {
            "inference-1": {"cpu_percent": 93.0},
            "inference-2": {"cpu_percent": 12.0},
            "inference-3": {"up": 1.0},
            SERVICE: {"cpu_percent": 99.0},  # not a replica: a replica rule ignores it
        }
    )
    assert keys(fired) == [("cpu-high", "inference-1")]


def test_service_rules_fire_only_on_the_service_subject() -> None:
    ticker = Ticker(rule("errors", "error_rate > 0.5%"))
    fired = ticker.tick({SERVICE: {"error_rate": 0.02}, "inference-1": {"error_rate": 0.5}})
    assert keys(fired) == [("errors", SERVICE)]


def test_a_replica_that_is_gone_resolves() -> None:
    cpu = rule("cpu-high", "cpu_percent > 80")
    ticker = Ticker(cpu)
    ticker.tick({"inference-2": {"cpu_percent": 93.0}}, replicas=(replica("inference-2"),))
    gone = ticker.tick({SERVICE: {}}, after=1.0, replicas=())
    assert gone.resolved == (("cpu-high", "inference-2"),)
    assert (gone.pending, gone.firing_keys) == ({}, frozenset())


def test_a_replica_still_listed_but_unmeasured_is_not_gone() -> None:
    cpu = rule("cpu-high", "cpu_percent > 80")
    ticker = Ticker(cpu)
    ticker.tick({"inference-2": {"cpu_percent": 93.0}})
    kept = ticker.tick({}, after=1.0, replicas=(replica("inference-2"),))
    assert kept.resolved == ()
    assert kept.firing_keys == {("cpu-high", "inference-2")}


def test_a_firing_rule_removed_by_a_reload_resolves() -> None:
    ticker = Ticker(rule("errors", "error_rate > 0.5%"))
    ticker.tick({SERVICE: {"error_rate": 0.02}})
    ticker.rules = RuleSet()
    assert ticker.tick({SERVICE: {"error_rate": 0.02}}, after=1.0).resolved == (
        ("errors", SERVICE),
    )


def test_a_firing_rule_keeps_firing_when_only_the_firing_state_was_kept() -> None:
    snapshot = Snapshot(at=5.0, replicas=(), signals=SLOW)
    result = evaluate(RuleSet(rules=(P95,)), snapshot, {}, firing_before={("latency-p95", SERVICE)})
    assert keys(result) == [("latency-p95", SERVICE)]
    assert result.newly_firing == ()


def test_firing_carries_rule_severity_value_and_actions() -> None:
    ticker = Ticker(rule("errors", "error_rate > 0.5%", severity="critical"))
    firing = ticker.tick({SERVICE: {"error_rate": 0.02}}).firing[0]
    assert (firing.severity, firing.value, firing.actions) == (
        "critical",
        0.02,
        (ActionKind.ALERT, ActionKind.SCALE),
    )


# --- reasons: one sentence, operator units --------------------------------------------------


def reason(r: Rule, subject: str, value: float) -> str:
    result = evaluate(
        RuleSet(rules=(r,)),
        Snapshot(at=0.0, replicas=(), signals={subject: {r.signal: value}}),
        {},
        firing_before={(r.name, subject)},
    )
    return result.firing[0].reason


def test_reason_for_latency() -> None:
    assert reason(P95, SERVICE, 183.2) == "p95 183 ms > 100 ms for 30 s (rule latency-p95)"


def test_reason_for_consecutive_health_failures() -> None:
    health = rule("health-failures", "health_failures >= 3")
    assert reason(health, "inference-1", 3.0) == (
        "inference-1 health failed 3 times in a row >= 3 (rule health-failures)"
    )


def test_reason_for_a_flag() -> None:
    not_ready = rule("not-ready", "ready == 0", for_s=60.0)
    assert (
        reason(not_ready, "inference-2", 0.0) == "inference-2 not ready for 1 min (rule not-ready)"
    )


def test_reason_for_a_ratio_is_in_percent() -> None:
    errors = rule("error-rate-high", "error_rate > 0.005", for_s=60.0)
    assert reason(errors, SERVICE, 0.0123) == (
        "error rate 1.23% > 0.5% for 1 min (rule error-rate-high)"
    )


def test_reason_for_percent_of_a_replica() -> None:
    cpu = rule("cpu-high", "cpu_percent > 80%", for_s=120.0)
    assert (
        reason(cpu, "inference-1", 93.4) == "inference-1 CPU 93.4% > 80% for 2 min (rule cpu-high)"
    )


def test_reason_for_bytes_is_in_mib() -> None:
    memory = rule("memory-big", "memory_bytes > 1GiB")
    assert reason(memory, "inference-1", 1.5 * 2**30) == (
        "inference-1 memory 1536 MiB > 1024 MiB (rule memory-big)"
    )


def test_reason_for_a_slow_inference_time_is_in_seconds() -> None:
    slow = rule("inference-time-p95", "inference_time_p95_ms > 1s", for_s=30.0)
    assert reason(slow, SERVICE, 1250.0) == (
        "inference time p95 1.25 s > 1 s for 30 s (rule inference-time-p95)"
    )


def test_reason_when_resolved() -> None:
    assert describe_resolved(P95, SERVICE, 80.0) == (
        "p95 80 ms, no longer > 100 ms (rule latency-p95 resolved)"
    )


def test_reason_when_a_flag_is_back() -> None:
    not_ready = rule("not-ready", "ready == 0")
    assert describe_resolved(not_ready, "inference-2", 1.0) == (
        "inference-2 ready again (rule not-ready resolved)"
    )


def test_reason_when_the_subject_is_gone() -> None:
    cpu = rule("cpu-high", "cpu_percent > 80")
    assert describe_resolved(cpu, "inference-2", None) == (
        "inference-2 is gone (rule cpu-high resolved)"
    )


@pytest.mark.parametrize(
    ("signal", "value", "text"),
    [
        ("latency_p95_ms", 183.0, "183 ms"),
        ("latency_p99_ms", 2500.0, "2.5 s"),
        ("error_rate", 0.005, "0.5%"),
        ("canary_accuracy", 0.875, "87.5%"),
        ("memory_percent", 85.0, "85%"),
        ("memory_bytes", 150 * 2**20, "150 MiB"),
        ("canary_failures", 2.0, "2"),
        ("drift_p_value", 0.0031, "0.0031"),
        ("throughput_rps", 780.0, "780 req/s"),
        ("up", 0.0, "down"),
        ("oom", 1.0, "was OOM-killed"),
        ("drift_statistic", 0.25, "0.25"),
    ],
)
def test_format_value_per_unit(signal: str, value: float, text: str) -> None:
    assert format_value(signal, value) == text
