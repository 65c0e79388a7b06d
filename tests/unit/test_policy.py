"""The remediation policy: ladder, escalation, cooldowns, budgets, backoff and every hold."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.domain import ActionKind, Decision, Firing
from agent.errors import ConfigError
from agent.policy import (
    Context,
    PolicyConfig,
    PolicyState,
    VerifyOutcome,
    decide,
    ladder_of,
)

A = ActionKind
HEALTH = "health failed 3 times in a row >= 3 for 3 s (rule health-failures)"
LATENCY = "p95 183 ms > 100 ms for 30 s (rule latency-p95)"
LADDER = (A.ALERT, A.RESTART, A.SCALE, A.ROLLBACK)


def health(subject: str = "inference-1", actions: Sequence[ActionKind] = LADDER) -> Firing:
    return Firing(
        rule="health-failures",
        subject=subject,
        severity="critical",
        value=3.0,
        since=0.0,
        reason=HEALTH.replace("inference-1", subject),
        actions=tuple(actions),
    )


def latency(actions: Sequence[ActionKind] = (A.ALERT, A.SCALE)) -> Firing:
    return Firing(
        rule="latency-p95",
        subject="service",
        severity="warning",
        value=183.0,
        since=0.0,
        reason=LATENCY,
        actions=tuple(actions),
    )


class Agent:
    """Drives ``decide`` tick by tick with a fake clock, keeping the state like the caller does."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.clock = FakeClock()
        self.t0 = self.clock.now()
        self.config = config or PolicyConfig(cooldown_s=300.0)
        self.state = PolicyState()

    def tick(
        self,
        *firing: Firing,
        resolved: Sequence[tuple[str, str]] = (),
        outcomes: Sequence[VerifyOutcome] = (),
        **facts: Any,
    ) -> tuple[Decision, ...]:
        context = Context(
            now=self.clock.now(),
            replicas=facts.pop("replicas", 1),
            current_release=facts.pop("current_release", "v3"),
            revert_target=facts.pop("revert_target", "v2"),
            **facts,
        )
        decisions, self.state = decide(
            firing=firing,
            state=self.state,
            config=self.config,
            context=context,
            resolved=resolved,
            outcomes=outcomes,
        )
        return decisions


def failed(
    kind: ActionKind, reason: str = "not ready after 60 s", f: Firing | None = None
) -> VerifyOutcome:
    f = f or health()
    return VerifyOutcome(
        action_id="a1", rule=f.rule, subject=f.subject, kind=kind, ok=False, reason=reason
    )


def passed(kind: ActionKind, f: Firing | None = None) -> VerifyOutcome:
    f = f or health()
    return VerifyOutcome(
        action_id="a1", rule=f.rule, subject=f.subject, kind=kind, ok=True, reason="ready"
    )


def summary(decisions: Sequence[Decision]) -> list[tuple[ActionKind | None, str]]:
    return [(d.action, d.reason) for d in decisions]


RESOLVED = [("health-failures", "inference-1")]


# ladder ----------------------------------------------------------------------------------------


def test_first_firing_alerts_and_takes_the_first_rung() -> None:
    agent = Agent()
    decisions = agent.tick(health())
    assert summary(decisions) == [
        (A.ALERT, f"alert: {HEALTH}"),
        (A.RESTART, f"restart inference-1: {HEALTH}"),
    ]
    assert all(d.at == agent.t0 and d.rule == "health-failures" for d in decisions)
    assert [d.dry_run for d in decisions] == [False, False]


def test_ladder_is_restart_scale_rollback_freeze_when_each_verification_fails() -> None:
    agent = Agent()
    taken = [d for d in agent.tick(health()) if d.action is not A.ALERT]
    for kind in (A.RESTART, A.SCALE, A.ROLLBACK):
        agent.clock.advance(60)
        taken += agent.tick(health(), outcomes=[failed(kind)])
    assert summary(taken) == [
        (A.RESTART, f"restart inference-1: {HEALTH}"),
        (
            A.SCALE,
            "scale out to 2 replicas after restart failed verification (not ready after 60 s): "
            f"{HEALTH}",
        ),
        (
            A.ROLLBACK,
            f"roll back v3 to v2 after scale failed verification (not ready after 60 s): {HEALTH}",
        ),
        (
            A.FREEZE,
            "freeze and page after rollback failed verification (not ready after 60 s), "
            f"a revert loop: {HEALTH}",
        ),
    ]
    assert taken[2].target_release == "v2"


