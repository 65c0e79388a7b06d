"""Staged rollout: weights, candidate-vs-stable analysis and the controller's stages.

The controller runs here on synthetic observations with a fake balancer that records every weight
map it is given; the real HAProxy is exercised in ``test_haproxy.py`` and the integration suite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from agent.backends.base import ReleaseSpec
from agent.collectors import Histogram, MetricsSample, WindowStats
from agent.domain import CanaryItemResult, CanaryResult, ProbeResult, Replica, ReplicaState
from agent.errors import WardenError
from agent.observe import Observation, ReplicaView
from agent.rollout.analysis import Limits, compare
from agent.rollout.balancer import Member, weights
from agent.rollout.controller import Hooks, Rollouts, RolloutSettings, RolloutStore
from agent.rollout.haproxy import ServerState

T0 = 1_700_000_000.0
READY = ProbeResult(ok=True, latency_s=0.01, status_code=200)
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, float("inf"))


# --- weights ------------------------------------------------------------------------------------


def member(slot: str, release: str, ready: bool = True) -> Member:
    return Member(
        slot=slot, url=f"http://127.0.0.1:{8000 + len(slot)}", release=release, ready=ready
    )


def test_shares_are_split_over_each_release_s_ready_replicas() -> None:
    members = [member("i-1", "v1"), member("i-2", "v1"), member("c-1", "v2")]
    w = weights(members, {"v1": 90.0, "v2": 10.0})
    share = w["c-1"] / sum(w.values())
    assert w["i-1"] == w["i-2"]
    assert share == pytest.approx(0.10, abs=0.01)


def test_a_replica_not_ready_gets_no_share_and_zero_share_means_zero_weight() -> None:
    members = [member("i-1", "v1"), member("i-2", "v1", ready=False), member("c-1", "v2")]
    w = weights(members, {"v1": 100.0, "v2": 0.0})
    assert w == {"i-1": 256, "i-2": 0, "c-1": 0}


def test_releases_without_a_share_get_zero() -> None:
    members = [member("x-1", "old"), member("i-1", "v1")]
    assert weights(members, {"v1": 100.0}) == {"x-1": 0, "i-1": 256}


def test_a_share_nobody_can_serve_goes_to_whoever_can() -> None:
    # the candidate died at the 100 % step: stable, with weight 0 by the shares, serves again
    members = [member("i-1", "v1"), member("c-1", "v2", ready=False)]
    assert weights(members, {"v1": 0.0, "v2": 100.0}) == {"i-1": 256, "c-1": 0}
    # a rollback to a release with no replica up yet: the old ones keep serving meanwhile
    assert weights([member("x-1", "old")], {"v1": 100.0}) == {"x-1": 256}
    # nobody ready at all: the shared release's replicas get it, HAProxy's check decides
    assert weights([member("i-1", "v1", ready=False)], {"v1": 100.0}) == {"i-1": 256}


# --- analysis -----------------------------------------------------------------------------------


def stats(requests: int, errors: int = 0, p95: float | None = 10.0) -> WindowStats:
    return WindowStats(requests=requests, errors=errors, p50_ms=p95, p95_ms=p95)


def test_a_candidate_three_times_slower_is_a_breach() -> None:
    verdict = compare(stats(60, p95=90.0), stats(400, p95=30.0), Limits())
    assert "3.0x stable's 30 ms" in verdict.breach


def test_a_slower_candidate_within_the_ratio_or_the_floor_is_not() -> None:
    assert compare(stats(60, p95=50.0), stats(400, p95=30.0), Limits()).breach == ""
    # 3x but only 8 ms apart: bucket noise at low latency, not a regression
    assert compare(stats(60, p95=12.0), stats(400, p95=4.0), Limits()).breach == ""


def test_too_few_requests_means_no_latency_verdict_yet() -> None:
    verdict = compare(stats(5, p95=500.0), stats(400, p95=10.0), Limits())
    assert (verdict.breach, verdict.enough) == ("", False)


def test_errors_need_significance_not_one_unlucky_500() -> None:
    assert compare(stats(40, errors=1), stats(400, errors=0), Limits()).breach == ""
    # Fisher alone would call 1 of 5 against 0 of 2000 significant (p=0.0025): too few errors
    assert compare(stats(5, errors=1), stats(2000, errors=0), Limits()).breach == ""
    verdict = compare(stats(40, errors=8), stats(400, errors=1), Limits())
    assert "5xx rate 20.0% vs stable 0.2%" in verdict.breach
    # a candidate failing everything is judged at once, before min_requests
    assert compare(stats(6, errors=6), stats(400), Limits()).breach


# --- the controller -------------------------------------------------------------------------------


class FakeBalancer:
    def __init__(self) -> None:
        self.applied: list[dict[str, int]] = []
        self.sessions: dict[str, int] = {}
        self.down: set[str] = set()  # slots HAProxy's own check has down

    def sync(self, members: Sequence[Member]) -> dict[str, ServerState]:
        return {}

    def apply(self, members: Sequence[Member], wanted: Mapping[str, int]) -> list[str]:
        self.applied.append(dict(wanted))
        return []

    def servers_by_slot(self) -> dict[str, ServerState]:
        slots = set(self.applied[-1]) if self.applied else set()
        return {
            slot: ServerState(
                name=slot,
                address="",
                weight=self.applied[-1][slot],
                status="DOWN" if slot in self.down else "UP",
                sessions=self.sessions.get(slot, 0),
                total=0,
                responses_5xx=0,
            )
            for slot in slots
        }

    def close(self) -> None:
        pass


class Harness:
    """A controller with an in-memory store, recording the hooks it calls."""

    def __init__(self, kv: dict[str, Any] | None = None, **settings: Any) -> None:
        self.kv: dict[str, Any] = {} if kv is None else kv
        self.events: list[tuple[str, str, str]] = []
        self.alerts: list[tuple[str, str, str]] = []
        self.bad: list[str] = []
        self.promoted: list[str] = []
        self.balancer = FakeBalancer()
        self.rollouts = Rollouts(
            service="inference",
            store=RolloutStore(self.kv.get, self.kv.__setitem__),
            balancer=self.balancer,
            settings=RolloutSettings(**{"step_duration_s": 10.0, **settings}),
            hooks=Hooks(
                event=lambda *e: self.events.append(e),
                alert=lambda *a: self.alerts.append(a),
                mark_bad=lambda tag, why: self.bad.append(tag),
                promote=lambda tag, why: self.promoted.append(tag),
                spec=lambda tag: ReleaseSpec(tag=tag),
                canary_texts=lambda: ["hello"],
            ),
        )
        self.requests: dict[str, int] = {}  # cumulative /predict count per slot
        self.slow: set[str] = set()
        self.failing_canaries: set[str] = set()

    def start(self, **kw: Any) -> None:
        args: dict[str, Any] = {
            "candidate": "v2",
            "stable": "v1",
            "replicas": 1,
            "steps": (10, 50, 100),
            "step_duration_s": None,
            "load_test": False,
            "by": "ops",
            "note": "",
            "now": T0,
        }
        self.rollouts.start(**{**args, **kw})

    def obs(
        self, now: float, *, candidate_ready: bool = True, traffic: int = 0, main: str = "v1"
    ) -> Observation:
        views = [self._view("inference-1", main, now, True)]
        if self.rollouts.candidate_slots():
            views.append(self._view("inference-canary-1", "v2", now, candidate_ready))
        # traffic split by the weights last pushed
        last = self.balancer.applied[-1] if self.balancer.applied else {}
        total_w = sum(last.values()) or 1
        for v in views:
            slot = v.replica.id
            self.requests[slot] = (
                self.requests.get(slot, 0) + traffic * last.get(slot, 0) // total_w
            )
        views = [self._with_metrics(v) for v in views]
        return Observation(at=now, views=tuple(views), signals={})

    def _view(self, slot: str, release: str, now: float, ready: bool) -> ReplicaView:
        canary = None
        if ready:
            ok = slot not in self.failing_canaries
            item = CanaryItemResult(
                name="c0", ok=ok, expected="a", got="a" if ok else "b", confidence=0.9,
                latency_s=0.01,
            )  # fmt: skip
            canary = CanaryResult(items=(item,))
        return ReplicaView(
            replica=Replica(
                id=slot,
                url="http://127.0.0.1:9",
                release=release,
                state=ReplicaState.RUNNING,
                pid=100,
                started_at=T0 - 100,
            ),
            health=READY,
            ready=READY if ready else ProbeResult(ok=False, latency_s=0.0, reason="loading"),
            canary=canary,
            canary_at=now if canary else None,
            resources=None,
        )

    def _with_metrics(self, v: ReplicaView) -> ReplicaView:
        n = float(self.requests.get(v.replica.id, 0))
        latency = 0.2 if v.replica.id in self.slow else 0.02  # seconds, all in one bucket
        buckets = tuple((b, n if b >= latency else 0.0) for b in BOUNDS)
        sample = MetricsSample(
            requests={("/predict", "200"): n}, request_duration=Histogram(buckets=buckets)
        )
        return ReplicaView(
            replica=v.replica, health=v.health, ready=v.ready, canary=v.canary,
            canary_at=v.canary_at, resources=None, metrics=sample,
        )  # fmt: skip

    def tick(self, now: float, **kw: Any) -> str:
        self.rollouts.tick(self.obs(now, **kw), stable=self.stable(), now=now)
        current = self.rollouts.store.history()["v2"]
        return current.stage

    def stable(self) -> str:
        return "v2" if self.promoted else "v1"

    def candidate_share(self) -> float:
        last = self.balancer.applied[-1]
        return last.get("inference-canary-1", 0) / (sum(last.values()) or 1)


def test_a_healthy_candidate_goes_through_every_step_and_is_promoted() -> None:
    h = Harness()
    h.start()
    assert h.tick(T0 + 1, candidate_ready=False) == "starting"
    assert h.candidate_share() == 0.0
    assert h.tick(T0 + 2) == "canary"
    assert h.tick(T0 + 3) == "traffic"  # canaries ran after it became ready and passed
    shares = []
    now = T0 + 3
    for _ in range(40):
        now += 1.0
        stage = h.tick(now, traffic=100)
        if stage == "traffic":
            shares.append(round(h.candidate_share(), 2))
        if stage != "traffic":
            break
    assert stage == "promoting"
    assert h.promoted == ["v2"]
    assert sorted(set(shares)) == [0.1, 0.5, 1.0]
    assert h.bad == [] and h.alerts == []


def test_failing_canaries_abort_before_any_traffic() -> None:
    h = Harness()
    h.failing_canaries.add("inference-canary-1")
    h.start()
    h.tick(T0 + 1)
    assert h.tick(T0 + 2) == "aborting"
    assert h.bad == ["v2"]
    assert all(w.get("inference-canary-1", 0) == 0 for w in h.balancer.applied)
    assert "canaries failed" in h.alerts[0][2]


def test_a_slow_candidate_is_stopped_at_the_first_step_and_drained() -> None:
    h = Harness()
    h.start()
    h.tick(T0 + 1)
    h.tick(T0 + 2)
    assert h.tick(T0 + 3) == "traffic"
    h.slow.add("inference-canary-1")
    now, stage = T0 + 3, "traffic"
    while stage == "traffic" and now < T0 + 60:  # bounded
        now += 1.0
        stage = h.tick(now, traffic=400)
    assert stage == "aborting"
    assert h.candidate_share() == 0.0  # weight 0 in the tick that saw the breach
    assert "median" in h.alerts[0][2] and "at 10 %" in h.alerts[0][2]  # 10x: judged early
    h.balancer.sessions = {"inference-canary-1": 2}  # still answering requests: keep it
    assert h.tick(now + 1) == "aborting"
    h.balancer.sessions = {"inference-canary-1": 0}
    assert h.tick(now + 2) == "aborted"
    assert h.rollouts.current() is None and h.rollouts.extra_slots() == {}


def test_pause_holds_the_weights_and_the_step_clock() -> None:
    h = Harness()
    h.start()
    for t in (1, 2, 3):
        h.tick(T0 + t)
    h.rollouts.pause(T0 + 4, on=True)
    for t in range(5, 60):
        assert h.tick(T0 + t, traffic=100) == "traffic"
    assert h.candidate_share() == pytest.approx(0.1, abs=0.01)
    h.rollouts.pause(T0 + 60, on=False)
    stage, now = "traffic", T0 + 60
    while h.candidate_share() < 0.4 and now < T0 + 100:
        now += 1
        stage = h.tick(now, traffic=100)
    assert stage == "traffic" and h.candidate_share() == pytest.approx(0.5, abs=0.01)
    assert now - (T0 + 60) >= 10  # the step's 10 s counted again from the resume


def test_a_restarted_agent_resumes_the_step_with_consistent_weights() -> None:
    h = Harness()
    h.start()
    for t in (1, 2, 3):
        h.tick(T0 + t)
    now = T0 + 3
    while h.candidate_share() < 0.4 and now < T0 + 60:
        now += 1
        h.tick(now, traffic=100)
    # kill -9: a new controller over the same store, a fresh balancer
    again = Harness(kv=h.kv)
    again.requests = dict(h.requests)
    assert again.rollouts.current() is not None
    assert again.tick(now + 1, traffic=100) == "traffic"
    assert again.candidate_share() == pytest.approx(0.5, abs=0.01)


def test_a_second_rollout_is_refused_and_so_is_a_missing_balancer() -> None:
    h = Harness()
    h.start()
    with pytest.raises(WardenError, match="in progress"):
        h.start(candidate="v3")
    bare = Harness()
    bare.rollouts.balancer = None
    with pytest.raises(WardenError, match="needs HAProxy"):
        bare.start()


def test_steps_that_do_not_rise_are_refused_and_100_is_appended() -> None:
    h = Harness()
    with pytest.raises(WardenError, match="must rise"):
        h.start(steps=(50, 10))
    h.start(steps=(25,))
    current = h.rollouts.current()
    assert current is not None and current.steps == (25, 100)


def test_promotion_moves_no_traffic_back_to_stable_and_waits_for_haproxy_to_see_the_new_one() -> (
    None
):
    h = Harness()
    h.start(steps=(100,))
    for t in (1, 2, 3):
        h.tick(T0 + t)
    now = T0 + 3
    for _ in range(30):
        if h.tick(now, traffic=100) != "traffic":
            break
        now += 1
    assert h.promoted == ["v2"]
    assert h.candidate_share() == 1.0  # the promoting tick did not hand traffic back to v1
    h.tick(now + 1, traffic=100)  # inference-1 still runs v1: the candidate keeps everything
    assert h.candidate_share() == 1.0
    h.balancer.down.add("inference-1")  # replaced by v2, ready for the agent, not yet for HAProxy
    assert h.tick(now + 2, main="v2") == "promoting"
    assert h.candidate_share() == 1.0
    h.balancer.down.clear()
    assert h.tick(now + 3, main="v2") == "retiring"
    assert h.candidate_share() == 0.0
    assert h.tick(now + 4, main="v2") == "done"


def test_a_candidate_alone_is_judged_on_its_own_errors() -> None:
    assert compare(stats(60, errors=1), stats(0), Limits()).breach == ""
    assert "no stable traffic" in compare(stats(60, errors=6), stats(0), Limits()).breach
    assert compare(stats(60), stats(0), Limits()).enough


def test_how_far_a_staged_rollout_got_in_words() -> None:
    from agent.web.rollout import staged_how_far

    assert staged_how_far({"stage": "aborted", "furthest": 10}) == "aborted at 10 %"
    assert staged_how_far({"stage": "aborted", "furthest": 0}) == "aborted before traffic"
    assert staged_how_far({"stage": "done", "furthest": 100}) == "staged to 100 %"
    assert staged_how_far({"stage": "traffic", "furthest": 50, "share": 50}) == "staged, now 50 %"
    assert staged_how_far({"stage": "canary", "furthest": 0}) == "staged, canary"


def test_a_load_test_the_candidate_fails_aborts_before_any_traffic() -> None:
    h = Harness(load_test_requests=20, load_test_concurrency=2)
    h.start(load_test=True)
    h.tick(T0 + 1)
    assert h.tick(T0 + 2) == "load-test"  # canaries passed; nothing listens at the replica URLs
    future = h.rollouts._load
    assert future is not None
    future.result(timeout=60)
    assert h.tick(T0 + 3) == "aborting"
    assert "load test" in h.alerts[0][2]
    assert all(w.get("inference-canary-1", 0) == 0 for w in h.balancer.applied)


def test_a_gross_regression_is_judged_on_its_median_with_fewer_requests() -> None:
    slow = WindowStats(requests=12, errors=0, p50_ms=900.0, p95_ms=1500.0)
    fast = WindowStats(requests=400, errors=0, p50_ms=30.0, p95_ms=60.0)
    assert "median 900 ms" in compare(slow, fast, Limits()).breach
    # one slow first answer among fast ones moves the p95 of 12, not the median: no verdict yet
    cold = WindowStats(requests=12, errors=0, p50_ms=35.0, p95_ms=700.0)
    assert compare(cold, fast, Limits()).breach == ""
    # 3x on the median is not gross: it waits for min_requests and the p95 test
    assert (
        compare(
            WindowStats(requests=12, errors=0, p50_ms=90.0, p95_ms=120.0), fast, Limits()
        ).breach
        == ""
    )


def test_after_promotion_abort_is_refused_and_a_release_change_ends_the_rollout_blameless() -> None:
    h = Harness()
    h.start(steps=(100,))
    for t in (1, 2, 3):
        h.tick(T0 + t)
    with pytest.raises(WardenError, match="no staged rollout"):
        Harness().rollouts.promote(T0)
    now = T0 + 3
    for _ in range(30):
        if h.tick(now, traffic=100) != "traffic":
            break
        now += 1
    assert h.promoted == ["v2"]
    with pytest.raises(WardenError, match="rollback"):
        h.rollouts.abort(now, "operator")
    h.promoted.clear()  # a rule reverted the service to v1 while the replicas rolled
    assert h.tick(now + 1) == "aborting"
    assert h.bad == []  # not the candidate's fault: it is not marked bad by the rollout
    assert h.candidate_share() == 0.0


def test_promote_is_refused_before_the_canaries_passed() -> None:
    h = Harness()
    h.start()
    h.tick(T0 + 1, candidate_ready=False)
    with pytest.raises(WardenError, match="canaries"):
        h.rollouts.promote(T0 + 2)


# --- split by replicas (Swarm without HAProxy) ---------------------------------------------------


def test_candidate_replicas_bring_its_share_of_the_tasks_nearest_to_the_step() -> None:
    from agent.rollout.controller import replicas_for

    assert replicas_for(10, 2) == 1  # 1 of 3: the least a step can add
    assert replicas_for(50, 2) == 2  # 2 of 4
    assert replicas_for(10, 9) == 1  # 1 of 10
    assert replicas_for(25, 6) == 2  # 2 of 8
    assert replicas_for(75, 1) == 3  # 3 of 4
    assert replicas_for(50, 0) == 1


class RatioHarness(Harness):
    """No balancer: the candidate's share is its share of the serving tasks (``stable``
    replicas of the service plus the candidate's slots that serve users)."""

    def __init__(self, kv: dict[str, Any] | None = None, stable: int = 2, **settings: Any):
        super().__init__(kv, **settings)
        self.stable_slots = [f"inference-{i}" for i in range(1, stable + 1)]
        self.loading: set[str] = set()  # candidate slots still loading their model
        self.golden = 0  # golden-set requests per tick on each canary replica
        self.lingering: set[str] = set()  # slots no longer wanted whose task still runs
        self.rollouts = Rollouts(
            service="inference",
            store=self.rollouts.store,
            balancer=None,
            settings=self.rollouts.settings,
            hooks=self.rollouts.hooks,
            by_replicas=True,
        )

    def serving(self) -> list[str]:
        """The candidate slots the reconciler would run with the alias (user traffic)."""
        return sorted(s for s, spec in self.rollouts.extra_slots().items() if spec.user_traffic)

    def obs(
        self, now: float, *, candidate_ready: bool = True, traffic: int = 0, main: str = "v1"
    ) -> Observation:
        extra = self.rollouts.extra_slots()
        views = [self._view(s, main, now, True) for s in self.stable_slots]
        views += [
            self._view(s, "v2", now, candidate_ready and s not in self.loading)
            for s in sorted(set(extra) | self.lingering)
        ]
        serving = [s for s in self.serving() if s not in self.loading]
        users = self.stable_slots + (serving if candidate_ready else [])
        for slot in users:  # DNS round robin: every serving task alike
            self.requests[slot] = self.requests.get(slot, 0) + traffic // len(users)
        for slot in set(extra) - set(self.serving()):
            self.requests[slot] = self.requests.get(slot, 0) + self.golden
        views = [self._with_metrics(v) for v in views]
        return Observation(at=now, views=tuple(views), signals={})


