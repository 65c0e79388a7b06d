"""The remediation policy: one pure function, ``decide``, from firing rules to decisions.

Each firing (rule, subject) climbs a *ladder*: the rule's remediation actions in the order the rule
lists them (restart, scale, rollback), then FREEZE (stop all automatic remediation and page).
``alert`` is not a rung but a side effect, sent once each time the rule starts firing.

- The first remediation is the first rung. A rung is never repeated: a verified-failed action
  escalates to the next rung at once, and a rule still firing when the rule's cooldown has passed
  since the last action escalates too (the fix did not hold). A failed ROLLBACK goes straight to
  FREEZE (a revert loop). SCALE at ``max_replicas`` and ROLLBACK with no revert target are skipped.
- The ladder resets when the caller reports the pair resolved, and when a person unfreezes
  (a ladder that ended in FREEZE starts again from its first rung).
- Cooldowns are per rule name (``PolicyConfig.cooldowns``, else ``cooldown_s``); the caller rebuilds
  the config when rules reload, since ``Firing`` does not carry the cooldown.
- Held (frozen, maintenance, stopped on purpose, cooldown, action in flight, crash-loop backoff,
  per-hour budget) is said once per reason, not every tick: a held decision is emitted when the
  held reason changes. An exhausted budget also raises an ALERT at most once an hour.
- Dry run: decisions carry ``dry_run=True`` and the ladder does not advance (no action was taken,
  so none can be verified); each dry-run decision is emitted once per firing. Alerts are real even
  in dry run: they change nothing in the service and are how a person learns what would happen.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from agent.domain import ActionKind, Decision, Firing
from agent.errors import ConfigError
from agent.policy_state import Ladder, PastAction, PolicyState

__all__ = [
    "Context",
    "Ladder",
    "PastAction",
    "PolicyConfig",
    "PolicyState",
    "VerifyOutcome",
    "decide",
    "ladder_of",
]

HOUR_S = 3600.0
REMEDIATIONS = (ActionKind.RESTART, ActionKind.SCALE, ActionKind.ROLLBACK)
Pair = tuple[str, str]  # (rule, subject)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    cooldown_s: float = 300.0
    cooldowns: Mapping[str, float] = field(default_factory=dict)  # rule name -> seconds
    actions_per_hour: int = 6
    crash_loop_backoff_initial_s: float = 10.0
    crash_loop_backoff_max_s: float = 300.0
    restart_window_s: float = 600.0
    max_replicas: int = 4
    dry_run: bool = False

    def __post_init__(self) -> None:
        numbers = {
            "cooldown_s": self.cooldown_s,
            "actions_per_hour": self.actions_per_hour,
            "crash_loop_backoff_initial_s": self.crash_loop_backoff_initial_s,
            "crash_loop_backoff_max_s": self.crash_loop_backoff_max_s,
            "restart_window_s": self.restart_window_s,
            "max_replicas": self.max_replicas,
            **{f"cooldowns.{rule}": s for rule, s in self.cooldowns.items()},
        }
        problems = [f"policy: {name}: {v} is negative" for name, v in numbers.items() if v < 0]
        if problems:
            raise ConfigError(problems)

    def cooldown_for(self, rule: str) -> float:
        """Seconds to wait after an action on ``rule`` before escalating."""
        return self.cooldowns.get(rule, self.cooldown_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """Facts about the world this tick that the policy needs but does not own."""

    now: float
    replicas: int  # desired replica count now
    current_release: str
    revert_target: str | None = None  # from ``choose_revert_target``; None: nothing to revert to
    maintenance: bool = False
    frozen: bool = False
    action_in_flight: bool = False
    stopped: frozenset[str] = frozenset()  # replicas stopped on purpose
    candidate: bool = False  # the current release is a candidate (deployed, not yet proven good)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyOutcome:
    """How the verification of an action ended (reported on the tick after it finished)."""

    action_id: str
    rule: str
    subject: str
    kind: ActionKind
    ok: bool
    reason: str


def ladder_of(actions: Sequence[ActionKind]) -> tuple[ActionKind, ...]:
    """The rungs for a rule's actions: its remediations in listed order, then FREEZE.

    A rule with no remediation and no explicit ``freeze`` (e.g. ``[alert]``) has no ladder.
    """
    rungs = tuple(dict.fromkeys(a for a in actions if a in REMEDIATIONS))
    if not rungs and ActionKind.FREEZE not in actions:
        return ()
    return (*rungs, ActionKind.FREEZE)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Candidate:
    kind: ActionKind
    index: int
    cause: str  # " after restart failed verification (...)" or ""
    cooldown_left: float = 0.0


class _Tick:
    """Scratch state while one ``decide`` call runs (never escapes it)."""

    def __init__(self, config: PolicyConfig, context: Context, state: PolicyState) -> None:
        keep_s = max(HOUR_S, config.restart_window_s)
        self.config = config
        self.context = context
        self.now = context.now
        self.history = [h for h in state.history if context.now - h.at < keep_s]
        self.budget_alerted_at = state.budget_alerted_at
        self.busy = context.action_in_flight  # an action in flight, or one taken this tick
        self.frozen = context.frozen


def decide(
    *,
    firing: Sequence[Firing],
    state: PolicyState,
    config: PolicyConfig,
    context: Context,
    resolved: Collection[Pair] = (),
    outcomes: Sequence[VerifyOutcome] = (),
) -> tuple[tuple[Decision, ...], PolicyState]:
    """Decide what to do about this tick's ``firing`` rules; return decisions and the new state.

    ``resolved`` are (rule, subject) pairs that stopped firing (their ladders reset); a pair both
    firing and resolved counts as firing. ``outcomes`` are verifications finished since the last
    tick. Firings are handled in the order given; at most one remediation is taken per tick.
    """
    firing_now = {(f.rule, f.subject) for f in firing}
    ladders = {
        (lad.rule, lad.subject): lad
        for lad in state.ladders
        if (lad.rule, lad.subject) in firing_now or (lad.rule, lad.subject) not in resolved
    }
    _apply_outcomes(ladders, outcomes)
    if not context.frozen:  # a person unfroze: every ladder that ended in FREEZE starts again
        for key, lad in ladders.items():
            if lad.last_kind is ActionKind.FREEZE:
                ladders[key] = Ladder(rule=lad.rule, subject=lad.subject, alerted=lad.alerted)
    tick = _Tick(config, context, state)
    decisions: list[Decision] = []
    for f in firing:
        key = (f.rule, f.subject)
        fresh = Ladder(rule=f.rule, subject=f.subject)
        ladders[key] = _decide_firing(f, ladders.get(key, fresh), tick, decisions)
    new_state = PolicyState(
        ladders=tuple(ladders[k] for k in sorted(ladders)),
        history=tuple(tick.history),
        budget_alerted_at=tick.budget_alerted_at,
    )
    return tuple(decisions), new_state


def _apply_outcomes(ladders: dict[Pair, Ladder], outcomes: Sequence[VerifyOutcome]) -> None:
    for o in outcomes:
        lad = ladders.get((o.rule, o.subject))
        if lad is None or lad.last_kind is not o.kind or lad.verified is not None:
            continue  # the ladder reset since, or this outcome was already reported
        revert_failed = o.kind is ActionKind.ROLLBACK and not o.ok
        ladders[(o.rule, o.subject)] = replace(
            lad, verified=o.ok, verify_reason=o.reason, revert_failed=revert_failed
        )


def _decide_firing(f: Firing, lad: Ladder, tick: _Tick, out: list[Decision]) -> Ladder:
    if not lad.alerted:
        lad = replace(lad, alerted=True)
        if ActionKind.ALERT in f.actions:
            out.append(_decision(f, tick, ActionKind.ALERT, f"alert: {f.reason}", dry_run=False))
    rungs = ladder_of(f.actions)
    if not rungs:
        return lad
    cand = _candidate(f, lad, rungs, tick)
    hold = _hold_reason(f, cand, tick)
    if hold is not None:
        return _held(f, lad=lad, cand=cand, hold=hold, tick=tick, out=out)
    assert cand is not None  # _hold_reason holds when there is nothing left to do
    reason = f"{_phrase(cand.kind, f.subject, tick.context)}{cand.cause}: {f.reason}"
    if tick.config.dry_run:
        key = f"dry-run:{cand.kind}"
        if lad.held != key:
            out.append(_decision(f, tick, cand.kind, reason, dry_run=True))
        return replace(lad, held=key)
    out.append(_decision(f, tick, cand.kind, reason, dry_run=False))
    tick.busy = True
    if cand.kind is ActionKind.FREEZE:
        tick.frozen = True
    else:
        tick.history.append(PastAction(at=tick.now, kind=cand.kind, subject=f.subject))
    return replace(
        lad,
        rung=cand.index,
        last_kind=cand.kind,
        acted_at=tick.now,
        verified=None,
        verify_reason="",
        revert_failed=False,
        held="",
    )


def _candidate(
    f: Firing, lad: Ladder, rungs: tuple[ActionKind, ...], tick: _Tick
) -> _Candidate | None:
    """The next rung to take (with why we got there), or None when the ladder has ended."""
    last = len(rungs) - 1
    if lad.last_kind is ActionKind.FREEZE:
        return None
    why = f" ({lad.verify_reason})" if lad.verify_reason else ""
    if lad.revert_failed:
        cause = f" after rollback failed verification{why}, a revert loop"
        return _Candidate(kind=ActionKind.FREEZE, index=last, cause=cause)
    cooldown_left = 0.0
    if (
        lad.rung < 0
        and tick.context.candidate
        and tick.context.revert_target is not None
        and ActionKind.ROLLBACK in rungs
    ):
        # A release that fails before it was proven good is the likeliest cause: revert at once
        # (Flagger's rule) instead of restarting a broken release first.
        index, cause = rungs.index(ActionKind.ROLLBACK), " (the release is a candidate)"
    elif lad.rung < 0:
        index, cause = 0, ""
    elif lad.verified is False:
        index, cause = lad.rung + 1, f" after {lad.last_kind} failed verification{why}"
    else:
        cooldown = tick.config.cooldown_for(f.rule)
        cooldown_left = (lad.acted_at or 0.0) + cooldown - tick.now
        index, cause = lad.rung + 1, f" after {lad.last_kind} did not hold for {_secs(cooldown)}"
    index = min(index, last)  # rules reloaded with a shorter ladder: the end is still FREEZE
    skipped: list[str] = []
    ctx, cfg = tick.context, tick.config
    while rungs[index] is not ActionKind.FREEZE:
        if rungs[index] is ActionKind.SCALE and ctx.replicas >= cfg.max_replicas:
            skipped.append(f"scale skipped at the maximum of {cfg.max_replicas} replicas")
        elif rungs[index] is ActionKind.ROLLBACK and ctx.revert_target is None:
            skipped.append("rollback skipped with no good release to revert to")
            index = last
            continue
        else:
            break
        index += 1
    cause += "".join(f", {s}" for s in skipped)
    return _Candidate(kind=rungs[index], index=index, cause=cause, cooldown_left=cooldown_left)


def _hold_reason(f: Firing, cand: _Candidate | None, tick: _Tick) -> tuple[str, str] | None:
    """Why the candidate must wait, as (category, sentence), or None to go ahead."""
    ctx = tick.context
    if tick.frozen or cand is None:
        return "frozen", "automatic remediation is frozen"
    checks = (
        (ctx.maintenance, "maintenance", "maintenance mode is on"),
        (f.subject in ctx.stopped, "stopped", f"{f.subject} was stopped on purpose"),
        (cand.cooldown_left > 0, "cooldown", f"cooldown {_secs_left(cand.cooldown_left)} left"),
    )
    for applies, category, because in checks:
        if applies:
            return category, because
    if cand.kind is ActionKind.FREEZE:
        return None  # stopping and paging never waits for budgets or other actions
    if tick.busy:
        return "in-flight", "another action is in flight"
    if cand.kind is ActionKind.RESTART:
        backoff = _backoff(f.subject, tick)
        if backoff is not None:
            return "backoff", backoff
    return _budget(tick)


def _backoff(subject: str, tick: _Tick) -> str | None:
    """Crash-loop backoff: the n-th restart within the window waits initial * 2^(n-2), capped."""
    cfg = tick.config
    window = cfg.restart_window_s
    restarts = [
        h.at
        for h in tick.history
        if h.kind is ActionKind.RESTART and h.subject == subject and tick.now - h.at < window
    ]
    if not restarts:
        return None
    n = len(restarts)
    delay = min(
        cfg.crash_loop_backoff_initial_s * 2.0 ** min(n - 1, 60), cfg.crash_loop_backoff_max_s
    )
    left = max(restarts) + delay - tick.now
    if left <= 0:
        return None
    return (
        f"crash-loop backoff {_secs_left(left)} left after {_count(n, 'restart')} of {subject} "
        f"in {_secs(window)}"
    )


def _budget(tick: _Tick) -> tuple[str, str] | None:
    limit = tick.config.actions_per_hour
    recent = sorted(h.at for h in tick.history if tick.now - h.at < HOUR_S)
    if len(recent) < limit:
        return None
    next_in = (recent[len(recent) - limit] + HOUR_S - tick.now) if limit else HOUR_S
    return "budget", (
        f"action budget exhausted, {_count(len(recent), 'action')} in the last hour "
        f">= {limit} per hour, "
        f"next in {_secs_left(next_in)}"
    )


def _held(
    f: Firing,
    *,
    lad: Ladder,
    cand: _Candidate | None,
    hold: tuple[str, str],
    tick: _Tick,
    out: list[Decision],
) -> Ladder:
    category, because = hold
    phrase = _phrase(cand.kind, f.subject, tick.context) if cand else f"remediation of {f.subject}"
    budget_alert_due = tick.budget_alerted_at is None or tick.now - tick.budget_alerted_at >= HOUR_S
    if category == "budget" and budget_alert_due:
        tick.budget_alerted_at = tick.now
        reason = f"alert: {because}, holding {phrase}: {f.reason}"
        out.append(_decision(f, tick, ActionKind.ALERT, reason, dry_run=False))
    key = f"{category}:{cand.kind if cand else '-'}"
    if lad.held == key:
        return lad
    out.append(
        Decision(
            at=tick.now,
            rule=f.rule,
            subject=f.subject,
            action=None,
            reason=f"held {phrase} ({because}): {f.reason}",
            held_because=because,
            dry_run=tick.config.dry_run,
        )
    )
    return replace(lad, held=key)


def _decision(f: Firing, tick: _Tick, kind: ActionKind, reason: str, *, dry_run: bool) -> Decision:
    target = tick.context.revert_target if kind is ActionKind.ROLLBACK else None
    return Decision(
        at=tick.now,
        rule=f.rule,
        subject=f.subject,
        action=kind,
        reason=reason,
        target_release=target,
        dry_run=dry_run,
    )


def _phrase(kind: ActionKind, subject: str, ctx: Context) -> str:
    if kind is ActionKind.RESTART:
        return f"restart {subject}"
    if kind is ActionKind.SCALE:
        return f"scale out to {ctx.replicas + 1} replicas"
    if kind is ActionKind.ROLLBACK:
        return f"roll back {ctx.current_release} to {ctx.revert_target}"
    if kind is ActionKind.FREEZE:
        return "freeze and page"
    return f"alert on {subject}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _secs(value: float) -> str:
    return f"{value:g} s" if value != int(value) else f"{int(value)} s"


def _secs_left(value: float) -> str:
    """Seconds still to wait, rounded up: "0 s left" would be a lie."""
    return f"{math.ceil(value)} s"
