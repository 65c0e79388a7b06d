"""Releases and last-good: pure rules for which release to revert to and when a candidate is good.

A release starts as a *candidate*; it becomes *good* only after a bake period with canaries
passing and no rule firing (Flagger's rule: last-good is recorded only after analysis passes).
A release that was reverted is *bad* and is never chosen automatically again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from agent.backends.base import ReleaseSpec


class ReleaseStatus(enum.StrEnum):
    CANDIDATE = "candidate"
    GOOD = "good"
    BAD = "bad"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRecord:
    """One release as the state store keeps it."""

    tag: str
    spec: ReleaseSpec
    status: ReleaseStatus
    created_at: float  # when it was deployed as a candidate: the bake starts here
    promoted_at: float | None = None
    marked_bad_at: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BakeStatus:
    """Whether a candidate may be promoted to good now, and one sentence saying why."""

    promote: bool
    reason: str


def choose_revert_target(releases: Sequence[ReleaseRecord], current: str) -> str | None:
    """The newest good release that is not ``current``, or None when there is none.

    "Newest" is by deploy time (``created_at``); a tie keeps the input order. Candidates and bad
    releases are never chosen, so when newer good releases were later marked bad the target
    goes back as many levels as it takes.
    """
    goods = [r for r in releases if r.status is ReleaseStatus.GOOD and r.tag != current]
    if not goods:
        return None
    return sorted(goods, key=lambda r: -r.created_at)[0].tag


def bake_status(
    *,
    release: ReleaseRecord,
    now: float,
    bake_s: float,
    canaries_passing_since: float | None,
    any_rule_firing: bool,
    rules_quiet_since: float | None = None,
) -> BakeStatus:
    """Whether ``release`` has baked: ``bake_s`` seconds with canaries passing and no rule firing.

    The bake clock starts at the latest of the deploy time, ``canaries_passing_since`` (None:
    canaries are failing or not yet checked) and ``rules_quiet_since`` (when the last firing
    rule resolved; None: no rule fired since the deploy). A rule firing now never promotes, so a
    release is good only if the whole bake period was clean.
    """
    tag = release.tag
    if release.status is not ReleaseStatus.CANDIDATE:
        return BakeStatus(promote=False, reason=f"{tag} is {release.status}, not a candidate")
    if any_rule_firing:
        return BakeStatus(
            promote=False, reason=f"{tag} not promoted: a rule is firing, the bake restarts"
        )
    if canaries_passing_since is None:
        return BakeStatus(promote=False, reason=f"{tag} not promoted: canaries are not passing")
    start = max(release.created_at, canaries_passing_since, rules_quiet_since or 0.0)
    baked = now - start
    if baked < bake_s:
        return BakeStatus(
            promote=False,
            reason=f"{tag} is baking: {_secs(baked)} of {_secs(bake_s)} clean so far",
        )
    return BakeStatus(
        promote=True,
        reason=(
            f"{tag} is good: baked {_secs(baked)} >= {_secs(bake_s)} "
            "with canaries passing and no rule firing"
        ),
    )


def _secs(value: float) -> str:
    """Whole seconds, rounded down so a bake is never reported longer than it was."""
    return f"{math.floor(max(value, 0.0))} s"