def _ticked(ticks: int, **settings: Any) -> RatioHarness:
    """A ratio rollout beside 2 stable replicas, ticked at T0+1 .. T0+ticks: after 2 its
    canaries passed (the next tick enters the first traffic step), after 3 it is in that step,
    after 4 its traffic replica serves."""
    h = RatioHarness(stable=2, **settings)
    h.start()
    for t in range(1, ticks + 1):
        h.tick(T0 + t)
    return h


def test_split_by_replicas_adds_candidate_replicas_per_step_and_the_last_step_promotes() -> None:
    h = RatioHarness(stable=2)
    h.start()
    assert h.tick(T0 + 1, candidate_ready=False) == "starting"
    assert h.rollouts.extra_slots() == {
        "inference-canary-1": ReleaseSpec(tag="v2", user_traffic=False)
    }
    assert h.tick(T0 + 2) == "canary"
    assert h.serving() == []  # the canary replica never joins user traffic
    assert h.tick(T0 + 3) == "traffic"
    assert h.serving() == ["inference-canary-2"]  # 10 % of 2 stable: 1 of 3
    current = h.rollouts.current()
    assert current is not None and "33 % of the serving tasks" in current.status
    assert (current.share, current.served_share) == (10, 0)  # its replica is not serving yet
    assert h.tick(T0 + 3.5) == "traffic"
    current = h.rollouts.current()
    assert current is not None and current.serving_at == T0 + 3.5
    assert "1 candidate replica(s) serve beside 2 stable (33 % of the serving" in current.status
    assert (current.share, current.served_share, current.document()["share"]) == (10, 33, 33)
    seen, now, stage = [], T0 + 3, "traffic"
    while stage == "traffic" and now < T0 + 100:  # bounded
        now += 1.0
        stage = h.tick(now, traffic=120)
        seen.append(tuple(h.serving()))
    assert ("inference-canary-2", "inference-canary-3") in seen  # 50 %: 2 of 4
    assert stage == "promoting" and h.promoted == ["v2"]  # the 100 % step is the promotion
    assert h.serving() == ["inference-canary-2", "inference-canary-3"]  # serve while it rolls
    assert h.tick(now + 1, main="v2") == "retiring"  # no HAProxy to wait for: DNS has it
    assert h.serving() == []
    assert h.tick(now + 2, main="v2") == "done"
    assert h.rollouts.extra_slots() == {} and h.bad == []


