"""Staged rollout: candidate replicas beside the stable ones, traffic shifted step by step.

Stages (``Rollout.stage``)::

    starting -> canary -> [load-test] -> traffic (step 0..n-1) -> promoting -> retiring -> done
        any breach, failed canary, candidate that dies, or `warden deploy --abort`:
                                         -> aborting (weight 0, drain) -> aborted

- starting: the candidate's replicas (slots ``<service>-canary-N``) start with weight 0.
- canary: the golden set must pass on every candidate replica, on a run started after it became
  ready; a candidate with failing canaries never receives user traffic.
- load-test (``--load-test``): a bounded load against one candidate replica alone, then one stable
  replica under the same load; p95 ratio and error rate are compared with the same limits.
- traffic: step i sends ``steps[i]`` % of requests to the candidate for ``step_duration``. Each
  tick compares the candidate with stable on the traffic both answered since the step started
  (``analysis.compare``) and re-checks the candidate's canaries. A step advances only once its
  duration has passed *and* both sides answered enough requests to compare.
- promoting: the candidate is marked good and becomes the service's release; the numbered slots
  roll to it one at a time while the candidate replicas keep serving.
- retiring: the candidate's own replicas get weight 0 and stop once HAProxy shows them idle.
- aborting: candidate weight 0 at once (stable raised first), candidate marked bad, an alert with
  the reason; its replicas stop once HAProxy shows no open connection to them (or after
  ``drain_timeout``).

The rollout is persisted on every change (and the step clock every tick). An agent restarted
mid-step *resumes*: HAProxy kept serving with the weights it had (it is its own daemon); the new
agent adopts it and pushes the same weights from the stored state on its first tick; the step's
clock goes on from its stored value, but its analysis window starts again (the agent did not
watch while it was down), so the step passes only once both sides answered enough requests
after the restart; a load test that was running is run again.

``pause`` holds the weights and stops the step clock; analysis keeps running, so a breach still
aborts a paused rollout.

Split by replicas (Swarm without HAProxy, ``by_replicas``): the canary replicas stay out of user
traffic for good (golden set, load test, canary re-checks); step i adds *traffic* replicas of the
candidate (``<service>-canary-{replicas+1}``...) beside the stable ones, as many as bring the
candidate's share of the serving tasks nearest to ``steps[i]`` (at least one): with 2 stable
replicas a 10 % step is 1 of 3 (33 %), a 50 % step 2 of 4. Clients resolve the service's DNS
name to every serving task, so that is the candidate's share of requests. The 100 % step is the
promotion itself (the stable replicas roll to the candidate). An abort removes the candidate's
replicas in the same tick; Swarm takes a task out of DNS before it stops it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from agent.backends.base import ReleaseSpec
from agent.collectors import MetricsSample, WindowStats, window_stats
from agent.domain import ReplicaState
from agent.errors import BackendError, WardenError
from agent.observe import Observation, ReplicaView
from agent.rollout.analysis import Limits, compare
from agent.rollout.balancer import Balancer, Member, reachable, weights
from agent.rollout.loadtest import LoadResult, run_load

log = logging.getLogger(__name__)

ACTIVE = ("starting", "canary", "load-test", "traffic", "promoting", "retiring", "aborting")
DRAINING = ("retiring", "aborting")  # the candidate slots get weight 0 and stop once idle
FINISHED = ("done", "aborted")


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutSettings:
    steps: tuple[int, ...] = (10, 50, 100)
    step_duration_s: float = 120.0
    start_timeout_s: float = 300.0  # candidate replicas must be ready within this
    drain_timeout_s: float = 10.0
    load_test_requests: int = 200
    load_test_concurrency: int = 4
    max_replicas: int = 16  # split by replicas: traffic replicas of a candidate at most
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    """One staged rollout as persisted (``StateStore`` kv ``rollout``)."""

    candidate: str
    stable: str
    steps: tuple[int, ...]
    step_duration_s: float
    load_test: bool
    replicas: int
    stage: str
    started_at: float
    stage_since: float
    step: int = -1  # index into steps; -1 before any traffic
    step_clock_s: float = 0.0  # seconds of the current step watched, pauses excluded
    paused: bool = False
    furthest: int = 0  # the highest share (percent) the candidate reached
    by: str = ""
    note: str = ""
    status: str = ""  # one sentence: what it is doing or why it stopped
    finished_at: float | None = None
    analysis: str = ""  # the latest comparison
    load: Mapping[str, Any] = field(default_factory=dict)
    # stable's traffic in the last step where it had enough: what the candidate is compared with
    # once it takes (nearly) all traffic and stable answers too little to compare
    reference: Mapping[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""  # what the candidate's replica reports in /version
    # split by replicas: candidate replicas in user traffic, beside how many stable ones
    traffic_replicas: int = 0
    stable_replicas: int = 0
    serving_at: float | None = None  # when this step's traffic replicas all served (by replicas)

    @property
    def share(self) -> int:
        """The candidate's traffic share (percent) the stage calls for."""
        if self.stage == "traffic" and 0 <= self.step < len(self.steps):
            return self.steps[self.step]
        if self.stage == "promoting":
            return 100
        return 0

    @property
    def served_share(self) -> int:
        """The share users get: the step's, or split by replicas the candidate's share of the
        serving tasks (a 10 % step with 2 stable replicas is 1 of 3: 33 %)."""
        if self.stage == "traffic" and self.traffic_replicas:
            if self.serving_at is None:  # its replicas still load: not in DNS yet
                return 0
            return round(
                100 * self.traffic_replicas / (self.traffic_replicas + self.stable_replicas)
            )
        return self.share

    def document(self) -> dict[str, Any]:
        """What the API and the status page show: the stored fields and the served share."""
        return {**self.to_json(), "share": self.served_share}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
        data["load"] = dict(self.load)
        data["reference"] = dict(self.reference)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rollout:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["steps"] = tuple(int(s) for s in known.get("steps", ()))
        return cls(**known)


