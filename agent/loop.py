"""One tick: observe -> evaluate -> decide -> act -> verify -> record.

``Agent.tick()`` is one call returning a ``TickReport``; the scheduler only calls it. Every part it
wires together is passed in (``agent.app`` builds the real ones), so tests run ticks with a fake
clock, a fake backend and a mock HTTP transport.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent import alerts as alerting
from agent.audit import AuditLog, decision_record
from agent.backends.base import Backend, ReleaseSpec
from agent.clock import Clock
from agent.decay_monitor import DecayMonitor
from agent.domain import SERVICE, ActionKind, Decision, Firing, Snapshot
from agent.drift import DriftHook
from agent.errors import BackendError, StateError, WardenError
from agent.evaluate import evaluate
from agent.metrics import AgentMetrics
from agent.observe import Observation, Observer
from agent.policy import Context, PolicyConfig, VerifyOutcome, decide
from agent.reconcile import Desired, apply, plan, slot_name
from agent.releases import ReleaseStatus, bake_status, choose_revert_target
from agent.rollout.controller import Hooks, Rollouts
from agent.rules import RuleSet, RuleWatcher
from agent.state import StateStore
from agent.state_schema import ActionRecord, ActionStatus, DesiredState
from agent.trace import TraceRecorder
from agent.verify import check

log = logging.getLogger(__name__)

MANUAL = "manual"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    """The numbers a tick needs, already parsed (seconds, counts)."""

    service: str = "inference"
    initial_release: ReleaseSpec = field(default_factory=lambda: ReleaseSpec(tag="default"))
    replicas: int = 1
    interval_s: float = 1.0
    fast_interval_s: float = 0.25
    verify_timeout_s: float = 60.0
    bake_s: float = 300.0
    bake_canary_interval_s: float = 2.0  # canaries run this often while a candidate bakes
    policy: PolicyConfig = field(default_factory=PolicyConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class TickReport:
    at: float
    firing: tuple[Firing, ...]
    decisions: tuple[Decision, ...]
    steps: tuple[str, ...]
    verified: tuple[VerifyOutcome, ...]
    problems: tuple[str, ...]
    next_interval_s: float


@dataclass(slots=True)
class _Memory:
    """What the loop remembers between ticks in memory (the rest is in the store)."""

    pending: dict[tuple[str, str], float] = field(default_factory=dict)
    alerted: dict[tuple[str, str], float] = field(default_factory=dict)
    canaries_passing_since: float | None = None
    quiet_since: float | None = None
    rules_problems: tuple[str, ...] = ()
    last_observation: Observation | None = None
    last_firing: tuple[Firing, ...] = ()
    firing_keys: frozenset[tuple[str, str]] = frozenset()
    saved_rule_state: dict[str, Any] = field(default_factory=dict)
    tick_count: int = 0
    engine_problem: str = ""  # set while the backend's engine cannot be reached


class Agent:
    """The sidecar's brain. Thread-safe: ticks and API mutations take the same lock."""

    def __init__(
        self,
        *,
        settings: AgentSettings,
        clock: Clock,
        backend: Backend,
        observer: Observer,
        store: StateStore,
        audit: AuditLog,
        rules: RuleWatcher,
        metrics: AgentMetrics,
        receivers: Sequence[alerting.Receiver] = (),
        trace: TraceRecorder | None = None,
        decay: DecayMonitor | None = None,
        drift: DriftHook | None = None,
        rollouts: Rollouts | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.backend = backend
        self.observer = observer
        self.store = store
        self.audit = audit
        self.rules = rules
        self.metrics = metrics
        self.receivers = tuple(receivers)
        self.trace = trace
        self.decay = decay
        self.drift = drift
        self.rollouts = rollouts
        self.lock = threading.RLock()
        self.mem = _Memory()
        self._load_memory()
        self._ensure_desired()

    # --- start-up ------------------------------------------------------------------------------

    def _load_memory(self) -> None:
        data = self.store.load_rule_pending()
        self.mem.pending = {_pair(k): float(v) for k, v in data.get("pending", {}).items()}
        self.mem.alerted = {_pair(k): float(v) for k, v in data.get("alerted", {}).items()}
        self.mem.firing_keys = frozenset(_pair(k) for k in data.get("firing", []))
        for action in self.store.pending_actions():
            # The desired state was written with the intent, so reconciling finishes the action;
            # verification restarts with a fresh deadline.
            self._audit(
                "resume",
                subject=action.subject,
                action_id=action.id,
                reason=f"agent restarted with {action.kind.value} {action.subject} "
                f"in flight ({action.status.value}); finishing it",
            )

    def _ensure_desired(self) -> None:
        if self.store.desired() is not None:
            return
        now = self.clock.now()
        spec = self.settings.initial_release
        if self.store.release(spec.tag) is None:
            self.store.add_release(spec, now)
        self.store.set_desired(
            DesiredState(release=spec.tag, replicas=self.settings.replicas), now=now
        )
        self._audit(
            "desired",
            subject=SERVICE,
            reason=f"first start: {self.settings.replicas} replica(s) of {spec.tag}",
        )

    # --- the tick ------------------------------------------------------------------------------

    def tick(self) -> TickReport:
        """Observe, evaluate, decide, act, verify and record once.

        An engine that cannot be reached (``BackendError`` from the backend, e.g. dockerd
        restarting) makes a tick that changes nothing and reports why; the next one retries.
        """
        with self.lock:
            try:
                report = self._tick()
            except BackendError as exc:
                return self._engine_unreachable(exc)
            if self.mem.engine_problem:
                log.warning("the engine answers again; ticks resume")
                self.mem.engine_problem = ""
            return report

    def _engine_unreachable(self, exc: BackendError) -> TickReport:
        """A tick that did nothing because the engine failed; said once per outage."""
        now, problem = self.clock.now(), f"engine unreachable: {exc}"
        if not self.mem.engine_problem:
            log.error("%s; retrying every tick", problem)
            self.store.record_event(
                at=now, kind="engine-unreachable", subject=SERVICE, message=problem
            )
        self.mem.engine_problem = problem
        return TickReport(
            at=now,
            firing=(),
            decisions=(),
            steps=(),
            verified=(),
            problems=(problem,),
            next_interval_s=self.settings.interval_s,
        )

    def _tick(self) -> TickReport:
        now = self.clock.now()
        self.mem.tick_count += 1
        rules = self._reload_rules(now)
        for event in self.backend.drain_events():
            self.store.record_event(
                at=event.at,
                kind=event.kind,
                subject=event.replica_id,
                message=event.detail or event.kind,
                data={"exit_code": event.exit_code},
            )
        desired = self._desired()
        in_flight = self.store.pending_actions()
        verifying_rollback = any(a.kind is ActionKind.ROLLBACK for a in in_flight)
        candidate = self._current_release_status(desired) is ReleaseStatus.CANDIDATE
        staged = frozenset(self.rollouts.candidate_slots()) if self.rollouts else frozenset()
        full = self.observer.observe(
            self.backend.list_replicas(),
            now,
            force_canaries=verifying_rollback,
            canary_interval_s=self.settings.bake_canary_interval_s if candidate or staged else None,
            outside_service=staged,
        )
        # A staged rollout's candidate replicas are judged by the rollout, not by the service's
        # rules, bake, decay or drift: those see the service's own replicas only.
        obs = _without(full, staged)
        _mark_candidate_canaries(obs, desired.release if candidate else None)
        self._decay_signals(obs, desired, candidate, now)
        if self.drift is not None:  # the monitor polls on its own job; this reads its signals
            ready = [v.replica for v in obs.views if v.replica.id in obs.ready_slots]
            previous = choose_revert_target(self.store.releases(), desired.release)
            drift = self.drift.tick(
                ready=ready, release=desired.release, previous_good=previous, now=now
            )
            obs.signals.setdefault(SERVICE, {}).update(drift)
        snapshot = Snapshot(
            at=now,
            replicas=tuple(v.replica for v in obs.views),
            signals=obs.signals,
            reasons=obs.reasons,
        )
        ev = evaluate(rules, snapshot, self.mem.pending, firing_before=self.mem.firing_keys)
        self.mem.pending = dict(ev.pending)
        self.mem.firing_keys = ev.firing_keys
        outcomes = self._verify(in_flight, desired, obs, now)
        self._bake(desired, obs, ev.firing, now, candidate)
        decisions = self._decide(rules, ev.firing, ev.resolved, outcomes, desired, now)
        self._resolve_alerts(ev.resolved, now, desired.release)
        balancer_problems = (
            self.rollouts.tick(full, stable=self._desired().release, now=now)
            if self.rollouts
            else []
        )
        steps, problems = self._reconcile(full)
        problems += balancer_problems
        self._record(snapshot, full, ev.firing, desired)
        interval = self._next_interval(full)
        return TickReport(
            at=now,
            firing=tuple(ev.firing),
            decisions=decisions,
            steps=tuple(steps),
            verified=tuple(outcomes),
            problems=tuple(problems) + self.mem.rules_problems,
            next_interval_s=interval,
        )

    def _reload_rules(self, now: float) -> RuleSet:
        result = self.rules.poll()
        if result.reloaded:
            problems = tuple(result.problems)
            if result.ok:
                self.metrics.rules_reloads.labels(result="ok").inc()
                if result.changed:
                    self._audit(
                        "rules-reloaded",
                        subject=SERVICE,
                        reason=f"{len(result.rules.rules)} rules loaded",
                    )
            elif problems != self.mem.rules_problems:
                self.metrics.rules_reloads.labels(result="invalid").inc()
                log.error(
                    "rule files are invalid; keeping the last valid set:\n%s", "\n".join(problems)
                )
                self._audit(
                    "rules-invalid",
                    subject=SERVICE,
                    problems=list(problems),
                    reason="rule files are invalid; the last valid set stays in effect",
                )
            self.mem.rules_problems = () if result.ok else problems
        self.metrics.rules_valid.set(0 if self.mem.rules_problems else 1)
        return result.rules

    def _desired(self) -> DesiredState:
        desired = self.store.desired()
        if desired is None:
            raise StateError("the desired state is missing from the state database")
        return desired

    def _current_release_status(self, desired: DesiredState) -> ReleaseStatus | None:
        record = self.store.release(desired.release)
        return None if record is None else record.status

    # --- verify --------------------------------------------------------------------------------

    def _verify(
        self, in_flight: Sequence[ActionRecord], desired: DesiredState, obs: Observation, now: float
    ) -> list[VerifyOutcome]:
        outcomes = []
        for action in in_flight:
            if action.status is ActionStatus.PENDING:
                continue  # not applied yet: the reconciler runs later in this tick
            verdict = check(
                action=action,
                desired=desired,
                observation=obs,
                service=self.settings.service,
                now=now,
                deadline_s=self.settings.verify_timeout_s,
            )
            if not verdict.done:
                continue
            status = ActionStatus.VERIFIED if verdict.ok else ActionStatus.FAILED
            self.store.finish_action(action.id, status, verdict.reason, now)
            self.metrics.actions.labels(action=action.kind.value, result=status.value).inc()
            if verdict.ok and action.started_at is not None:
                self.metrics.recovery.labels(action=action.kind.value).observe(now - action.at)
            self._audit(
                "verify",
                subject=action.subject,
                rule=action.rule,
                action=action.kind.value,
                action_id=action.id,
                ok=verdict.ok,
                reason=f"{action.kind.value} {action.subject}: {verdict.reason}",
            )
            self.store.record_event(
                at=now,
                kind="verified" if verdict.ok else "verify-failed",
                subject=action.subject,
                message=f"{action.kind.value}: {verdict.reason}",
            )
            if action.rule == MANUAL:
                continue  # an operator's action climbs no ladder
            outcomes.append(
                VerifyOutcome(
                    action_id=action.id,
                    rule=action.rule,
                    subject=action.subject,
                    kind=action.kind,
                    ok=verdict.ok,
                    reason=verdict.reason,
                )
            )
        return outcomes

    # --- releases: bake and promote -----------------------------------------------------------

    def _bake(
        self,
        desired: DesiredState,
        obs: Observation,
        firing: Sequence[Firing],
        now: float,
        candidate: bool,
    ) -> None:
        checked = [v for v in obs.views if v.canary is not None]
        passing = (
            bool(checked)
            and len(checked) == desired.replicas
            and all(
                v.canary is not None
                and v.canary.failures == 0
                and v.replica.release == desired.release
                for v in checked
            )
        )
        if not passing:
            self.mem.canaries_passing_since = None
        elif self.mem.canaries_passing_since is None:
            self.mem.canaries_passing_since = now
        if firing:
            self.mem.quiet_since = None
        elif self.mem.quiet_since is None:
            self.mem.quiet_since = now
        record = self.store.release(desired.release)
        if not candidate or record is None:
            return
        status = bake_status(
            release=record,
            now=now,
            bake_s=self.settings.bake_s,
            canaries_passing_since=self.mem.canaries_passing_since,
            any_rule_firing=bool(firing),
            rules_quiet_since=self.mem.quiet_since,
        )
        if status.promote:
            self.store.mark_good(record.tag, now, status.reason)
            if self.decay is not None:  # the baseline later releases are compared with
                self.decay.capture(record.tag, now)
            if self.drift is not None:  # the drift reference: this release's bake traffic
                self.drift.promoted(record.tag, now)
            self._audit("promote", subject=SERVICE, release=record.tag, reason=status.reason)
            self.store.record_event(
                at=now, kind="promoted", subject=record.tag, message=status.reason
            )

    def _decay_signals(
        self, obs: Observation, desired: DesiredState, candidate: bool, now: float
    ) -> None:
        """Add the accuracy decay signals (``agent.decay_monitor``) to the service's."""
        if self.decay is None:
            return
        record = self.store.release(desired.release)
        last_good = self.store.last_good()
        report = self.decay.update(
            obs,
            release=desired.release,
            candidate=candidate,
            good=record is not None and record.status is ReleaseStatus.GOOD,
            last_good=last_good.tag if last_good is not None else None,
            now=now,
        )
        obs.signals.setdefault(SERVICE, {}).update(report.signals)
        if report.changed and report.verdict is not None:
            kind = "decay" if report.verdict.detected else "decay-resolved"
            self.store.record_event(
                at=now, kind=kind, subject=desired.release, message=report.verdict.reason
            )

    # --- decide and act ------------------------------------------------------------------------

    def _decide(
        self,
        rules: RuleSet,
        firing: Sequence[Firing],
        resolved: Sequence[tuple[str, str]],
        outcomes: Sequence[VerifyOutcome],
        desired: DesiredState,
        now: float,
    ) -> tuple[Decision, ...]:
        policy = replace(
            self.settings.policy, cooldowns={r.name: r.cooldown_s for r in rules.rules}
        )
        stopped = frozenset(
            r.id for r in self.backend.list_replicas() if r.state.value == "stopped"
        )
        context = Context(
            now=now,
            replicas=desired.replicas,
            current_release=desired.release,
            revert_target=choose_revert_target(self.store.releases(), desired.release),
            maintenance=desired.maintenance,
            frozen=desired.frozen,
            action_in_flight=bool(self.store.pending_actions()),
            candidate=self._current_release_status(desired) is ReleaseStatus.CANDIDATE,
            stopped=stopped,
        )
        before = self.store.load_policy_state()
        decisions, state = decide(
            firing=firing,
            state=before,
            config=policy,
            context=context,
            resolved=resolved,
            outcomes=outcomes,
        )
        if state != before:  # an fsync'd write per idle tick would be most of the agent's cost
            self.store.save_policy_state(state)
        for index, decision in enumerate(decisions):
            action_id = self._act(decision, now)
            record = decision_record(
                decision, record_id=f"{now}:{self.mem.tick_count}:{index}", action_id=action_id
            )
            self.audit.write(record)
            self.metrics.decisions.labels(
                action=decision.action.value if decision.action else "held"
            ).inc()
            log.info("decision: %s", decision.reason)
        return decisions

    def _act(self, d: Decision, now: float) -> str:
        """Apply one decision to the desired state (and the outbox). Returns the action id."""
        if d.action is None or (d.dry_run and d.action is not ActionKind.ALERT):
            return ""
        if d.action is ActionKind.ALERT:
            summary = d.reason.removeprefix("alert: ")  # the decision's verb is not news
            self._alert(d.rule, d.subject, summary, now, severity=self._severity(d.rule))
            return ""
        desired = self._desired()
        if d.action is ActionKind.FREEZE:
            self.store.set_desired(replace(desired, frozen=True), now=now)
            self._alert("warden-frozen", d.subject, d.reason, now, severity="critical")
            self.store.record_event(at=now, kind="frozen", subject=d.subject, message=d.reason)
            return ""
        new, target = self._desired_after(d, desired, now)
        if new is None:
            return ""
        action, _ = self.store.begin_action_with_desired(
            rule=d.rule,
            subject=d.subject,
            kind=d.action,
            target=target,
            reason=d.reason,
            desired=new,
            now=now,
        )
        self.store.record_event(at=now, kind=d.action.value, subject=d.subject, message=d.reason)
        return action.id

    def _desired_after(
        self, d: Decision, desired: DesiredState, now: float
    ) -> tuple[DesiredState | None, str]:
        if d.action is ActionKind.RESTART:
            slots = (
                [d.subject]
                if d.subject != SERVICE
                else [slot_name(self.settings.service, i) for i in range(1, desired.replicas + 1)]
            )
            gens = dict(desired.generations)
            for slot in slots:
                gens[slot] = gens.get(slot, 0) + 1
            return replace(desired, generations=gens), ",".join(slots)
        if d.action is ActionKind.SCALE:
            n = desired.replicas + 1
            return replace(desired, replicas=n), str(n)
        target = d.target_release or choose_revert_target(self.store.releases(), desired.release)
        if target is None:
            return None, ""
        self.store.mark_bad(desired.release, now, f"reverted to {target}: {d.reason}")
        return replace(desired, release=target), target

    def _severity(self, rule: str) -> str:
        found = self.rules.rules.get(rule)
        return found.severity if found is not None else "warning"

    # --- alerts --------------------------------------------------------------------------------

    def _alert(
        self,
        name: str,
        subject: str,
        summary: str,
        now: float,
        *,
        severity: str,
        status: str = "firing",
        starts_at: float | None = None,
    ) -> None:
        start = starts_at if starts_at is not None else now
        alert = alerting.Alert(
            name=name,
            subject=subject,
            severity=severity,
            status=status,
            summary=summary,
            starts_at=start,
            ends_at=now if status == "resolved" else None,
            service=self.settings.service,
            release=self._desired().release,
        )
        alerting.enqueue(self.store, self.receivers, alert, now)
        if status == "firing":
            self.mem.alerted[(name, subject)] = start

    def _resolve_alerts(
        self, resolved: Sequence[tuple[str, str]], now: float, release: str
    ) -> None:
        for pair in resolved:
            started = self.mem.alerted.pop(pair, None)
            if started is not None:
                self._alert(
                    pair[0],
                    pair[1],
                    f"{pair[0]} on {pair[1]} resolved",
                    now,
                    severity=self._severity(pair[0]),
                    status="resolved",
                    starts_at=started,
                )

    # --- reconcile -----------------------------------------------------------------------------

    def _reconcile(self, obs: Observation) -> tuple[list[str], list[str]]:
        desired = self._desired()
        record = self.store.release(desired.release)
        if record is None:
            return [], [f"desired release {desired.release} is unknown"]
        target = Desired(
            release=record.spec,
            replicas=desired.replicas,
            generations=desired.generations,
            extra=self.rollouts.extra_slots() if self.rollouts else {},
        )
        replicas = self.backend.list_replicas()
        steps = plan(
            service=self.settings.service, desired=target, replicas=replicas, ready=obs.ready_slots
        )
        failures = apply(self.backend, target, steps) if steps else []
        now = self.clock.now()
        for action in self.store.pending_actions():
            if action.status is ActionStatus.PENDING and not failures:
                self.store.mark_action_applied(action.id, now)
        return [f"{s.kind} {s.slot}: {s.reason}" for s in steps], failures

    # --- record --------------------------------------------------------------------------------

    def _record(
        self,
        snapshot: Snapshot,
        obs: Observation,
        firing: Sequence[Firing],
        desired: DesiredState,
    ) -> None:
        self.mem.last_observation = obs
        self.mem.last_firing = tuple(firing)
        rule_state = {
            "pending": {_key(k): v for k, v in self.mem.pending.items()},
            "alerted": {_key(k): v for k, v in self.mem.alerted.items()},
            # _load_memory reads this back: without it a restarted agent never resolves
            # what was firing (no resolved alert, the ladder never resets)
            "firing": sorted(_key(k) for k in self.mem.firing_keys),
        }
        if rule_state != self.mem.saved_rule_state:  # written only when it changed
            self.store.save_rule_pending(rule_state)
            self.mem.saved_rule_state = rule_state
        self.metrics.set_signals(obs.signals)
        self.metrics.set_firing((f.rule, f.subject, f.severity) for f in firing)
        self.metrics.set_replica_states(v.replica.state.value for v in obs.views)
        for v in obs.views:
            if v.canary is not None:
                self.metrics.canary_pass_ratio.labels(replica=v.replica.id).set(v.canary.accuracy)
        current = self.store.release(desired.release)
        last_good = self.store.last_good()
        self.metrics.set_releases(
            desired.release,
            current.status.value if current else "unknown",
            last_good.tag if last_good else None,
        )
        self.metrics.frozen.set(int(desired.frozen))
        self.metrics.maintenance.set(int(desired.maintenance))
        self.metrics.alerts_pending.set(self.store.unsent_alerts())
        if self.trace is not None:
            self.trace.record(snapshot)

    def _next_interval(self, obs: Observation) -> float:
        troubled = bool(obs.reasons) or bool(self.store.pending_actions())
        return self.settings.fast_interval_s if troubled else self.settings.interval_s

    # --- operator requests (API) ---------------------------------------------------------------

    def deploy(self, spec: ReleaseSpec, *, force: bool = False) -> dict[str, Any]:
        """Start ``spec`` as the candidate release. A release marked bad needs ``force``."""
        with self.lock:
            now = self.clock.now()
            self._check_deployable(spec, force)
            if self.rollouts is not None and self.rollouts.current() is not None:
                raise WardenError(
                    "a staged rollout is in progress; `warden deploy --abort` or --promote it first"
                )
            existing = self.store.release(spec.tag)
            if existing is None:
                self.store.add_release(spec, now)
            desired = self._desired()
            self.store.set_desired(replace(desired, release=spec.tag), now=now)
            reason = f"deploy {spec.tag} as candidate (was {desired.release})"
            self._audit("deploy", subject=SERVICE, release=spec.tag, reason=reason)
            self.store.record_event(at=now, kind="deploy", subject=spec.tag, message=reason)
            return {"release": spec.tag, "status": "candidate", "previous": desired.release}

    def staged_deploy(
        self,
        spec: ReleaseSpec,
        *,
        steps: Sequence[int] | None = None,
        step_duration_s: float | None = None,
        load_test: bool = False,
        replicas: int = 1,
        force: bool = False,
        by: str = "",
        note: str = "",
    ) -> dict[str, Any]:
        """Start a staged rollout of ``spec`` (``agent.rollout.controller``)."""
        with self.lock:
            if self.rollouts is None:
                raise WardenError("staged rollouts are not available with this backend")
            now = self.clock.now()
            self._check_deployable(spec, force)
            desired = self._desired()
            rollout = self.rollouts.start(
                candidate=spec.tag,
                stable=desired.release,
                replicas=replicas,
                steps=steps,
                step_duration_s=step_duration_s,
                load_test=load_test,
                by=by,
                note=note,
                now=now,
            )
            if self.store.release(spec.tag) is None:
                self.store.add_release(spec, now)
            self._audit("deploy", subject=SERVICE, release=spec.tag, by=by, reason=rollout.status)
            return {
                "release": spec.tag,
                "status": "candidate",
                "previous": desired.release,
                "rollout": rollout.to_json(),
            }

    def rollout_command(self, command: str, *, by: str = "") -> dict[str, Any]:
        """``pause``, ``resume``, ``abort`` or ``promote`` the staged rollout in progress."""
        with self.lock:
            if self.rollouts is None:
                raise WardenError("staged rollouts are not available with this backend")
            now = self.clock.now()
            who = f" ({by})" if by else ""
            if command in ("pause", "resume"):
                rollout = self.rollouts.pause(now, on=command == "pause")
            elif command == "abort":
                rollout = self.rollouts.abort(now, f"aborted by an operator{who}")
            elif command == "promote":
                rollout = self.rollouts.promote(now, f"promoted by an operator{who}")
            else:
                raise WardenError(f"unknown rollout command {command!r}")
            self._audit("rollout-" + command, subject=rollout.candidate, by=by,
                        reason=rollout.status)  # fmt: skip
            obs = self.mem.last_observation
            if obs is not None and command in ("abort", "promote"):  # weights now, not next tick
                self.rollouts.tick(obs, stable=self._desired().release, now=now)
            return rollout.to_json()

    def rollout_hooks(
        self,
        canary_texts: Callable[[], Sequence[str]],
        describe: Callable[[str], str] = lambda _url: "",
    ) -> Hooks:
        """What ``Rollouts`` needs from the agent (called at composition)."""

        def event(kind: str, subject: str, message: str) -> None:
            now = self.clock.now()
            self.store.record_event(at=now, kind=kind, subject=subject, message=message)
            self._audit(kind, subject=subject, reason=message)
            log.info("rollout: %s", message)

        def alert(rule: str, subject: str, summary: str) -> None:
            self._alert(rule, subject, summary, self.clock.now(), severity="critical")

        def mark_bad(tag: str, reason: str) -> None:
            self.store.mark_bad(tag, self.clock.now(), reason)

        def promote(tag: str, reason: str) -> None:
            now = self.clock.now()
            self.store.mark_good(tag, now, reason)
            self.store.set_desired(replace(self._desired(), release=tag), now=now)
            if self.decay is not None:
                self.decay.capture(tag, now)
            if self.drift is not None:
                self.drift.promoted(tag, now)

        def spec(tag: str) -> ReleaseSpec | None:
            record = self.store.release(tag)
            return None if record is None else record.spec

        return Hooks(
            event=event,
            alert=alert,
            mark_bad=mark_bad,
            promote=promote,
            spec=spec,
            canary_texts=canary_texts,
            describe=describe,
        )

    def rollback(self, to: str | None = None) -> dict[str, Any]:
        """Revert to ``to`` or to the newest good release that is not the current one."""
        with self.lock:
            now = self.clock.now()
            staged = self.rollouts.current() if self.rollouts is not None else None
            if staged is not None and staged.stage not in ("promoting", "retiring", "aborting"):
                raise WardenError(
                    f"a staged rollout of {staged.candidate} is in progress ({staged.stage}); "
                    "`warden deploy --abort` sends its traffic back to "
                    f"{staged.stable} and marks it bad"
                )
            desired = self._desired()
            target = to or choose_revert_target(self.store.releases(), desired.release)
            if target is None:
                raise WardenError("no good release to roll back to; `warden releases` lists them")
            if self.store.release(target) is None:
                raise WardenError(f"release {target} is unknown; `warden releases` lists them")
            if target == desired.release:
                raise WardenError(f"{target} is already the current release")
            reason = f"rollback {desired.release} -> {target} requested by an operator"
            self.store.mark_bad(desired.release, now, reason)
            action, _ = self.store.begin_action_with_desired(
                rule=MANUAL,
                subject=SERVICE,
                kind=ActionKind.ROLLBACK,
                target=target,
                reason=reason,
                desired=replace(desired, release=target),
                now=now,
            )
            self._audit("rollback", subject=SERVICE, action_id=action.id, reason=reason)
            self.store.record_event(at=now, kind="rollback", subject=SERVICE, message=reason)
            return {"release": target, "previous": desired.release, "action_id": action.id}

    def _check_deployable(self, spec: ReleaseSpec, force: bool) -> None:
        existing = self.store.release(spec.tag)
        if existing is not None and existing.status is ReleaseStatus.BAD and not force:
            raise WardenError(
                f"release {spec.tag} was marked bad ({existing.reason}); "
                "deploy it again with --force if you mean it"
            )

    def set_flags(
        self, *, maintenance: bool | None = None, frozen: bool | None = None
    ) -> dict[str, Any]:
        """Turn maintenance mode or the freeze on or off."""
        with self.lock:
            now = self.clock.now()
            desired = self._desired()
            new = replace(
                desired,
                maintenance=desired.maintenance if maintenance is None else maintenance,
                frozen=desired.frozen if frozen is None else frozen,
            )
            self.store.set_desired(new, now=now)
            reason = (
                f"maintenance {'on' if new.maintenance else 'off'}, "
                f"frozen {'yes' if new.frozen else 'no'} (operator)"
            )
            self._audit("flags", subject=SERVICE, reason=reason)
            self.store.record_event(at=now, kind="flags", subject=SERVICE, message=reason)
            return {"maintenance": new.maintenance, "frozen": new.frozen}

    # --- helpers -------------------------------------------------------------------------------

    def _audit(self, kind: str, *, subject: str, reason: str, **extra: Any) -> None:
        self.audit.write(
            {"ts": self.clock.now(), "kind": kind, "subject": subject, "reason": reason, **extra}
        )


def _without(obs: Observation, slots: frozenset[str]) -> Observation:
    """``obs`` without the replicas in ``slots`` (their signals and reasons too)."""
    if not slots:
        return obs
    return Observation(
        at=obs.at,
        views=tuple(v for v in obs.views if v.replica.id not in slots),
        signals={k: v for k, v in obs.signals.items() if k not in slots},
        reasons={k: v for k, v in obs.reasons.items() if k not in slots},
    )


def _mark_candidate_canaries(obs: Observation, release: str | None) -> None:
    """``candidate_canary_failures``: a replica's canary failures while it serves ``release``, the
    release that still bakes (None: none does), else 0.

    A rule on it can revert a new release within seconds of its first wrong golden-set answer
    without making ``canary-failing`` on a proven release just as hasty. It is 0, not absent, once
    the release was promoted or reverted: an absent signal keeps a rule's state as it was, and
    the rule (and its ladder) must resolve, or the next bad release would be escalated instead of
    reverted.
    """
    for view in obs.views:
        signals = obs.signals.get(view.replica.id)
        if signals and "canary_failures" in signals:
            serving = release is not None and view.replica.release == release
            signals["candidate_canary_failures"] = signals["canary_failures"] if serving else 0.0


def _key(pair: tuple[str, str]) -> str:
    return f"{pair[0]}\t{pair[1]}"


def _pair(key: str) -> tuple[str, str]:
    rule, _, subject = key.partition("\t")
    return rule, subject


StatusProvider = Callable[[], dict[str, Any]]
