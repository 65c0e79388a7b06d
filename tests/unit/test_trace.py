"""Traces: record ticks as JSON lines, replay the rules over them with the agent's evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.domain import SERVICE, ActionKind, Snapshot
from agent.errors import ConfigError
from agent.rules import Rule, RuleSet
from agent.signals import parse_condition
from agent.trace import ReplayEvent, TraceRecord, TraceRecorder, parse_trace, read_trace, replay


def rule(name: str, when: str, for_s: float) -> Rule:
    c = parse_condition(when)
    return Rule(
        name=name,
        signal=c.signal,
        op=c.op,
        threshold=c.threshold,
        threshold_text=c.threshold_text,
        for_s=for_s,
        severity="warning",
        actions=(ActionKind.ALERT,),
        cooldown_s=60.0,
        description="",
        source="rules/t.yaml:2",
    )


RULES = RuleSet(
    rules=(
        rule("latency-p95", "latency_p95_ms > 100", 20.0),
        rule("health-failures", "health_failures >= 3", 0.0),
    )
)


def test_recorder_appends_one_flushed_line_per_tick(tmp_path: Path) -> None:
    path = tmp_path / "out" / "trace.jsonl"
    with TraceRecorder(path) as recorder:
        recorder.record(Snapshot(at=1.0, replicas=(), signals={SERVICE: {"latency_p95_ms": 50}}))
        assert path.read_text(encoding="utf-8").count("\n") == 1  # flushed before close
    with TraceRecorder(path) as recorder:
        recorder.write(TraceRecord(at=2.0, signals={"inference-1": {"up": 1.0}}))
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [
        {"at": 1.0, "signals": {"service": {"latency_p95_ms": 50}}},
        {"at": 2.0, "signals": {"inference-1": {"up": 1.0}}},
    ]


def test_a_recorded_trace_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    with TraceRecorder(path) as recorder:
        recorder.write(TraceRecord(at=5.0, signals={SERVICE: {"error_rate": 0.01}}))
    assert read_trace(path) == [TraceRecord(at=5.0, signals={SERVICE: {"error_rate": 0.01}})]


def test_replay_reports_firing_and_resolved_in_order() -> None:
    p95 = [40, 183, 190, 185, 60]
    records = [
        TraceRecord(at=float(10 * i), signals={SERVICE: {"latency_p95_ms": v}})
        for i, v in enumerate(p95)
    ]
    assert replay(RULES, records) == [
        ReplayEvent(
            at=30.0,
            rule="latency-p95",
            subject=SERVICE,
            kind="firing",
            reason="p95 185 ms > 100 ms for 20 s (rule latency-p95)",
        ),
        ReplayEvent(
            at=40.0,
            rule="latency-p95",
            subject=SERVICE,
            kind="resolved",
            reason="p95 60 ms, no longer > 100 ms (rule latency-p95 resolved)",
        ),
    ]


def test_replay_per_replica() -> None:
    records = [
        TraceRecord(at=0.0, signals={"inference-1": {"health_failures": 1}}),
        TraceRecord(
            at=1.0, signals={"inference-1": {"health_failures": 3}, "inference-2": {"up": 1}}
        ),
        TraceRecord(at=2.0, signals={"inference-2": {"up": 1}}),  # inference-1 scaled away
    ]
    assert [(e.at, e.subject, e.kind, e.reason) for e in replay(RULES, records)] == [
        (
            1.0,
            "inference-1",
            "firing",
            "inference-1 health failed 3 times in a row >= 3 (rule health-failures)",
        ),
        (2.0, "inference-1", "resolved", "inference-1 is gone (rule health-failures resolved)"),
    ]


def trace_problems(*lines: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_trace(lines, "t.jsonl")
    return err.value.problems


def test_blank_lines_are_skipped() -> None:
    assert parse_trace(["", '{"at": 1, "signals": {}}', "  "], "t.jsonl") == [
        TraceRecord(at=1.0, signals={})
    ]


def test_line_that_is_not_json() -> None:
    assert trace_problems('{"at": 1, "signals": {}}', "{oops") == [
        "t.jsonl:2: (line): not JSON: Expecting property name enclosed in double quotes (column 2)"
    ]


def test_line_without_time() -> None:
    assert trace_problems('{"signals": {}}') == ["t.jsonl:1: at: required key is missing"]


def test_value_that_is_not_a_number() -> None:
    assert trace_problems('{"at": 1, "signals": {"inference-1": {"up": "yes"}}}') == [
        't.jsonl:1: signals["inference-1"].up: expected a number, got "yes"'
    ]


def test_unknown_field() -> None:
    assert trace_problems('{"at": 1, "signals": {}, "sigs": {}}') == [
        't.jsonl:1: sigs: unknown key; did you mean "signals"?'
    ]


def test_time_going_backwards() -> None:
    assert trace_problems('{"at": 5, "signals": {}}', '{"at": 4, "signals": {}}') == [
        "t.jsonl:2: at: time goes backwards (4.0 after 5.0)"
    ]


def test_every_bad_line_is_reported() -> None:
    problems = trace_problems("x", '{"at": 1, "signals": {}}', "[]")
    assert [p.split(": ")[0] for p in problems] == ["t.jsonl:1", "t.jsonl:3"]


def test_unreadable_trace_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        read_trace(tmp_path / "absent.jsonl")
    assert err.value.problems[0].startswith(f"{tmp_path / 'absent.jsonl'}:1: (file): cannot read:")
