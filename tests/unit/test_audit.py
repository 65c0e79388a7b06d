"""The audit log: durable JSON lines, torn tails repaired, duplicate ids ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.audit import AuditLog, decision_record
from agent.domain import ActionKind, Decision

T0 = 1_700_000_000.0


def record(n: int, **extra: object) -> dict[str, object]:
    return {
        "id": f"r{n}",
        "ts": T0 + n,
        "kind": "decision",
        "rule": "health-failures",
        "subject": "inference-1",
        "action": "restart",
        "reason": f"reason {n}",
        "action_id": f"a{n}",
        **extra,
    }


def test_written_records_are_readable_after_reopen(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    assert log.path == tmp_path / "audit.jsonl"
    assert log.write(record(1)) is True
    assert log.write(record(2, detail="床前明月光")) is True
    log.close()
    assert AuditLog(tmp_path).read() == [record(1), record(2, detail="床前明月光")]
    lines = (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["r1", "r2"]


def test_torn_last_line_is_cut_on_open_and_writing_goes_on(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.write(record(1))
    log.close()
    path = tmp_path / "audit.jsonl"
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"id": "r2", "ts": 17000')  # the agent died in the middle of this write
    reopened = AuditLog(tmp_path)
    assert path.read_bytes() == whole
    reopened.write(record(3))
    assert [r["id"] for r in reopened.read()] == ["r1", "r3"]


def test_read_skips_a_torn_last_line_without_repairing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.write(record(1))
    with (tmp_path / "audit.jsonl").open("ab") as f:
        f.write(b'{"id": "r2", "ts"')  # another writer is mid-line right now
    assert [r["id"] for r in log.read()] == ["r1"]


def test_duplicate_id_is_a_no_op_even_after_reopen(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    assert log.write(record(1)) is True
    assert log.write(record(1, reason="replayed")) is False
    log.close()
    reopened = AuditLog(tmp_path)
    assert reopened.write(record(1, reason="replayed after crash")) is False
    assert reopened.read() == [record(1)]


def test_record_without_id_gets_a_unique_one(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.write({"ts": T0, "kind": "reload", "reason": "rules reloaded: 5 rules"})
    log.write({"ts": T0, "kind": "reload", "reason": "rules reloaded: 5 rules"})
    ids = [r["id"] for r in log.read()]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(len(i) == 32 for i in ids)


def test_read_since_filters_by_timestamp(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    for n in range(4):
        log.write(record(n))
    assert [r["id"] for r in log.read(since=T0 + 2)] == ["r2", "r3"]


def test_a_record_needs_a_timestamp_and_a_kind(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    with pytest.raises(ValueError, match="audit record lacks ts, kind"):
        log.write({"reason": "x"})
    with pytest.raises(ValueError, match="audit record ts must be seconds, got 'now'"):
        log.write({"ts": "now", "kind": "decision"})
    assert log.read() == []


def test_decision_record_carries_the_decision(tmp_path: Path) -> None:
    decision = Decision(
        at=T0,
        rule="health-failures",
        subject="inference-1",
        action=ActionKind.ROLLBACK,
        reason="roll back v3 to v2: canary accuracy 0.6 < 0.9 for 30 s (rule canary-accuracy)",
        target_release="v2",
    )
    log = AuditLog(tmp_path)
    log.write(decision_record(decision, record_id="tick-7:0", action_id="abc"))
    assert log.read() == [
        {
            "id": "tick-7:0",
            "ts": T0,
            "kind": "decision",
            "rule": "health-failures",
            "subject": "inference-1",
            "action": "rollback",
            "reason": decision.reason,
            "held_because": "",
            "target_release": "v2",
            "dry_run": False,
            "action_id": "abc",
        }
    ]
