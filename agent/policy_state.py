"""What the remediation policy remembers between ticks, and its JSON form for the state store.

``agent.policy.decide`` takes a ``PolicyState`` and returns the next one; the caller persists it
(``StateStore.save_policy_state``) so ladders, budgets and backoffs survive an agent restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.domain import ActionKind


@dataclass(frozen=True, slots=True, kw_only=True)
class Ladder:
    """Where one (rule, subject) is on its ladder."""

    rule: str
    subject: str
    rung: int = -1  # index of the last rung acted on; -1: nothing done yet
    last_kind: ActionKind | None = None
    acted_at: float | None = None
    verified: bool | None = None  # outcome of the last action; None: not reported yet
    verify_reason: str = ""
    revert_failed: bool = False
    alerted: bool = False
    held: str = ""  # key of the last held (or dry-run) decision emitted, for dedupe


@dataclass(frozen=True, slots=True, kw_only=True)
class PastAction:
    at: float
    kind: ActionKind
    subject: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyState:
    """Everything ``decide`` remembers between ticks; persisted by the caller as JSON."""

    ladders: tuple[Ladder, ...] = ()
    history: tuple[PastAction, ...] = ()  # remediations actually taken (not dry run, not FREEZE)
    budget_alerted_at: float | None = None

    def ladder(self, rule: str, subject: str) -> Ladder | None:
        return next(
            (lad for lad in self.ladders if (lad.rule, lad.subject) == (rule, subject)), None
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``from_json`` reads it back."""
        return {
            "version": 1,
            "ladders": [_ladder_to_json(lad) for lad in self.ladders],
            "history": [
                {"at": h.at, "kind": h.kind.value, "subject": h.subject} for h in self.history
            ],
            "budget_alerted_at": self.budget_alerted_at,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> PolicyState:
        """Read what ``to_json`` wrote."""
        history = tuple(
            PastAction(at=float(h["at"]), kind=ActionKind(h["kind"]), subject=str(h["subject"]))
            for h in data.get("history", [])
        )
        alerted_at = data.get("budget_alerted_at")
        return PolicyState(
            ladders=tuple(_ladder_from_json(item) for item in data.get("ladders", [])),
            history=history,
            budget_alerted_at=None if alerted_at is None else float(alerted_at),
        )


def _ladder_to_json(lad: Ladder) -> dict[str, Any]:
    return {
        "rule": lad.rule,
        "subject": lad.subject,
        "rung": lad.rung,
        "last_kind": None if lad.last_kind is None else lad.last_kind.value,
        "acted_at": lad.acted_at,
        "verified": lad.verified,
        "verify_reason": lad.verify_reason,
        "revert_failed": lad.revert_failed,
        "alerted": lad.alerted,
        "held": lad.held,
    }


def _ladder_from_json(d: Mapping[str, Any]) -> Ladder:
    return Ladder(
        rule=str(d["rule"]),
        subject=str(d["subject"]),
        rung=int(d["rung"]),
        last_kind=None if d.get("last_kind") is None else ActionKind(d["last_kind"]),
        acted_at=None if d.get("acted_at") is None else float(d["acted_at"]),
        verified=None if d.get("verified") is None else bool(d["verified"]),
        verify_reason=str(d.get("verify_reason", "")),
        revert_failed=bool(d.get("revert_failed", False)),
        alerted=bool(d.get("alerted", False)),
        held=str(d.get("held", "")),
    )