def test_rule_order_is_the_ladder_order() -> None:
    assert ladder_of((A.ROLLBACK, A.ALERT, A.RESTART)) == (A.ROLLBACK, A.RESTART, A.FREEZE)
    decisions = Agent().tick(health(actions=(A.ROLLBACK, A.RESTART)))
    assert summary(decisions) == [(A.ROLLBACK, f"roll back v3 to v2: {HEALTH}")]


def test_rule_with_only_alert_never_remediates() -> None:
    agent = Agent()
    assert ladder_of((A.ALERT,)) == ()
    assert summary(agent.tick(latency(actions=(A.ALERT,)))) == [(A.ALERT, f"alert: {LATENCY}")]
    agent.clock.advance(3600)
    assert agent.tick(latency(actions=(A.ALERT,))) == ()


def test_alert_is_sent_each_time_the_rule_starts_firing_not_every_tick() -> None:
    agent = Agent(PolicyConfig(cooldown_s=300.0, crash_loop_backoff_initial_s=0.0))
    assert [d.action for d in agent.tick(health())] == [A.ALERT, A.RESTART]
    agent.clock.advance(10)
    assert [d.action for d in agent.tick(health(), outcomes=[passed(A.RESTART)])] == [None]
    agent.clock.advance(10)
    assert agent.tick(health()) == ()
    assert agent.tick(resolved=RESOLVED) == ()
    agent.clock.advance(10)
    assert [d.action for d in agent.tick(health())] == [A.ALERT, A.RESTART]


def test_verify_failure_escalates_at_once_without_waiting_for_the_cooldown() -> None:
    agent = Agent()
    agent.tick(health())
    agent.clock.advance(5)
    decisions = agent.tick(health(), outcomes=[failed(A.RESTART, "health still failing")])
    assert summary(decisions) == [
        (
            A.SCALE,
            f"scale out to 2 replicas after restart failed verification (health still failing): "
            f"{HEALTH}",
        )
    ]


def test_still_firing_after_a_verified_fix_and_the_cooldown_escalates() -> None:
    agent = Agent()
    agent.tick(health())
    agent.clock.advance(20)
    agent.tick(health(), outcomes=[passed(A.RESTART)])
    agent.clock.advance(280)
    decisions = agent.tick(health())
    assert summary(decisions) == [
        (A.SCALE, f"scale out to 2 replicas after restart did not hold for 300 s: {HEALTH}")
    ]


def test_cooldown_holds_with_seconds_left_rounded_up() -> None:
    agent = Agent()
    agent.tick(health())
    agent.clock.advance(12.5)
    decisions = agent.tick(health(), outcomes=[passed(A.RESTART)])
    assert summary(decisions) == [
        (None, f"held scale out to 2 replicas (cooldown 288 s left): {HEALTH}")
    ]
    assert decisions[0].held_because == "cooldown 288 s left"


def test_cooldown_comes_from_the_rule_name_else_the_default() -> None:
    config = PolicyConfig(cooldown_s=300.0, cooldowns={"health-failures": 30.0})
    assert (config.cooldown_for("health-failures"), config.cooldown_for("other")) == (30.0, 300.0)
    agent = Agent(config)
    agent.tick(health())
    agent.clock.advance(30)
    assert [d.action for d in agent.tick(health())] == [A.SCALE]


def test_resolved_rule_resets_the_ladder() -> None:
    agent = Agent(PolicyConfig(crash_loop_backoff_initial_s=0.0))
    agent.tick(health())
    agent.clock.advance(5)
    agent.tick(health(), outcomes=[failed(A.RESTART)])  # scaled
    agent.clock.advance(5)
    agent.tick(resolved=RESOLVED)
    assert agent.state.ladders == ()
    agent.clock.advance(5)
    assert [d.action for d in agent.tick(health())] == [A.ALERT, A.RESTART]


def test_outcome_of_a_reset_ladder_is_ignored() -> None:
    agent = Agent()
    agent.tick(health())
    agent.tick(resolved=RESOLVED)
    agent.tick(outcomes=[failed(A.RESTART)])
    assert agent.state.ladders == ()


