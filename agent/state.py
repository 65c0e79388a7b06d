"""The agent's persistent state in SQLite (``state_dir/warden.db``): what survives a kill -9.

Releases and last-good, the desired state the reconciler works towards, the action history with
write-ahead intents, the policy's memory, the alert outbox and the event timeline. The database
runs in WAL mode with ``synchronous=FULL``, so a committed write is on disk before the call
returns. One connection is shared by all threads behind a lock; other processes (the CLI) may
open the same file, and writers wait for each other (``BEGIN IMMEDIATE`` with a busy timeout).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.backends.base import ReleaseSpec
from agent.domain import ActionKind
from agent.errors import StateError
from agent.policy_state import PolicyState
from agent.releases import ReleaseRecord, ReleaseStatus
from agent.state_schema import (
    TERMINAL_STATUSES,
    ActionRecord,
    ActionStatus,
    DesiredState,
    EventRecord,
    OutboxAlert,
    action_from_row,
    event_from_row,
    migrate,
    outbox_from_row,
    release_from_row,
    spec_to_json,
)

__all__ = [
    "ActionRecord",
    "ActionStatus",
    "DesiredState",
    "EventRecord",
    "OutboxAlert",
    "StateStore",
]

DB_NAME = "warden.db"
BUSY_TIMEOUT_S = 30.0
_POLICY_KEY = "policy_state"
_RULE_PENDING_KEY = "rule_pending"


class StateStore:
    """Typed access to ``state_dir/warden.db``. Safe to share between threads."""

    def __init__(self, state_dir: Path | str) -> None:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_NAME
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot open the state database: {exc}") from exc
        self._lock = threading.RLock()
        self._depth = 0
        with self.transaction():
            migrate(self._db, self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all. Nests; holds the store's lock."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cursor = self._db.cursor()
            cursor.row_factory = sqlite3.Row
            rows: list[sqlite3.Row] = cursor.execute(sql, params).fetchall()
            return rows

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self.transaction():
            return self._db.execute(sql, params)

    def pragma(self, name: str) -> str:
        """The value of a PRAGMA (``journal_mode``, ``synchronous``...), for checks and tests."""
        if not name.isidentifier():
            raise ValueError(f"not a pragma name: {name!r}")
        return str(self._query(f"PRAGMA {name}")[0][0])

    def schema_version(self) -> int:
        return int(self._query("SELECT MAX(version) FROM schema_migrations")[0][0])

    # releases ----------------------------------------------------------------------------------

    def add_release(self, spec: ReleaseSpec, now: float) -> ReleaseRecord:
        """Record ``spec`` as a candidate. Adding the same spec again returns the stored record."""
        with self.transaction():
            existing = self.release(spec.tag)
            if existing is not None:
                if existing.spec != spec:
                    raise StateError(
                        f"release {spec.tag} already exists with a different spec; "
                        "use a new tag for a new build"
                    )
                return existing
            self._db.execute(
                "INSERT INTO releases (tag, spec, status, created_at) VALUES (?, ?, ?, ?)",
                (spec.tag, json.dumps(spec_to_json(spec)), ReleaseStatus.CANDIDATE.value, now),
            )
            return self._release_or_raise(spec.tag)

    def release(self, tag: str) -> ReleaseRecord | None:
        rows = self._query("SELECT * FROM releases WHERE tag = ?", (tag,))
        return release_from_row(rows[0]) if rows else None

    def mark_good(self, tag: str, now: float, reason: str) -> ReleaseRecord:
        """Promote ``tag`` to good (only after its bake passed: see ``releases.bake_status``)."""
        with self.transaction():
            self._release_or_raise(tag)
            self._db.execute(
                "UPDATE releases SET status = ?, promoted_at = ?, reason = ? WHERE tag = ?",
                (ReleaseStatus.GOOD.value, now, reason, tag),
            )
            return self._release_or_raise(tag)

    def mark_bad(self, tag: str, now: float, reason: str) -> ReleaseRecord:
        """Mark ``tag`` bad: it is never chosen as a revert target again."""
        with self.transaction():
            self._release_or_raise(tag)
            self._db.execute(
                "UPDATE releases SET status = ?, marked_bad_at = ?, reason = ? WHERE tag = ?",
                (ReleaseStatus.BAD.value, now, reason, tag),
            )
            return self._release_or_raise(tag)

    def releases(self) -> list[ReleaseRecord]:
        """Every release, newest deploy first."""
        rows = self._query("SELECT * FROM releases ORDER BY created_at DESC, rowid DESC")
        return [release_from_row(row) for row in rows]

    def last_good(self) -> ReleaseRecord | None:
        """The most recently promoted good release."""
        rows = self._query(
            "SELECT * FROM releases WHERE status = 'good' "
            "ORDER BY promoted_at DESC, created_at DESC, rowid DESC LIMIT 1"
        )
        return release_from_row(rows[0]) if rows else None

    def _release_or_raise(self, tag: str) -> ReleaseRecord:
        found = self.release(tag)
        if found is None:
            raise StateError(f"release {tag} is unknown; `warden releases` lists the known ones")
        return found

    # desired state -----------------------------------------------------------------------------

    def desired(self) -> DesiredState | None:
        """The desired state, or None before it was first set."""
        rows = self._query("SELECT * FROM desired WHERE id = 1")
        if not rows:
            return None
        row = rows[0]
        return DesiredState(
            release=row["release"],
            replicas=int(row["replicas"]),
            generations={str(k): int(v) for k, v in json.loads(row["generations"]).items()},
            frozen=bool(row["frozen"]),
            maintenance=bool(row["maintenance"]),
            updated_at=float(row["updated_at"]),
            version=int(row["version"]),
        )

    def set_desired(self, desired: DesiredState, *, now: float) -> DesiredState:
        """Store ``desired`` if nobody changed it since it was read (compare-and-set).

        ``desired.version`` must be the version that was read (0 before the first write); the
        stored state gets the next version and ``updated_at=now``, and is returned.
        """
        with self.transaction():
            current = self.desired()
            stored_version = 0 if current is None else current.version
            if stored_version != desired.version:
                raise StateError(
                    f"desired state changed meanwhile: stored version {stored_version}, "
                    f"expected {desired.version}; read it again and retry"
                )
            new = replace(desired, updated_at=now, version=stored_version + 1)
            self._db.execute(
                "INSERT OR REPLACE INTO desired (id, release, replicas, generations, frozen, "
                "maintenance, updated_at, version) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.release,
                    new.replicas,
                    json.dumps(dict(new.generations), sort_keys=True),
                    int(new.frozen),
                    int(new.maintenance),
                    now,
                    new.version,
                ),
            )
            return new

    # actions -----------------------------------------------------------------------------------

    def begin_action(
        self, *, rule: str, subject: str, kind: ActionKind, target: str, reason: str, now: float
    ) -> ActionRecord:
        """Write the intent (status ``pending``) before anything changes: a write-ahead record."""
        action_id = uuid.uuid4().hex
        self._write(
            "INSERT INTO actions (id, at, rule, subject, kind, target, reason, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (action_id, now, rule, subject, kind.value, target, reason, ActionStatus.PENDING.value),
        )
        return self._action_or_raise(action_id)

    def begin_action_with_desired(
        self,
        *,
        rule: str,
        subject: str,
        kind: ActionKind,
        target: str,
        reason: str,
        desired: DesiredState,
        now: float,
    ) -> tuple[ActionRecord, DesiredState]:
        """The pending intent and the desired-state change it causes, in one transaction."""
        with self.transaction():
            action = self.begin_action(
                rule=rule, subject=subject, kind=kind, target=target, reason=reason, now=now
            )
            return action, self.set_desired(desired, now=now)

    def mark_action_applied(self, action_id: str, now: float) -> ActionRecord:
        """The desired state was applied to the engine; verification starts now."""
        return self.finish_action(action_id, ActionStatus.APPLIED, "", now)

    def finish_action(
        self, action_id: str, status: ActionStatus, result: str, now: float
    ) -> ActionRecord:
        """Move an action on (``applied``, or a final status). Repeating a move is a no-op."""
        with self.transaction():
            action = self._action_or_raise(action_id)
            if action.status is status:
                return action
            if action.status in TERMINAL_STATUSES or status is ActionStatus.PENDING:
                raise StateError(
                    f"action {action_id} is {action.status}; it cannot become {status}"
                )
            column = "started_at" if status is ActionStatus.APPLIED else "finished_at"
            self._db.execute(
                f"UPDATE actions SET status = ?, result = ?, {column} = ? WHERE id = ?",  # noqa: S608
                (status.value, result, now, action_id),
            )
            return self._action_or_raise(action_id)

    def action(self, action_id: str) -> ActionRecord | None:
        rows = self._query("SELECT * FROM actions WHERE id = ?", (action_id,))
        return action_from_row(rows[0]) if rows else None

    def pending_actions(self) -> list[ActionRecord]:
        """Actions not finished (pending or applied), oldest first: what a restarted agent must
        finish or roll back."""
        rows = self._query(
            "SELECT * FROM actions WHERE status IN ('pending', 'applied') ORDER BY at, rowid"
        )
        return [action_from_row(row) for row in rows]

    def actions(self, limit: int = 100, since: float | None = None) -> list[ActionRecord]:
        """The action history, newest first, optionally only actions at or after ``since``."""
        rows = self._query(
            "SELECT * FROM actions WHERE at >= ? ORDER BY at DESC, rowid DESC LIMIT ?",
            (float("-inf") if since is None else since, limit),
        )
        return [action_from_row(row) for row in rows]

    def _action_or_raise(self, action_id: str) -> ActionRecord:
        found = self.action(action_id)
        if found is None:
            raise StateError(f"action {action_id} is unknown")
        return found

    # policy and rule state ---------------------------------------------------------------------

    def load_policy_state(self) -> PolicyState:
        """The policy's memory; an empty state before the first save."""
        data = self._load_json(_POLICY_KEY)
        return PolicyState() if data is None else PolicyState.from_json(data)

    def save_policy_state(self, state: PolicyState) -> None:
        self._save_json(_POLICY_KEY, state.to_json())

    def load_rule_pending(self) -> dict[str, Any]:
        """The rule evaluator's pending/firing state as it saved it ({} before the first save)."""
        data = self._load_json(_RULE_PENDING_KEY)
        return {} if data is None else data

    def save_rule_pending(self, data: Mapping[str, Any]) -> None:
        self._save_json(_RULE_PENDING_KEY, data)

    def load_kv(self, key: str) -> dict[str, Any] | None:
        """A JSON object other parts keep under ``key`` (None before the first save)."""
        return self._load_json(key)

    def save_kv(self, key: str, data: Mapping[str, Any]) -> None:
        self._save_json(key, data)

    def _load_json(self, key: str) -> dict[str, Any] | None:
        rows = self._query("SELECT value FROM kv WHERE key = ?", (key,))
        if not rows:
            return None
        value = json.loads(rows[0][0])
        if not isinstance(value, dict):
            raise StateError(f"{self.path}: kv {key} is not a JSON object")
        return value

    def _save_json(self, key: str, data: Mapping[str, Any]) -> None:
        self._write(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
            (key, json.dumps(data, sort_keys=True)),
        )

    # alert outbox ------------------------------------------------------------------------------

    def enqueue_alert(
        self, receiver: str, payload: dict[str, Any], dedupe_key: str, now: float = 0.0
    ) -> None:
        """Queue ``payload`` for ``receiver``, due at once. A repeated ``dedupe_key`` for the same
        receiver is ignored, so replaying a tick after a crash never sends an alert twice."""
        self._write(
            "INSERT OR IGNORE INTO alert_outbox (receiver, payload, dedupe_key, created_at, "
            "next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            (receiver, json.dumps(payload, sort_keys=True), dedupe_key, now, now),
        )

    def due_alerts(self, now: float, limit: int = 50) -> list[OutboxAlert]:
        """Unsent alerts whose next attempt is due, oldest due first."""
        rows = self._query(
            "SELECT * FROM alert_outbox WHERE status = 'pending' AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at, id LIMIT ?",
            (now, limit),
        )
        return [outbox_from_row(row) for row in rows]

    def mark_alert_sent(self, alert_id: int, now: float | None = None) -> None:
        self._write(
            "UPDATE alert_outbox SET status = 'sent', sent_at = ?, last_error = '' WHERE id = ?",
            (now, alert_id),
        )

    def mark_alert_failed(self, alert_id: int, next_attempt_at: float, error: str) -> None:
        """Keep the alert and try again at ``next_attempt_at``."""
        self._write(
            "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
            "last_error = ? WHERE id = ?",
            (next_attempt_at, error, alert_id),
        )

    def unsent_alerts(self) -> int:
        """How many alerts wait in the outbox (for the ``warden_*`` metrics)."""
        return int(self._query("SELECT COUNT(*) FROM alert_outbox WHERE status = 'pending'")[0][0])

    # events ------------------------------------------------------------------------------------

    def record_event(
        self,
        *,
        at: float,
        kind: str,
        subject: str,
        message: str,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one event to the timeline; returns its id (increasing)."""
        cursor = self._write(
            "INSERT INTO events (at, kind, subject, message, data) VALUES (?, ?, ?, ?, ?)",
            (at, kind, subject, message, json.dumps(dict(data or {}), sort_keys=True)),
        )
        return int(cursor.lastrowid or 0)

    def events(self, after_id: int = 0, limit: int = 100) -> list[EventRecord]:
        """Events with id greater than ``after_id``, oldest first (a cursor for /api/events)."""
        rows = self._query(
            "SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        return [event_from_row(row) for row in rows]
