"""The state database's tables, their migrations, and the frozen values its rows become.

Migrations are numbered and applied in order inside one transaction each; the versions applied are
kept in ``schema_migrations``. Never edit a migration that shipped: append a new one.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends.base import ReleaseSpec
from agent.domain import ActionKind
from agent.errors import StateError
from agent.releases import ReleaseRecord, ReleaseStatus

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the first schema
        """CREATE TABLE releases (
            tag TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('candidate', 'good', 'bad')),
            created_at REAL NOT NULL,
            promoted_at REAL,
            marked_bad_at REAL,
            reason TEXT NOT NULL DEFAULT '')""",
        """CREATE TABLE desired (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            release TEXT NOT NULL,
            replicas INTEGER NOT NULL CHECK (replicas >= 0),
            generations TEXT NOT NULL,
            frozen INTEGER NOT NULL,
            maintenance INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            version INTEGER NOT NULL)""",
        """CREATE TABLE actions (
            id TEXT PRIMARY KEY,
            at REAL NOT NULL,
            rule TEXT NOT NULL,
            subject TEXT NOT NULL,
            kind TEXT NOT NULL,
            target TEXT NOT NULL,
            reason TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('pending', 'applied', 'verified', 'failed', 'rolled_back', 'cancelled')),
            started_at REAL,
            finished_at REAL,
            result TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX actions_by_time ON actions (at)",
        "CREATE INDEX actions_by_status ON actions (status)",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE alert_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            receiver TEXT NOT NULL,
            payload TEXT NOT NULL,
            dedupe_key TEXT NOT NULL,
            created_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            sent_at REAL,
            UNIQUE (receiver, dedupe_key))""",
        "CREATE INDEX alert_outbox_due ON alert_outbox (status, next_attempt_at)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT NOT NULL)""",
    ),
)


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema up to date. Call inside a transaction (the caller's ``BEGIN``)."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    applied = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
    if applied > len(MIGRATIONS):
        raise StateError(
            f"{path}: schema version {applied} is newer than this agent knows "
            f"({len(MIGRATIONS)}); upgrade warden or point state_dir elsewhere"
        )
    for version, statements in enumerate(MIGRATIONS[applied:], start=applied + 1):
        for statement in statements:
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))


class ActionStatus(enum.StrEnum):
    PENDING = "pending"  # intent written, desired state not yet applied
    APPLIED = "applied"  # the engine was asked; verification running
    VERIFIED = "verified"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {ActionStatus.VERIFIED, ActionStatus.FAILED, ActionStatus.ROLLED_BACK, ActionStatus.CANCELLED}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DesiredState:
    """What should be running. ``version`` counts writes (compare-and-set); 0: never written."""

    release: str
    replicas: int
    generations: Mapping[str, int] = field(default_factory=dict)  # slot -> restart generation
    frozen: bool = False
    maintenance: bool = False
    updated_at: float = 0.0
    version: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionRecord:
    id: str
    at: float
    rule: str
    subject: str
    kind: ActionKind
    target: str
    reason: str
    status: ActionStatus
    started_at: float | None = None
    finished_at: float | None = None
    result: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxAlert:
    id: int
    receiver: str
    payload: Mapping[str, Any]
    dedupe_key: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    id: int
    at: float
    kind: str
    subject: str
    message: str
    data: Mapping[str, Any]


def spec_to_json(spec: ReleaseSpec) -> dict[str, Any]:
    return {
        "tag": spec.tag,
        "model": spec.model,
        "task": spec.task,
        "image": spec.image,
        "args": list(spec.args),
        "env": dict(spec.env),
    }


def spec_from_json(data: Mapping[str, Any]) -> ReleaseSpec:
    return ReleaseSpec(
        tag=str(data["tag"]),
        model=str(data.get("model", "")),
        task=str(data.get("task", "")),
        image=str(data.get("image", "")),
        args=tuple(str(a) for a in data.get("args", ())),
        env={str(k): str(v) for k, v in dict(data.get("env", {})).items()},
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def release_from_row(row: sqlite3.Row) -> ReleaseRecord:
    return ReleaseRecord(
        tag=row["tag"],
        spec=spec_from_json(json.loads(row["spec"])),
        status=ReleaseStatus(row["status"]),
        created_at=float(row["created_at"]),
        promoted_at=_opt_float(row["promoted_at"]),
        marked_bad_at=_opt_float(row["marked_bad_at"]),
        reason=row["reason"],
    )


def action_from_row(row: sqlite3.Row) -> ActionRecord:
    return ActionRecord(
        id=row["id"],
        at=float(row["at"]),
        rule=row["rule"],
        subject=row["subject"],
        kind=ActionKind(row["kind"]),
        target=row["target"],
        reason=row["reason"],
        status=ActionStatus(row["status"]),
        started_at=_opt_float(row["started_at"]),
        finished_at=_opt_float(row["finished_at"]),
        result=row["result"],
    )


def outbox_from_row(row: sqlite3.Row) -> OutboxAlert:
    return OutboxAlert(
        id=int(row["id"]),
        receiver=row["receiver"],
        payload=json.loads(row["payload"]),
        dedupe_key=row["dedupe_key"],
        created_at=float(row["created_at"]),
        attempts=int(row["attempts"]),
        next_attempt_at=float(row["next_attempt_at"]),
        last_error=row["last_error"],
    )


def event_from_row(row: sqlite3.Row) -> EventRecord:
    return EventRecord(
        id=int(row["id"]),
        at=float(row["at"]),
        kind=row["kind"],
        subject=row["subject"],
        message=row["message"],
        data=json.loads(row["data"]),
    )