class RolloutStore:
    """Where rollouts live: the current one and a short history, in the state database."""

    def __init__(self, load: Callable[[str], dict[str, Any] | None], save: Callable[..., None]):
        self._load, self._save = load, save

    def current(self) -> Rollout | None:
        data = self._load("rollout")
        return None if not data or not data.get("candidate") else Rollout.from_json(data)

    def put(self, rollout: Rollout, *, history_too: bool = True) -> None:
        self._save("rollout", rollout.to_json())
        if not history_too:  # the per-tick clock and analysis line: the current rollout only
            return
        history = self._load("rollout_history") or {}
        history[rollout.candidate] = rollout.to_json()
        self._save("rollout_history", history)

    def history(self) -> dict[str, Rollout]:
        data = self._load("rollout_history") or {}
        out = {tag: Rollout.from_json(doc) for tag, doc in data.items()}
        current = self.current()
        if current is not None:  # fresher than its history entry between transitions
            out[current.candidate] = current
        return out


@dataclass(slots=True)
class Hooks:
    """What the controller asks of the agent (events, alerts, release marks, the service's
    release). Kept narrow so the controller is testable with plain functions."""

    event: Callable[[str, str, str], None]  # kind, subject, message
    alert: Callable[[str, str, str], None]  # rule, subject, summary
    mark_bad: Callable[[str, str], None]  # tag, reason
    promote: Callable[[str, str], None]  # tag, reason: mark good and make it the release
    spec: Callable[[str], ReleaseSpec | None]
    canary_texts: Callable[[], Sequence[str]]
    describe: Callable[[str], str] = lambda _url: ""  # replica URL -> its weights' sha256


