"""Labelled feedback (``POST /api/feedback``): what the model answered and what was right.

Each item names the label the service predicted, the true label, and the release that answered
(the ``release`` field of the ``/predict`` reply; the agent's current release when omitted). The
caller sends the predicted label because only the caller knows it: ``/predict`` returns no id the
agent could look up, and the agent has no model to re-run (``docs/decisions.md``).

Items live in ``state_dir/feedback.db`` (SQLite, WAL) so a restarted agent keeps its windows. Per
release only what the decay test reads is kept: the release's first ``window`` items (its
baseline) and its latest ``window`` items (the live window). An optional ``id`` makes a retried
POST harmless: an id seen before is counted once.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import StateError

DB_NAME = "feedback.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    release TEXT NOT NULL,
    predicted TEXT NOT NULL,
    label TEXT NOT NULL,
    correct INTEGER NOT NULL,
    key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS feedback_release ON feedback (release, seq);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackItem:
    """One labelled answer."""

    predicted: str
    label: str
    release: str
    key: str | None = None  # caller's id for the prediction; a repeat is ignored


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """Correct answers among ``total`` labelled items."""

    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Added:
    accepted: int
    duplicates: int


class FeedbackStore:
    """Feedback items in SQLite; safe to share between the API thread and the tick."""

    def __init__(self, state_dir: Path, *, window: int) -> None:
        if window < 1:
            raise ValueError(f"feedback window must be at least 1, got {window}")
        self.window = window
        self.path = Path(state_dir) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot open the feedback database: {exc}") from exc
        self._lock = threading.Lock()
        self.version = 0  # bumped by every add: readers cache what they computed from a version

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, items: Sequence[FeedbackItem], now: float) -> Added:
        """Store ``items`` in one transaction; items whose ``key`` was seen before are skipped."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                accepted = 0
                for item in items:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO feedback (at, release, predicted, label, correct,"
                        " key) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            now,
                            item.release,
                            item.predicted,
                            item.label,
                            int(item.predicted == item.label),
                            item.key,
                        ),
                    )
                    accepted += cursor.rowcount
                for release in {item.release for item in items}:
                    self._prune(release)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.version += 1
        return Added(accepted=accepted, duplicates=len(items) - accepted)

    def baseline(self, release: str) -> Window:
        """The release's first ``window`` labelled items (fewer while it has fewer)."""
        return self._counts(
            "SELECT correct FROM feedback WHERE release = ? ORDER BY seq LIMIT ?",
            (release, self.window),
        )

    def live(self, release: str, *, after_baseline: bool) -> Window:
        """The release's latest ``window`` items; with ``after_baseline`` only items that came
        after its baseline window (so a release is never compared with itself)."""
        skip = self.window if after_baseline else 0
        return self._counts(
            "SELECT correct FROM (SELECT seq, correct FROM feedback WHERE release = ?"
            " ORDER BY seq LIMIT -1 OFFSET ?) ORDER BY seq DESC LIMIT ?",
            (release, skip, self.window),
        )

    def _counts(self, sql: str, params: tuple[object, ...]) -> Window:
        with self._lock:
            query = f"SELECT COUNT(*), COALESCE(SUM(correct), 0) FROM ({sql})"  # noqa: S608
            rows = self._db.execute(query, params).fetchone()
        return Window(total=int(rows[0]), correct=int(rows[1]))

    def _prune(self, release: str) -> None:
        """Drop the items between a release's baseline window and its live window."""
        self._db.execute(
            "DELETE FROM feedback WHERE release = ?"
            " AND seq NOT IN (SELECT seq FROM feedback WHERE release = ? ORDER BY seq LIMIT ?)"
            " AND seq NOT IN (SELECT seq FROM feedback WHERE release = ?"
            " ORDER BY seq DESC LIMIT ?)",
            (release, release, self.window, release, self.window),
        )
