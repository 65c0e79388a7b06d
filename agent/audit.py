"""The append-only audit log ``state_dir/audit.jsonl``: one JSON line per decision, action, reload.

Every write is flushed and fsync'd before ``write`` returns. A crash can only tear the last line;
opening the log truncates it back to the last complete line, and reading skips a torn line.
Each record has a unique ``id``; writing an id that is already in the log does nothing, so a tick
replayed after a crash does not log twice. Records written while an operator's request runs
(``acting_as``) carry ``by``: the name of the API token that asked, never the token itself.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from agent.domain import Decision
from agent.errors import StateError

log = logging.getLogger(__name__)

AUDIT_NAME = "audit.jsonl"
REQUIRED = ("ts", "kind")

_actor: ContextVar[str | None] = ContextVar("warden_audit_actor", default=None)


@contextmanager
def acting_as(name: str) -> Iterator[None]:
    """Attribute every record written inside the block to ``name`` (``by``). The API wraps each
    operator request in it, so the agent's methods need not pass the caller around."""
    reset = _actor.set(name)
    try:
        yield
    finally:
        _actor.reset(reset)


class AuditLog:
    """``state_dir/audit.jsonl``. Safe to share between threads of one process."""

    def __init__(self, state_dir: Path | str) -> None:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / AUDIT_NAME
        self._lock = threading.Lock()
        created = not self.path.exists()
        self._repair()
        self._ids = {str(r["id"]) for r in self.read() if "id" in r}
        self._file = self.path.open("ab")
        if created:
            _fsync_dir(directory)  # the new file's name must survive a crash too

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def write(self, record: Mapping[str, Any]) -> bool:
        """Append ``record`` (must have ``ts`` and ``kind``; an ``id`` is added when missing).

        Returns False, writing nothing, when a record with the same id is already in the log.
        """
        missing = [key for key in REQUIRED if key not in record]
        if missing:
            raise ValueError(f"audit record lacks {', '.join(missing)}: {dict(record)!r}")
        if not _is_number(record["ts"]):
            raise ValueError(f"audit record ts must be seconds, got {record['ts']!r}")
        actor = _actor.get()
        full = {"id": uuid.uuid4().hex, **({"by": actor} if actor else {}), **record}
        record_id = str(full["id"])
        line = json.dumps(full, sort_keys=True, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            if record_id in self._ids:
                return False
            self._append(line.encode())
            self._ids.add(record_id)
        return True

    def _append(self, data: bytes) -> None:
        start = self._file.tell()
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            # Never leave half a line behind: the next record would be glued to it.
            self._file.truncate(start)
            raise StateError(f"{self.path}: cannot append to the audit log: {exc}") from exc

    def read(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every complete record in write order, only those with ``ts >= since`` when given."""
        if not self.path.exists():
            return []
        records: list[dict[str, Any]] = []
        lines = self.path.read_bytes().split(b"\n")
        # The last element is b"" after a complete final line, or a torn line being written.
        for number, raw in enumerate(lines[:-1], start=1):
            record = _parse(raw, self.path, number)
            if record is not None and (since is None or float(record["ts"]) >= since):
                records.append(record)
        return records

    def _repair(self) -> None:
        """Cut a torn last line (a crash in the middle of a write) back to the last newline."""
        if not self.path.exists():
            return
        with self.path.open("r+b") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            log.warning(
                "audit: %s: dropping a torn last line of %d bytes (the agent stopped mid-write)",
                self.path,
                len(data) - keep,
            )
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())


def _parse(raw: bytes, path: Path, number: int) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        log.warning("audit: %s:%d: skipping a line that is not JSON", path, number)
        return None
    if (
        not isinstance(record, dict)
        or any(key not in record for key in REQUIRED)
        or not _is_number(record["ts"])
    ):
        log.warning("audit: %s:%d: skipping a line that is not an audit record", path, number)
        return None
    return record


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise StateError(f"{directory}: cannot open the state directory: {exc}") from exc
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def decision_record(decision: Decision, *, record_id: str, action_id: str = "") -> dict[str, Any]:
    """The audit record for a policy decision.

    ``record_id`` should be derived from the tick (e.g. ``f"{tick_id}:{index}"``) so that a tick
    replayed after a crash writes the same ids and is deduplicated.
    """
    return {
        "id": record_id,
        "ts": decision.at,
        "kind": "decision",
        "rule": decision.rule,
        "subject": decision.subject,
        "action": None if decision.action is None else decision.action.value,
        "reason": decision.reason,
        "held_because": decision.held_because,
        "target_release": decision.target_release,
        "dry_run": decision.dry_run,
        "action_id": action_id,
    }