@st.composite
def _episodes(draw: st.DrawFn) -> list[tuple[float, bool | None]]:
    steps = st.tuples(st.floats(min_value=0, max_value=400), st.sampled_from([None, True, False]))
    return draw(st.lists(steps, min_size=1, max_size=30))


@settings(max_examples=200, deadline=None)
@given(_episodes())
def test_never_repeats_the_same_rung_within_one_firing(
    steps: list[tuple[float, bool | None]],
) -> None:
    agent = Agent(PolicyConfig(cooldown_s=60.0, actions_per_hour=100))
    taken: list[ActionKind] = [d.action for d in agent.tick(health()) if d.action is A.RESTART]
    for advance, ok in steps:
        agent.clock.advance(advance)
        last = taken[-1] if taken else None
        outcomes = (
            []
            if ok is None or last is None
            else [
                VerifyOutcome(
                    action_id="x",
                    rule="health-failures",
                    subject="inference-1",
                    kind=last,
                    ok=ok,
                    reason="r",
                )
            ]
        )
        frozen = last is A.FREEZE
        decisions = agent.tick(health(), outcomes=outcomes, frozen=frozen)
        taken += [d.action for d in decisions if d.action is not None]
    assert len(taken) == len(set(taken))
    order: list[ActionKind] = [A.RESTART, A.SCALE, A.ROLLBACK, A.FREEZE]
    assert taken == sorted(taken, key=order.index)


# inapplicable rungs ----------------------------------------------------------------------------


def test_scale_at_max_replicas_escalates_to_the_next_rung() -> None:
    agent = Agent(PolicyConfig(max_replicas=2))
    agent.tick(health(), replicas=2)
    decisions = agent.tick(health(), outcomes=[failed(A.RESTART)], replicas=2)
    assert summary(decisions) == [
        (
            A.ROLLBACK,
            "roll back v3 to v2 after restart failed verification (not ready after 60 s), "
            f"scale skipped at the maximum of 2 replicas: {HEALTH}",
        )
    ]


def test_rollback_without_a_revert_target_freezes() -> None:
    agent = Agent()
    decisions = agent.tick(health(actions=(A.ROLLBACK, A.RESTART)), revert_target=None)
    assert summary(decisions) == [
        (A.FREEZE, f"freeze and page, rollback skipped with no good release to revert to: {HEALTH}")
    ]
    assert decisions[0].target_release is None


def test_failed_rollback_is_a_revert_loop_and_freezes_instead_of_continuing() -> None:
    agent = Agent()
    f = health(actions=(A.ROLLBACK, A.RESTART))
    agent.tick(f)
    decisions = agent.tick(f, outcomes=[failed(A.ROLLBACK, "canaries failed 3 of 5")])
    assert summary(decisions) == [
        (
            A.FREEZE,
            "freeze and page after rollback failed verification (canaries failed 3 of 5), "
            f"a revert loop: {HEALTH}",
        )
    ]


def test_freeze_is_not_held_by_an_action_in_flight_or_the_budget() -> None:
    agent = Agent(PolicyConfig(actions_per_hour=1))
    agent.tick(health(actions=(A.RESTART,)))
    decisions = agent.tick(
        health(actions=(A.RESTART,)), outcomes=[failed(A.RESTART)], action_in_flight=True
    )
    assert [d.action for d in decisions] == [A.FREEZE]


def test_unfreezing_starts_the_ladder_again() -> None:
    agent = Agent(PolicyConfig(crash_loop_backoff_initial_s=0.0))
    f = health(actions=(A.RESTART,))
    agent.tick(f)
    assert [d.action for d in agent.tick(f, outcomes=[failed(A.RESTART)])] == [A.FREEZE]
    agent.clock.advance(60)
    assert summary(agent.tick(f, frozen=True)) == [
        (None, f"held remediation of inference-1 (automatic remediation is frozen): {HEALTH}")
    ]
    agent.clock.advance(60)
    assert summary(agent.tick(f, frozen=False)) == [(A.RESTART, f"restart inference-1: {HEALTH}")]