def test_split_by_replicas_abort_takes_the_candidate_out_of_traffic_in_the_same_tick() -> None:
    h = _ticked(3)
    assert h.serving() == ["inference-canary-2"]
    h.slow.update({"inference-canary-1", "inference-canary-2"})
    now, stage = T0 + 3, "traffic"
    while stage == "traffic" and now < T0 + 60:  # bounded
        now += 1.0
        stage = h.tick(now, traffic=300)
    assert stage == "aborting" and h.bad == ["v2"]
    assert h.serving() == []  # the reconciler stops it in this tick
    h.lingering = {"inference-canary-2"}  # Swarm is still stopping its task
    assert h.tick(now + 1) == "aborting"  # "aborted" must mean no user reaches it
    h.lingering.clear()
    assert h.tick(now + 2) == "aborted"


def test_split_by_replicas_failing_canaries_never_reach_users_and_haproxy_is_not_needed() -> None:
    h = RatioHarness(stable=1)
    h.failing_canaries.add("inference-canary-1")
    h.start()  # no balancer, no error: the split is by replicas
    served = []
    for t in (1, 2, 3):
        h.tick(T0 + t)
        served += h.serving()
    assert h.rollouts.store.history()["v2"].stage in ("aborting", "aborted")
    assert served == [] and h.bad == ["v2"]