class Rollouts:
    """Runs at most one staged rollout; ``tick`` is called by the agent under its lock."""

    def __init__(
        self,
        *,
        service: str,
        store: RolloutStore,
        balancer: Balancer | None,
        settings: RolloutSettings,
        hooks: Hooks,
        by_replicas: bool = False,
    ) -> None:
        self.service = service
        self.store = store
        self.balancer = balancer
        self.by_replicas = by_replicas and balancer is None  # Swarm: shares by task counts
        self.settings = settings
        self.hooks = hooks
        self._baselines: dict[str, tuple[tuple[int | None, float | None], MetricsSample]] = {}
        self._window_from: float | None = None  # when the current baselines were taken
        self._clock_at: float | None = None  # the last tick that advanced the step clock
        self._load: Future[tuple[LoadResult, LoadResult]] | None = None
        self._load_cancel = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warden-loadtest")
        self._lock = threading.RLock()
        self.problem = ""  # the balancer's last failure, "" when fine
        self._first_tick: float | None = None  # this agent's first tick (timeouts after restart)

    # --- queries --------------------------------------------------------------------------------

    @property
    def can_stage(self) -> bool:
        """Whether a staged rollout can run here (HAProxy, or Swarm's split by replicas)."""
        return self.balancer is not None or self.by_replicas

    def current(self) -> Rollout | None:
        rollout = self.store.current()
        return rollout if rollout is not None and rollout.stage in ACTIVE else None

    def traffic_slots(self, rollout: Rollout) -> list[str]:
        """The candidate's slots that serve users: all of them with HAProxy; split by replicas,
        those after the canary replicas."""
        slots = self.candidate_slots(rollout)
        return slots[rollout.replicas :] if self.by_replicas else slots

    def candidate_slots(self, rollout: Rollout | None = None) -> list[str]:
        """Every replica slot of the candidate: canary replicas, then traffic replicas."""
        rollout = rollout or self.current()
        if rollout is None:
            return []
        count = rollout.replicas + (rollout.traffic_replicas if self.by_replicas else 0)
        return [f"{self.service}-canary-{i}" for i in range(1, count + 1)]

    def extra_slots(self) -> dict[str, ReleaseSpec]:
        """The candidate's slots for the reconciler (none once it is drained or finished).

        Split by replicas: the canary replicas never join user traffic, and the traffic
        replicas exist only while traffic steps or the promotion need them (an abort or the
        end of a promotion removes them in the tick that decides it)."""
        rollout = self.current()
        if rollout is None:
            return {}
        spec = self.hooks.spec(rollout.candidate)
        if spec is None:
            return {}
        slots = self.candidate_slots(rollout)
        if not self.by_replicas:
            return dict.fromkeys(slots, spec)
        out = dict.fromkeys(slots[: rollout.replicas], replace(spec, user_traffic=False))
        if rollout.stage in ("traffic", "promoting"):
            out.update(dict.fromkeys(self.traffic_slots(rollout), spec))
        return out

    # --- operator requests ------------------------------------------------------------------------

    def start(
        self,
        *,
        candidate: str,
        stable: str,
        replicas: int,
        steps: Sequence[int] | None,
        step_duration_s: float | None,
        load_test: bool,
        by: str,
        note: str,
        now: float,
    ) -> Rollout:
        if not self.can_stage:
            raise WardenError(
                "a staged rollout needs HAProxy in front of the replicas: install haproxy "
                "(Debian: apt-get install haproxy) and set balancer.kind: haproxy (warden up "
                "starts it by itself when it is installed); on Swarm, balancer.kind: replicas "
                "splits traffic by replica counts instead"
            )
        if self.current() is not None:
            active = self.current()
            assert active is not None
            raise WardenError(
                f"rollout of {active.candidate} is in progress ({active.stage}); "
                "`warden deploy --abort` or `--promote` it first"
            )
        if candidate == stable:
            raise WardenError(f"{candidate} is already the current release")
        steps = tuple(steps or self.settings.steps)
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(steps):
            raise WardenError(f"--steps must rise from above 0 to 100, e.g. 10,50,100; got {steps}")
        if steps[-1] != 100:
            steps = (*steps, 100)
        if self.by_replicas and len(steps) < 2:
            raise WardenError(
                "split by replicas, a rollout needs a step below 100 (e.g. --steps 10,100): "
                "100 % is the promotion, which rolls the stable replicas only once candidate "
                "replicas serve beside them"
            )
        rollout = Rollout(
            candidate=candidate,
            stable=stable,
            steps=steps,
            step_duration_s=step_duration_s or self.settings.step_duration_s,
            load_test=load_test,
            replicas=replicas,
            stage="starting",
            started_at=now,
            stage_since=now,
            by=by,
            note=note,
            status=f"starting {replicas} candidate replica(s) with no traffic",
        )
        self._reset_window()
        self.store.put(rollout)
        steps_text = ",".join(str(s) for s in steps)
        self.hooks.event(
            "rollout",
            candidate,
            f"staged rollout of {candidate} over {stable}: steps "
            f"{steps_text} %, {rollout.step_duration_s:g} s each"
            + (", load test first" if load_test else ""),
        )
        return rollout

    def pause(self, now: float, *, on: bool) -> Rollout:
        rollout = self._require()
        if rollout.paused == on:
            return rollout
        rollout = replace(
            rollout,
            paused=on,
            status=("paused by an operator: weights held, step clock stopped; analysis still "
                    "aborts on a breach") if on else "resumed by an operator",
        )  # fmt: skip
        self._clock_at = None
        self.store.put(rollout)
        self.hooks.event("rollout", rollout.candidate, rollout.status)
        return rollout

    def abort(self, now: float, reason: str) -> Rollout:
        rollout = self._require()
        if rollout.stage in ("promoting", "retiring", "aborting"):
            raise WardenError(
                f"{rollout.candidate} is already {rollout.stage}; "
                + ("`warden rollback` reverts a promoted release" if rollout.stage != "aborting"
                   else "it is being drained")
            )  # fmt: skip
        return self._abort(rollout, now, reason, operator=True)

    def promote(self, now: float, reason: str = "promoted by an operator") -> Rollout:
        rollout = self._require()
        if rollout.stage in ("promoting", "retiring", "aborting"):
            raise WardenError(f"the rollout of {rollout.candidate} is already {rollout.stage}")
        if rollout.stage in ("starting", "canary"):
            raise WardenError(
                f"{rollout.candidate} has not passed its canaries yet ({rollout.stage}); "
                "promote it once it serves traffic, or --abort"
            )
        if self.by_replicas and (rollout.stage != "traffic" or rollout.serving_at is None):
            raise WardenError(
                f"{rollout.candidate}'s traffic replicas do not serve yet ({rollout.stage}); "
                "split by replicas, the stable replicas roll only once candidate replicas serve "
                "beside them: promote once they do"
            )
        return self._promote(rollout, now, reason)

    def _require(self) -> Rollout:
        rollout = self.current()
        if rollout is None:
            raise WardenError("no staged rollout is in progress; `warden releases` shows past ones")
        return rollout

    # --- the tick ---------------------------------------------------------------------------------

    def tick(self, obs: Observation, *, stable: str, now: float) -> list[str]:
        """Advance the rollout (if any) and push weights to HAProxy. Returns problems."""
        with self._lock:
            if self._first_tick is None:
                self._first_tick = now
            self._sync(obs)
            rollout = self.current()
            leaving: set[str] = set()
            if rollout is not None:
                rollout = self._advance(rollout, obs, stable, now)
                if rollout.stage in DRAINING + FINISHED:
                    leaving = set(self.candidate_slots(rollout))
                if rollout.stage in FINISHED:
                    rollout = None
            return self._push_weights(obs, rollout, stable, leaving)

    def _advance(self, r: Rollout, obs: Observation, stable: str, now: float) -> Rollout:
        slots = self.candidate_slots(r)
        views = [v for v in (obs.view(s) for s in slots) if v is not None]
        if r.stage == "aborting":
            return self._drain(r, obs, now)
        if r.stage in ("promoting", "retiring") and stable != r.candidate:
            return self._abort(
                r, now, f"the service's release changed to {stable} after promotion", blame=False
            )
        if r.stage == "retiring":
            return self._drain(r, obs, now)
        if r.stage == "promoting":
            return self._finish_promotion(r, obs, now)
        if stable != r.stable:
            return self._abort(
                r, now, f"the service's release changed to {stable} mid-rollout", blame=False
            )
        dead = _dead(views, obs)
        if dead:
            return self._abort(r, now, dead)
        if r.stage == "starting":
            ready = [
                v for v in views
                if v.replica.id in obs.ready_slots and v.replica.release == r.candidate
            ]  # fmt: skip
            if len(ready) == len(slots):
                r = replace(r, weights_sha256=self.hooks.describe(ready[0].replica.url))
                return self._to(r, now, "canary", "candidate ready; running the golden set")
            if now - r.stage_since > self.settings.start_timeout_s:
                return self._abort(
                    r, now, f"candidate not ready within {self.settings.start_timeout_s:g} s"
                )
            return r
        failing = _canary_failures(views, since=r.stage_since if r.stage == "canary" else None)
        if failing:
            return self._abort(r, now, failing)
        if r.stage == "canary":
            return self._canary(r, obs, views, len(slots), now)
        if r.stage == "load-test":
            return self._check_load_test(r, obs, now)
        return self._traffic(r, obs, now)

    def _canary(
        self, r: Rollout, obs: Observation, views: Sequence[ReplicaView], slots: int, now: float
    ) -> Rollout:
        """Every candidate replica passed a golden-set run started after it became ready."""
        passed = len(views) == slots and all(
            v.canary is not None and v.canary_at is not None and v.canary_at >= r.stage_since
            for v in views
        )
        if not passed or r.paused:
            return r
        if r.load_test:
            return self._start_load_test(r, obs, now)
        return self._step(r, 0, now, "canaries pass", obs)

    def _traffic(self, r: Rollout, obs: Observation, now: float) -> Rollout:
        if self.by_replicas and r.serving_at is None:
            loading = [s for s in self.traffic_slots(r) if not _serves(obs, s, r.stage_since)]
            if loading:
                return self._wait_for_traffic_replicas(r, loading, now)
            r = replace(r, serving_at=now)  # the step begins: window and clock from here
            r = replace(
                r,
                status=f"step {r.step + 1}/{len(r.steps)}: {r.traffic_replicas} candidate "
                f"replica(s) serve beside {r.stable_replicas} stable ({r.served_share} % of the "
                f"serving tasks; step {r.steps[r.step]} %)",
            )
            self._reset_window()
            self._clock_at = now
            self.store.put(r, history_too=False)
        candidate, stable = self._windows(r, obs)
        if stable.requests >= self.settings.limits.min_requests and r.share < 100:
            r = replace(r, reference=asdict(stable))
        elif r.reference:
            stable = WindowStats(**r.reference)
        verdict = compare(candidate, stable, self.settings.limits)
        if verdict.breach:
            return self._abort(replace(r, analysis=verdict.summary), now, verdict.breach)
        if not r.paused and self._clock_at is not None:
            r = replace(r, step_clock_s=r.step_clock_s + (now - self._clock_at))
        self._clock_at = None if r.paused else now
        r = replace(r, analysis=verdict.summary)
        if r.paused or r.step_clock_s < r.step_duration_s or not verdict.enough:
            if not verdict.enough and r.step_clock_s >= r.step_duration_s:
                r = replace(r, status=f"step {r.steps[r.step]} %: held, too little traffic to "
                            "compare yet")  # fmt: skip
            self.store.put(r, history_too=False)  # the clock and analysis line: one kv row
            return r
        if r.step + 1 < len(r.steps):
            return self._step(r, r.step + 1, now, f"step {r.steps[r.step]} % healthy", obs)
        return self._promote(r, now, f"healthy at every step ({verdict.summary})")

    def _wait_for_traffic_replicas(self, r: Rollout, loading: list[str], now: float) -> Rollout:
        """Split by replicas: the step begins when its candidate replicas serve (ready, and a
        golden-set run passed on them since the step began). Until then the analysis window and
        the step clock stay at zero: a replica loading its model takes CPU from its neighbours,
        and a fresh process is slow on its first shapes; those minutes say nothing about the
        candidate's steady state."""
        waited_from = max(r.stage_since, self._first_tick or now)  # a restarted agent waits anew
        if now - waited_from > self.settings.start_timeout_s:
            return self._abort(
                r, now, f"candidate replica(s) {', '.join(loading)} not ready within "
                f"{self.settings.start_timeout_s:g} s",
            )  # fmt: skip
        self._reset_window()
        self._clock_at = None
        return r

    # --- transitions ------------------------------------------------------------------------------

    def _to(self, r: Rollout, now: float, stage: str, status: str) -> Rollout:
        r = replace(r, stage=stage, stage_since=now, status=status)
        self.store.put(r)
        self.hooks.event("rollout", r.candidate, status)
        return r

    def _step(self, r: Rollout, index: int, now: float, why: str, obs: Observation) -> Rollout:
        share = r.steps[index]
        how = ""
        if self.by_replicas:
            if share >= 100:  # the promotion rolls the stable replicas: that is the 100 % step
                return self._promote(r, now, why)
            candidates = set(self.candidate_slots(r))
            stable = sum(
                1 for v in obs.views
                if v.replica.release == r.stable
                and v.replica.id not in candidates
                and v.replica.state not in _OUT
            )  # fmt: skip
            count = max(r.traffic_replicas, replicas_for(share, stable, self.settings.max_replicas))
            r = replace(r, traffic_replicas=count, stable_replicas=stable, serving_at=None)
            how = (
                f" ({count} candidate replica(s) beside {stable} stable: "
                f"{100 * count / (count + stable):.0f} % of the serving tasks; the step "
                "begins when they serve)"
            )
        r = replace(
            r,
            stage="traffic",
            step=index,
            step_clock_s=0.0,
            stage_since=now,
            furthest=max(r.furthest, share),
            status=f"{why}; step {index + 1}/{len(r.steps)}: {share} % of traffic to "
            f"{r.candidate} for {r.step_duration_s:g} s{how}",
        )
        self._reset_window()
        self._clock_at = now
        self.store.put(r)
        self.hooks.event("rollout", r.candidate, r.status)
        return r

    def _promote(self, r: Rollout, now: float, reason: str) -> Rollout:
        r = replace(
            r,
            stage="promoting",
            stage_since=now,
            furthest=100,
            status=f"promoted: {reason}; rolling the stable replicas to {r.candidate}",
        )
        self.store.put(r)
        self.hooks.promote(r.candidate, reason)
        self.hooks.event("rollout", r.candidate, r.status)
        return r

    def _finish_promotion(self, r: Rollout, obs: Observation, now: float) -> Rollout:
        main = [v for v in obs.views if not v.replica.id.startswith(f"{self.service}-canary-")]
        balanced = self._balanced()
        rolled = bool(main) and all(
            v.replica.release == r.candidate
            and v.replica.id in obs.ready_slots
            # split by replicas: Swarm adds a task to DNS once its /ready check passed, and
            # reports it running from then on
            and balanced.get(v.replica.id, v.replica.state is ReplicaState.RUNNING)
            for v in main
        )
        if not rolled:
            return r
        return self._to(
            r, now, "retiring", f"{r.candidate} serves all traffic from the service's replicas; "
            "draining the candidate replicas",
        )  # fmt: skip

    def _abort(
        self, r: Rollout, now: float, reason: str, *, operator: bool = False, blame: bool = True
    ) -> Rollout:
        """Candidate weight 0 (this tick's push), marked bad unless the cause was not its own
        (``blame=False``: the service's release changed under the rollout), alert."""
        self._cancel_load_test()
        at = f"at {r.steps[r.step]} % of traffic" if r.stage == "traffic" else f"in {r.stage}"
        why = f"aborted {at}: {reason}"
        r = replace(r, stage="aborting", stage_since=now, status=why, paused=False)
        self.store.put(r)
        if blame:
            self.hooks.mark_bad(r.candidate, f"staged rollout {why}")
        self.hooks.event("rollout-aborted", r.candidate, why)
        self.hooks.alert(
            "rollout-aborted",
            r.candidate,
            f"rollout of {r.candidate} {why}" + (" (operator)" if operator else ""),
        )
        return r

    def _drain(self, r: Rollout, obs: Observation, now: float) -> Rollout:
        """Aborting or retiring: the candidate slots have weight 0; they stop (the reconciler no
        longer wants them) once HAProxy shows no open connection to them.

        Split by replicas the traffic replicas are already being stopped (Swarm takes them out
        of DNS first, then lets the server finish its requests): the rollout ends once none
        runs, so "aborted" means no user reaches the candidate any more."""
        if self.by_replicas:
            traffic = set(self.traffic_slots(r))
            serving = [
                v.replica.id for v in obs.views
                if v.replica.id in traffic and v.replica.state not in _OUT
            ]  # fmt: skip
            if serving and now - r.stage_since < self.settings.start_timeout_s:
                return r
        counters = self.balancer.servers_by_slot() if self.balancer is not None else {}
        leaving = self.candidate_slots(r)
        unknown = self.balancer is not None and any(s not in counters for s in leaving)
        busy = unknown or any(counters[s].sessions > 0 for s in leaving if s in counters)
        if busy and now - r.stage_since < self.settings.drain_timeout_s:
            return r
        r = replace(r, stage="aborted" if r.stage == "aborting" else "done", finished_at=now)
        self.store.put(r)
        return r

    # --- load test --------------------------------------------------------------------------------

    def _start_load_test(self, r: Rollout, obs: Observation, now: float) -> Rollout:
        cand = next((v for v in obs.views if v.replica.id in self.candidate_slots(r)), None)
        stab = next(
            (v for v in obs.views
             if v.replica.release == r.stable and v.replica.id in obs.ready_slots),
            None,
        )  # fmt: skip
        if cand is None or stab is None:
            return r
        s = self.settings
        texts = list(self.hooks.canary_texts())

        cancel = self._load_cancel = threading.Event()

        def both() -> tuple[LoadResult, LoadResult]:
            kw = {"requests": s.load_test_requests, "concurrency": s.load_test_concurrency}
            first = run_load(cand.replica.url, texts, cancel=cancel, **kw)
            return first, run_load(stab.replica.url, texts, cancel=cancel, **kw)

        self._load = self._pool.submit(both)
        return self._to(
            r, now, "load-test",
            f"load test: {s.load_test_requests} requests at concurrency "
            f"{s.load_test_concurrency} on the candidate alone, then on stable",
        )  # fmt: skip

    def _check_load_test(self, r: Rollout, obs: Observation, now: float) -> Rollout:
        if self._load is None:  # an agent restarted mid-test: run it again
            return self._start_load_test(r, obs, now)
        if not self._load.done():
            return r
        try:
            cand, stab = self._load.result()
        except Exception as exc:  # noqa: BLE001 (a failed test is a verdict, not a crash)
            self._load = None
            return self._abort(r, now, f"load test could not run: {exc}")
        self._load = None
        r = replace(r, load={"candidate": cand.to_json(), "stable": stab.to_json()})
        limits = self.settings.limits
        if cand.requests == 0 or (
            cand.errors >= 3 and cand.errors / cand.requests > limits.max_error_delta
        ):  # judged on its own too: a stable replica failing as much says nothing for it
            return self._abort(
                r, now, f"load test: candidate failed {cand.errors} of {cand.requests} requests"
            )
        verdict = compare(_as_window(cand), _as_window(stab), limits)
        if verdict.breach:
            return self._abort(r, now, f"load test: {verdict.breach}")
        return self._step(r, 0, now, f"load test passed ({verdict.summary})", obs)

    def _cancel_load_test(self) -> None:
        """Stop a running load test (its requests stop at once; the thread returns)."""
        self._load_cancel.set()
        if self._load is not None:
            self._load.cancel()
            self._load = None

    # --- windows and weights ----------------------------------------------------------------------

    def _reset_window(self) -> None:
        self._baselines.clear()
        self._window_from = None

    def _windows(self, r: Rollout, obs: Observation) -> tuple[WindowStats, WindowStats]:
        """Candidate and stable traffic since the step started (per-replica baselines). Split by
        replicas, the canary replicas answer only the golden set: not user traffic, left out."""
        pairs: dict[str, list[tuple[MetricsSample, MetricsSample]]] = {"c": [], "s": []}
        candidates = set(self.traffic_slots(r))
        for v in obs.views:
            if v.metrics is None:
                continue
            instance = (v.replica.pid, v.replica.started_at)
            base = self._baselines.get(v.replica.id)
            if base is None or base[0] != instance:
                # First sight this step (or a restarted replica): its window starts now.
                self._baselines[v.replica.id] = (instance, v.metrics)
                continue
            side = (
                "c" if v.replica.id in candidates else "s" if v.replica.release == r.stable else ""
            )
            if side:  # users' requests only: the golden set's 8-input batches are not traffic
                pairs[side].append((base[1].users_only(), v.metrics.users_only()))
        return window_stats(pairs["c"]), window_stats(pairs["s"])

    def _members(
        self, obs: Observation, leaving: Collection[str] = (), *, readiness: bool = True
    ) -> list[Member]:
        """The replicas HAProxy may route to; ready only if the agent *and* HAProxy see it up
        (``readiness=False``: no HAProxy read, every member not ready — for mapping only)."""
        balanced = self._balanced() if readiness else {}
        return [
            Member(
                slot=v.replica.id,
                url=v.replica.url,
                release=v.replica.release,
                # HAProxy must see it up too: a share moved to a server its check still has
                # down is a share with nowhere to go ("no server available", 503)
                ready=v.replica.id in obs.ready_slots
                and balanced.get(v.replica.id, False)
                and v.replica.id not in leaving,
            )
            for v in obs.views
            if v.replica.state not in (ReplicaState.STOPPED, ReplicaState.MISSING)
            and reachable(v.replica.url)
        ]

    def _sync(self, obs: Observation) -> None:
        """Map replicas to HAProxy servers before anything reads HAProxy's view of them."""
        if self.balancer is None:
            return
        try:
            self.balancer.sync(self._members(obs, readiness=False))  # sync reads HAProxy itself
        except BackendError as exc:
            log.info("haproxy: %s", exc)

    def _push_weights(
        self, obs: Observation, r: Rollout | None, stable: str, leaving: set[str]
    ) -> list[str]:
        """Shares by release for the stage, split into weights; ``leaving`` slots get 0."""
        if self.balancer is None:
            return []
        members = self._members(obs, leaving)
        shares: dict[str, float] = {stable: 100.0}
        if r is not None and r.stage in ("promoting", "retiring"):
            shares = {r.candidate: 100.0}
        elif r is not None and r.stage == "aborting":
            shares = {stable: 100.0, r.candidate: 0.0}  # the service's release, whatever it is
        elif r is not None:
            share = float(r.share)
            shares = {r.stable: 100.0 - share, r.candidate: share}
        wanted = weights(members, shares)
        wanted.update(dict.fromkeys(leaving & set(wanted), 0))
        try:
            changes = self.balancer.apply(members, wanted)
        except BackendError as exc:
            if str(exc) != self.problem:
                log.error("haproxy: %s", exc)
            self.problem = f"haproxy: {exc}"
            return [self.problem]
        if changes:
            log.info("haproxy: %s", "; ".join(changes))
        self.problem = ""
        return []

    def _balanced(self) -> dict[str, bool]:
        """Per slot HAProxy serves: whether its own health check has it up."""
        if self.balancer is None:
            return {}
        return {
            slot: s.status.startswith("UP") for slot, s in self.balancer.servers_by_slot().items()
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_OUT = (ReplicaState.STOPPED, ReplicaState.MISSING, ReplicaState.EXITED)  # not in DNS


def _serves(obs: Observation, slot: str, since: float) -> bool:
    """In DNS and warm: ready for the agent, ``running`` for Swarm (a task is ``starting`` -- not
    in DNS -- until its health check passed), and a golden-set run on it since ``since``
    (failures are judged elsewhere)."""
    view = obs.view(slot)
    return (
        slot in obs.ready_slots
        and view is not None
        and view.replica.state is ReplicaState.RUNNING
        and view.canary_at is not None
        and view.canary_at >= since
    )


def replicas_for(share: int, stable: int, cap: int = 16) -> int:
    """Candidate replicas beside ``stable`` ones whose share of all of them is nearest to
    ``share`` percent, at most ``cap`` (at least one: a step with no candidate replica would
    test nothing)."""
    if stable <= 0:
        return 1
    top = max(1, min(cap, 4 * stable))
    best = min(range(1, top + 1), key=lambda c: abs(100 * c / (c + stable) - share))
    return int(best)


def _dead(views: Sequence[ReplicaView], obs: Observation) -> str:
    for v in views:
        if v.replica.state is ReplicaState.EXITED:
            return obs.reasons.get(v.replica.id) or f"candidate replica {v.replica.id} exited"
        if v.ready is not None and v.ready.permanent:
            return f"candidate replica {v.replica.id} cannot load its model: {v.ready.reason}"
    return ""


def _canary_failures(views: Sequence[ReplicaView], *, since: float | None) -> str:
    for v in views:
        c = v.canary
        if c is None or (since is not None and (v.canary_at or 0.0) < since):
            continue
        if c.failures:
            wrong = ", ".join(i.name for i in c.items if not i.ok)[:200]
            return f"candidate canaries failed on {v.replica.id}: {c.failures} wrong ({wrong})"
    return ""


def _as_window(result: LoadResult) -> WindowStats:
    return WindowStats(
        requests=result.requests,
        errors=result.errors,
        p50_ms=result.p50_ms,
        p95_ms=result.p95_ms,
    )