def test_a_shorter_ladder_after_a_rules_reload_still_ends_in_freeze() -> None:
    agent = Agent()
    agent.tick(health())
    agent.tick(health(), outcomes=[failed(A.RESTART)])  # scaled: rung 1 of 4
    reloaded = health(actions=(A.RESTART,))  # now a ladder of 2: restart, freeze
    decisions = agent.tick(reloaded, outcomes=[failed(A.SCALE)])
    assert summary(decisions) == [
        (
            A.FREEZE,
            f"freeze and page after scale failed verification (not ready after 60 s): {HEALTH}",
        )
    ]


# holds -----------------------------------------------------------------------------------------


def test_action_in_flight_holds() -> None:
    decisions = Agent().tick(health(), action_in_flight=True)
    assert summary(decisions) == [
        (A.ALERT, f"alert: {HEALTH}"),
        (None, f"held restart inference-1 (another action is in flight): {HEALTH}"),
    ]


def test_only_one_action_per_tick() -> None:
    decisions = Agent().tick(health("inference-1"), health("inference-2"))
    other = HEALTH.replace("inference-1", "inference-2")
    assert summary(decisions) == [
        (A.ALERT, f"alert: {HEALTH}"),
        (A.RESTART, f"restart inference-1: {HEALTH}"),
        (A.ALERT, f"alert: {other}"),
        (None, f"held restart inference-2 (another action is in flight): {other}"),
    ]


def test_maintenance_mode_only_alerts() -> None:
    decisions = Agent().tick(health(), maintenance=True)
    assert summary(decisions) == [
        (A.ALERT, f"alert: {HEALTH}"),
        (None, f"held restart inference-1 (maintenance mode is on): {HEALTH}"),
    ]
    assert decisions[1].held_because == "maintenance mode is on"


def test_replica_stopped_on_purpose_is_never_restarted() -> None:
    agent = Agent()
    f = health("inference-2", actions=(A.RESTART,))
    decisions = agent.tick(f, stopped=frozenset({"inference-2"}))
    assert summary(decisions) == [
        (None, f"held restart inference-2 (inference-2 was stopped on purpose): {f.reason}")
    ]
    agent.clock.advance(3600)
    assert agent.tick(f, stopped=frozenset({"inference-2"})) == ()


def test_frozen_only_alerts() -> None:
    decisions = Agent().tick(health(), frozen=True)
    assert summary(decisions) == [
        (A.ALERT, f"alert: {HEALTH}"),
        (None, f"held restart inference-1 (automatic remediation is frozen): {HEALTH}"),
    ]


def test_held_reason_is_emitted_once_until_it_changes() -> None:
    agent = Agent()
    agent.tick(health())
    agent.clock.advance(100)
    first = agent.tick(health(), outcomes=[passed(A.RESTART)])
    assert summary(first) == [
        (None, f"held scale out to 2 replicas (cooldown 200 s left): {HEALTH}")
    ]
    agent.clock.advance(100)
    assert agent.tick(health()) == ()  # still cooling down: the same reason is not repeated
    agent.clock.advance(100)
    changed = agent.tick(health(), action_in_flight=True)
    assert summary(changed) == [
        (None, f"held scale out to 2 replicas (another action is in flight): {HEALTH}")
    ]
    assert agent.tick(health(), action_in_flight=True) == ()
    assert [d.action for d in agent.tick(health())] == [A.SCALE]


# budget and backoff ----------------------------------------------------------------------------


def test_budget_is_a_sliding_hour_and_pages_once_an_hour_when_exhausted() -> None:
    agent = Agent(PolicyConfig(actions_per_hour=2, crash_loop_backoff_initial_s=0.0))
    assert [d.action for d in agent.tick(health("inference-1"))] == [A.ALERT, A.RESTART]
    agent.clock.advance(100)
    assert [d.action for d in agent.tick(health("inference-2"))] == [A.ALERT, A.RESTART]
    agent.clock.advance(100)
    f3 = health("inference-3")
    because = "action budget exhausted, 2 actions in the last hour >= 2 per hour, next in 3400 s"
    assert summary(agent.tick(f3)) == [
        (A.ALERT, f"alert: {f3.reason}"),
        (A.ALERT, f"alert: {because}, holding restart inference-3: {f3.reason}"),
        (None, f"held restart inference-3 ({because}): {f3.reason}"),
    ]
    agent.clock.advance(3399)
    assert agent.tick(f3) == ()  # still exhausted: no repeat, and the page was sent this hour
    agent.clock.advance(1)
    assert [d.action for d in agent.tick(f3)] == [A.RESTART]