def test_split_by_replicas_judges_traffic_replicas_only_once_they_all_serve() -> None:
    h = _ticked(2, start_timeout_s=30.0)
    # the canary replica answers only the golden set (slow batches): not the candidate's traffic
    h.slow.add("inference-canary-1")
    h.golden = 12
    h.loading.add("inference-canary-2")
    now = T0 + 3
    assert h.tick(now) == "traffic"
    for _ in range(20):  # the traffic replica loads its model: no clock, no verdict
        now += 1.0
        assert h.tick(now, traffic=30) == "traffic"
    current = h.rollouts.current()
    assert current is not None and current.step == 0 and current.step_clock_s == 0.0
    h.loading.clear()
    stage = "traffic"
    while stage == "traffic" and now < T0 + 100:  # bounded
        now += 1.0
        stage = h.tick(now, traffic=30)
    assert stage == "promoting" and h.bad == []


def test_split_by_replicas_a_traffic_replica_that_never_serves_aborts_after_start_timeout() -> None:
    h = _ticked(2, start_timeout_s=30.0)
    h.loading.add("inference-canary-2")
    now, stage = T0 + 2, "traffic"
    while stage == "traffic" and now < T0 + 60:  # bounded
        now += 1.0
        stage = h.tick(now, traffic=300)
    assert stage == "aborting" and now - T0 > 30
    assert "inference-canary-2 not ready within 30 s" in h.alerts[0][2]


