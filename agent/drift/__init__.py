"""Drift detection: is live traffic still like the traffic a release was validated on?

``detector`` holds the pure statistics (no I/O), ``alibi_engine`` the optional alibi-detect engine
(imported only when configured), ``files`` reads feature files, ``reference`` persists reference
windows, ``monitor`` turns ``/v1/observations`` into windows and windows into signals. This module
stays light (no numpy/scipy import) so the loop can name the hook without loading the statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from agent.domain import Replica

if TYPE_CHECKING:
    from agent.drift.detector import DriftResult, DriftSettings

ENGINES = ("scipy", "alibi")

Engine = Callable[[object, object, "DriftSettings"], "DriftResult"]


class DriftHook(Protocol):
    """What the agent's tick needs from the drift monitor (see ``agent.drift.monitor``)."""

    def tick(
        self, *, ready: Sequence[Replica], release: str, previous_good: str | None, now: float
    ) -> Mapping[str, float]:
        """Tell the monitor what serves now; get the latest drift signals (service scope)."""
        ...

    def promoted(self, release: str, now: float) -> None:
        """``release`` was promoted good: capture its reference window."""
        ...


def engine(name: str) -> Engine:
    """The detection function of engine ``name`` (``alibi`` is imported only here, lazily)."""
    if name == "alibi":
        from agent.drift.alibi_engine import detect_alibi, load_ks_drift

        load_ks_drift()  # fail now, with the install hint, rather than at the first window
        return detect_alibi
    if name == "scipy":
        from agent.drift.detector import detect

        return detect
    raise ValueError(f"unknown drift engine {name!r}; use one of {', '.join(ENGINES)}")