def test_budget_alert_repeats_after_an_hour() -> None:
    agent = Agent(PolicyConfig(actions_per_hour=0))
    f = health(actions=(A.RESTART,))
    first = agent.tick(f)
    assert [d.action for d in first] == [A.ALERT, None]
    assert first[0].reason == (
        "alert: action budget exhausted, 0 actions in the last hour >= 0 per hour, "
        f"next in 3600 s, holding restart inference-1: {HEALTH}"
    )
    agent.clock.advance(3599)
    assert agent.tick(f) == ()
    agent.clock.advance(1)
    assert [d.action for d in agent.tick(f)] == [A.ALERT]


def _restart_times(agent: Agent, episodes: int) -> list[float]:
    """Fire, restart as soon as the policy allows, resolve; repeat. Returns restart times."""
    times: list[float] = []
    f = health(actions=(A.RESTART,))
    for _ in range(episodes):
        while not any(d.action is A.RESTART for d in agent.tick(f)):
            agent.clock.advance(1)
        times.append(agent.clock.now() - agent.t0)
        agent.tick(resolved=RESOLVED)
    return times


def test_crash_loop_backoff_doubles_from_initial_to_max() -> None:
    config = PolicyConfig(
        crash_loop_backoff_initial_s=10.0,
        crash_loop_backoff_max_s=40.0,
        restart_window_s=600.0,
        actions_per_hour=100,
    )
    assert _restart_times(Agent(config), 6) == [0.0, 10.0, 30.0, 70.0, 110.0, 150.0]


def test_crash_loop_backoff_reason_and_window_reset() -> None:
    agent = Agent(PolicyConfig(crash_loop_backoff_initial_s=10.0, restart_window_s=600.0))
    f = health(actions=(A.RESTART,))
    agent.tick(f)
    agent.tick(resolved=RESOLVED)
    agent.clock.advance(4)
    assert summary(agent.tick(f)) == [
        (
            None,
            "held restart inference-1 (crash-loop backoff 6 s left after 1 restart of "
            f"inference-1 in 600 s): {HEALTH}",
        )
    ]
    agent.tick(resolved=RESOLVED)
    agent.clock.advance(596)  # the first restart left the window: no backoff any more
    assert [d.action for d in agent.tick(f)] == [A.RESTART]


# dry run, config, persistence ------------------------------------------------------------------


def test_dry_run_decides_once_and_does_not_advance_the_ladder() -> None:
    agent = Agent(PolicyConfig(dry_run=True))
    decisions = agent.tick(health())
    assert summary(decisions) == [
        (A.ALERT, f"alert: {HEALTH}"),
        (A.RESTART, f"restart inference-1: {HEALTH}"),
    ]
    assert [d.dry_run for d in decisions] == [False, True]
    ladder = agent.state.ladder("health-failures", "inference-1")
    assert ladder is not None and ladder.rung == -1
    assert agent.state.history == ()
    agent.clock.advance(3600)
    assert agent.tick(health()) == ()


def test_dry_run_held_decisions_are_marked_dry_run() -> None:
    decisions = Agent(PolicyConfig(dry_run=True)).tick(health(), maintenance=True)
    assert [(d.action, d.dry_run) for d in decisions] == [(A.ALERT, False), (None, True)]


def test_negative_config_is_rejected_with_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        PolicyConfig(cooldown_s=-1, max_replicas=-2, cooldowns={"x": -3})
    assert err.value.problems == [
        "policy: cooldown_s: -1 is negative",
        "policy: max_replicas: -2 is negative",
        "policy: cooldowns.x: -3 is negative",
    ]


def test_policy_state_survives_a_json_roundtrip() -> None:
    agent = Agent()
    agent.tick(health(), latency())
    agent.tick(health(), outcomes=[failed(A.RESTART)], action_in_flight=True)
    text = json.dumps(agent.state.to_json())
    assert PolicyState.from_json(json.loads(text)) == agent.state
