"""Domain values shared by every stage of a tick: observe -> evaluate -> decide -> act -> verify.

These are plain frozen values. Nothing here does I/O; the modules that observe the world produce
them and the pure stages (rules, policy) consume them. Times are seconds on the agent's Clock
(``agent.clock``), never read from the wall clock here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

SERVICE = "service"
"""Subject name for service-wide signals (aggregates over all replicas)."""


class ReplicaState(enum.StrEnum):
    """What the backend says a replica is doing (not whether it is healthy: probes say that)."""

    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"  # died on its own (crash, OOM): the agent should act
    STOPPED = "stopped"  # stopped on purpose by a person or by Warden: left alone
    PAUSED = "paused"
    MISSING = "missing"  # desired but not found in the engine


@dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    """One running copy of the model server as the backend reports it."""

    id: str  # stable slot name, e.g. "inference-1"
    url: str  # base URL the agent probes, e.g. "http://127.0.0.1:8000"
    release: str  # release tag it runs
    state: ReplicaState
    generation: int = 0  # bumped by the reconciler to force a restart
    pid: int | None = None
    container_id: str | None = None
    started_at: float | None = None
    exit_code: int | None = None
    oom_killed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    """Outcome of one HTTP probe. A failure is a result with a reason, never an exception."""

    ok: bool
    latency_s: float
    reason: str = ""
    status_code: int | None = None
    permanent: bool = False  # the target says it will not recover by itself (model load failed)


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryItemResult:
    """One golden-set item checked against one replica."""

    name: str
    ok: bool
    expected: str
    got: str | None
    confidence: float | None
    latency_s: float
    reason: str = ""
    # Probability the model gave the *expected* label (from ``scores`` or fill-mask ``tokens``);
    # None when the reply does not say. Accuracy decay compares it with the release's baseline.
    expected_score: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryResult:
    items: tuple[CanaryItemResult, ...]
    # Non-empty when no answer came back at all (timeout, connection refused): the run measured
    # nothing about correctness, so it must not count as wrong answers.
    unanswered: str = ""

    @property
    def failures(self) -> int:
        return sum(1 for item in self.items if not item.ok)

    @property
    def accuracy(self) -> float:
        return 1.0 if not self.items else 1.0 - self.failures / len(self.items)


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineEvent:
    """Something the engine told us without being asked (process exit, container die/oom)."""

    at: float
    replica_id: str
    kind: str  # "exit" | "oom" | "die" | "unhealthy" | "start" | "pause" | "unpause"
    exit_code: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything observed in one tick.

    ``signals`` maps a subject (a replica id, or ``SERVICE`` for aggregates) to signal values by
    name (the closed set in ``agent.signals``). A signal that could not be measured is absent,
    not zero: rules on an absent signal neither fire nor resolve.
    """

    at: float
    replicas: tuple[Replica, ...]
    signals: Mapping[str, Mapping[str, float]]
    events: tuple[EngineEvent, ...] = ()
    reasons: Mapping[str, str] = field(default_factory=dict)  # subject -> why it is unhealthy


class ActionKind(enum.StrEnum):
    """Remediation rungs, in ladder order, plus the side effect ``alert``."""

    ALERT = "alert"
    RESTART = "restart"
    SCALE = "scale"
    ROLLBACK = "rollback"
    FREEZE = "freeze"  # stop acting and page a person


@dataclass(frozen=True, slots=True, kw_only=True)
class Firing:
    """A rule whose condition has held for its ``for`` duration, on one subject."""

    rule: str
    subject: str
    severity: str
    value: float
    since: float  # when the condition first became true
    reason: str  # one sentence: "p95 183 ms > 100 ms for 30 s (rule latency-p95)"
    actions: tuple[ActionKind, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What the policy chose to do about one firing rule (or why it chose to do nothing)."""

    at: float
    rule: str
    subject: str
    action: ActionKind | None  # None: held back (cooldown, budget, in flight, maintenance...)
    reason: str  # one sentence with value, threshold, duration and rule name
    held_because: str = ""  # non-empty when action is None
    target_release: str | None = None  # for ROLLBACK
    dry_run: bool = False