def test_split_by_replicas_once_serving_a_readiness_blip_or_a_restart_does_not_abort() -> None:
    h = _ticked(4, start_timeout_s=30.0)
    current = h.rollouts.current()
    assert current is not None and current.serving_at is not None
    h.rollouts.pause(T0 + 4, on=True)
    now = T0 + 60  # long after start_timeout: the step is well under way
    h.loading.add("inference-canary-2")  # one missed /ready probe
    assert h.tick(now, traffic=30) == "traffic"
    h.loading.clear()
    again = RatioHarness(kv=h.kv, stable=2, start_timeout_s=30.0)  # kill -9, new agent
    again.requests = dict(h.requests)
    assert again.tick(now + 1, traffic=30) == "traffic"
    assert again.bad == [] and again.rollouts.extra_slots() == h.rollouts.extra_slots()


def test_split_by_replicas_needs_a_step_below_100_and_promotes_only_serving_replicas() -> None:
    h = RatioHarness(stable=1)
    with pytest.raises(WardenError, match="needs a step below 100"):
        h.start(steps=(100,))
    h.start(steps=(50, 100))
    h.tick(T0 + 1)
    h.loading.add("inference-canary-2")
    h.tick(T0 + 2)
    assert h.tick(T0 + 3) == "traffic"
    with pytest.raises(WardenError, match="do not serve yet"):
        h.rollouts.promote(T0 + 3)
    h.loading.clear()
    h.tick(T0 + 4)
    assert h.rollouts.promote(T0 + 5).stage == "promoting"


def test_split_by_replicas_a_task_swarm_has_not_put_into_dns_does_not_serve() -> None:
    from agent.rollout.controller import _serves

    h = RatioHarness(stable=1)
    h.start()
    h.tick(T0 + 1)
    obs = h.obs(T0 + 2)
    view = obs.view("inference-canary-1")
    assert view is not None and _serves(obs, "inference-canary-1", T0)
    assert not _serves(obs, "inference-canary-1", T0 + 3)  # no golden-set run since then
    starting = Replica(**{**_fields(view.replica), "state": ReplicaState.STARTING})
    views = tuple(
        ReplicaView(replica=starting, health=v.health, ready=v.ready, canary=v.canary,
                    canary_at=v.canary_at, resources=None)
        if v.replica.id == "inference-canary-1" else v
        for v in obs.views
    )  # fmt: skip
    assert not _serves(Observation(at=obs.at, views=views, signals={}), "inference-canary-1", T0)


def _fields(replica: Replica) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(replica, f.name) for f in fields(replica)}
