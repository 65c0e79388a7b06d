"""Prometheus file-based service discovery: the agent publishes its replicas as scrape targets.

Replicas come and go when the agent restarts, scales or reverts; Prometheus watches the target
file (``file_sd_configs``) and scrapes new replicas without a reload. The file is written to a
temporary file in the same directory and moved into place with ``os.replace``: Prometheus may read
the file at any moment, and an in-place rewrite can be read half-written.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.domain import Replica, ReplicaState

log = logging.getLogger(__name__)


def target_groups(replicas: Iterable[Replica], *, service: str) -> list[dict[str, Any]]:
    """One target group per replica (``host:port`` plus ``service`` and ``replica`` labels).

    Replicas stopped on purpose are left out: nobody expects them to answer. A replica that died
    stays in, so its ``up`` goes to 0 and the replicas-down alert can see it.
    """
    groups = []
    for replica in sorted(replicas, key=lambda r: r.id):
        address = urlsplit(replica.url).netloc
        if replica.state is ReplicaState.STOPPED or not address:
            continue
        groups.append({"targets": [address], "labels": {"service": service, "replica": replica.id}})
    return groups


def write_targets(path: Path, groups: list[dict[str, Any]]) -> None:
    """Write ``groups`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(groups, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # Prometheus often runs as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TargetFile:
    """The agent's file_sd target file; rewritten only when the set of targets changes."""

    def __init__(self, path: Path, *, service: str) -> None:
        self.path = path
        self.service = service
        self._written: list[dict[str, Any]] | None = None

    def update(self, replicas: Iterable[Replica]) -> bool:
        """Publish ``replicas``; True when the file was (re)written. Never raises: a failed
        write is logged and retried on the next call (scraping is not worth a failed tick)."""
        groups = target_groups(replicas, service=self.service)
        if groups == self._written and self.path.exists():
            return False
        try:
            write_targets(self.path, groups)
        except OSError as exc:
            log.warning("cannot write Prometheus targets to %s: %s", self.path, exc)
            return False
        self._written = groups
        return True
