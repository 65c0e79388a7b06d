"""Releases and last-good: the revert target and when a candidate becomes good."""

from __future__ import annotations

from agent.backends.base import ReleaseSpec
from agent.clock import FakeClock
from agent.releases import (
    BakeStatus,
    ReleaseRecord,
    ReleaseStatus,
    bake_status,
    choose_revert_target,
)

T0 = 1_700_000_000.0


def release(tag: str, status: ReleaseStatus, created_at: float) -> ReleaseRecord:
    return ReleaseRecord(
        tag=tag,
        spec=ReleaseSpec(tag=tag, image=f"warden-inference:{tag}"),
        status=status,
        created_at=created_at,
    )


GOOD, BAD, CANDIDATE = ReleaseStatus.GOOD, ReleaseStatus.BAD, ReleaseStatus.CANDIDATE


def test_revert_goes_to_newest_good_release_not_previous() -> None:
    releases = [
        release("v1", GOOD, T0),
        release("v2", GOOD, T0 + 10),
        release("v3", CANDIDATE, T0 + 20),
        release("v4", CANDIDATE, T0 + 30),
    ]
    assert choose_revert_target(releases, current="v4") == "v2"


def test_revert_skips_the_current_release_even_when_it_is_good() -> None:
    releases = [release("v1", GOOD, T0), release("v2", GOOD, T0 + 10)]
    assert choose_revert_target(releases, current="v2") == "v1"


def test_revert_goes_back_several_levels_when_newer_goods_were_marked_bad() -> None:
    releases = [
        release("v4", CANDIDATE, T0 + 40),
        release("v3", BAD, T0 + 30),
        release("v2", BAD, T0 + 20),
        release("v1", GOOD, T0 + 10),
        release("v0", GOOD, T0),
    ]
    assert choose_revert_target(releases, current="v4") == "v1"


def test_bad_and_candidate_releases_are_never_chosen() -> None:
    releases = [release("v1", BAD, T0), release("v2", CANDIDATE, T0 + 10)]
    assert choose_revert_target(releases, current="v3") is None
    assert choose_revert_target([], current="v1") is None


def test_revert_target_does_not_depend_on_input_order() -> None:
    releases = [release("v1", GOOD, T0), release("v3", GOOD, T0 + 30), release("v2", GOOD, T0 + 20)]
    assert choose_revert_target(releases, current="v4") == "v3"


def _bake(
    clock: FakeClock,
    candidate: ReleaseRecord,
    *,
    passing_since: float | None,
    firing: bool = False,
    quiet_since: float | None = None,
) -> BakeStatus:
    return bake_status(
        release=candidate,
        now=clock.now(),
        bake_s=300.0,
        canaries_passing_since=passing_since,
        any_rule_firing=firing,
        rules_quiet_since=quiet_since,
    )


def test_candidate_is_promoted_only_after_the_bake_period() -> None:
    clock = FakeClock(T0)
    candidate = release("v2", CANDIDATE, T0)
    clock.advance(299)
    assert _bake(clock, candidate, passing_since=T0) == BakeStatus(
        promote=False, reason="v2 is baking: 299 s of 300 s clean so far"
    )
    clock.advance(1)
    assert _bake(clock, candidate, passing_since=T0) == BakeStatus(
        promote=True,
        reason="v2 is good: baked 300 s >= 300 s with canaries passing and no rule firing",
    )


def test_bake_counts_from_when_canaries_started_passing() -> None:
    clock = FakeClock(T0)
    candidate = release("v2", CANDIDATE, T0)
    clock.advance(400)
    status = _bake(clock, candidate, passing_since=T0 + 200)
    assert status == BakeStatus(promote=False, reason="v2 is baking: 200 s of 300 s clean so far")


def test_failing_canaries_never_promote() -> None:
    clock = FakeClock(T0)
    clock.advance(10_000)
    status = _bake(clock, release("v2", CANDIDATE, T0), passing_since=None)
    assert status == BakeStatus(promote=False, reason="v2 not promoted: canaries are not passing")


def test_a_firing_rule_blocks_promotion() -> None:
    clock = FakeClock(T0)
    clock.advance(10_000)
    status = _bake(clock, release("v2", CANDIDATE, T0), passing_since=T0, firing=True)
    assert status == BakeStatus(
        promote=False, reason="v2 not promoted: a rule is firing, the bake restarts"
    )


def test_a_rule_that_fired_during_the_bake_restarts_it() -> None:
    clock = FakeClock(T0)
    clock.advance(500)
    status = _bake(clock, release("v2", CANDIDATE, T0), passing_since=T0, quiet_since=T0 + 450)
    assert status == BakeStatus(promote=False, reason="v2 is baking: 50 s of 300 s clean so far")


def test_only_candidates_are_promoted() -> None:
    clock = FakeClock(T0 + 10_000)
    assert _bake(clock, release("v1", GOOD, T0), passing_since=T0) == BakeStatus(
        promote=False, reason="v1 is good, not a candidate"
    )
    assert _bake(clock, release("v0", BAD, T0), passing_since=T0) == BakeStatus(
        promote=False, reason="v0 is bad, not a candidate"
    )
