"""Candidate vs stable on the same minutes of traffic: pure comparisons, one sentence per breach.

Each side's window is the ``/predict`` traffic its replicas answered since the step started
(``collectors.window_stats``). A breach needs enough requests on both sides to mean anything:
latency — candidate p95 above ``max_p95_ratio`` × stable p95 *and* at least ``min_p95_delta_ms``
slower (histogram buckets are coarse at a few milliseconds), or, on a fifth of the requests, a
candidate median over twice that ratio (a gross regression); errors — candidate 5xx rate above
stable's by more than ``max_error_delta`` and significant (one-sided Fisher exact test at
``error_alpha``), so one unlucky 500 at 10 % of traffic does not abort a release.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import fisher_exact

from agent.collectors import WindowStats

_MIN_ERRORS = 3  # 5xx a candidate must show before its error rate is judged at all


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_p95_ratio: float = 2.0
    min_p95_delta_ms: float = 20.0
    min_requests: int = 50
    max_error_delta: float = 0.01
    error_alpha: float = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    breach: str  # "" = no breach
    enough: bool  # both sides had min_requests: the comparison ran
    summary: str  # one line for status pages


def compare(candidate: WindowStats, stable: WindowStats, limits: Limits) -> Verdict:
    """Whether the candidate is worse than stable on this window, and why."""
    summary = _summary(candidate, stable)
    errors = _error_breach(candidate, stable, limits)
    if errors:  # errors need no latency sample: a candidate failing everything is judged at once
        return Verdict(breach=errors, enough=True, summary=summary)
    gross = _gross_regression(candidate, stable, limits)
    if gross:
        return Verdict(breach=gross, enough=True, summary=summary)
    if stable.requests == 0 and candidate.requests >= limits.min_requests:
        return Verdict(
            breach="",
            enough=True,
            summary=f"{summary}; no stable traffic to compare with: 5xx and canaries only",
        )
    if candidate.requests < limits.min_requests or stable.requests < limits.min_requests:
        return Verdict(
            breach="",
            enough=False,
            summary=f"{summary}; waiting for {limits.min_requests} requests on each side",
        )
    c95, s95 = candidate.p95_ms, stable.p95_ms
    if c95 is not None and s95 is not None and s95 > 0:
        ratio = c95 / s95
        if ratio > limits.max_p95_ratio and c95 - s95 >= limits.min_p95_delta_ms:
            return Verdict(
                breach=f"candidate p95 {c95:.0f} ms is {ratio:.1f}x stable's {s95:.0f} ms "
                f"(limit {limits.max_p95_ratio:g}x) over {candidate.requests} vs "
                f"{stable.requests} requests",
                enough=True,
                summary=summary,
            )
    return Verdict(breach="", enough=True, summary=summary)


def _gross_regression(candidate: WindowStats, stable: WindowStats, limits: Limits) -> str:
    """A candidate whose *median* is over twice the p95 limit is judged on a fifth of the
    requests: at 10 % of traffic a very slow candidate answers slowly, so waiting for
    ``min_requests`` of its answers is what would take longest. The median, unlike the p95 of a
    few answers, does not move for one slow first request."""
    needed = max(5, limits.min_requests // 5)
    c50, s50 = candidate.p50_ms, stable.p50_ms
    if candidate.requests < needed or stable.requests < limits.min_requests:
        return ""
    if c50 is None or s50 is None or s50 <= 0:
        return ""
    ratio = c50 / s50
    if ratio <= 2 * limits.max_p95_ratio or c50 - s50 < limits.min_p95_delta_ms:
        return ""
    return (
        f"candidate median {c50:.0f} ms is {ratio:.1f}x stable's {s50:.0f} ms (over "
        f"{2 * limits.max_p95_ratio:g}x: judged early) over {candidate.requests} vs "
        f"{stable.requests} requests"
    )


def _error_breach(candidate: WindowStats, stable: WindowStats, limits: Limits) -> str:
    if candidate.requests == 0 or candidate.errors == 0:
        return ""
    c_rate = candidate.errors / candidate.requests
    s_rate = stable.errors / stable.requests if stable.requests else 0.0
    if c_rate - s_rate <= limits.max_error_delta or candidate.errors < _MIN_ERRORS:
        return ""  # one or two 500s against a large stable sample pass Fisher; not evidence
    if stable.requests == 0:  # nothing to compare with (the candidate takes all traffic)
        return (
            f"candidate 5xx rate {c_rate:.1%} ({candidate.errors}/{candidate.requests}) with no "
            f"stable traffic to compare (limit {limits.max_error_delta:.1%})"
        )
    table = [
        [candidate.errors, candidate.requests - candidate.errors],
        [stable.errors, stable.requests - stable.errors],
    ]
    p_value = float(fisher_exact(table, alternative="greater").pvalue)
    if p_value >= limits.error_alpha:
        return ""
    return (
        f"candidate 5xx rate {c_rate:.1%} vs stable {s_rate:.1%} "
        f"({candidate.errors}/{candidate.requests} vs {stable.errors}/{stable.requests}, "
        f"Fisher p={p_value:.2g} < {limits.error_alpha:g})"
    )


def _summary(candidate: WindowStats, stable: WindowStats) -> str:
    def side(name: str, w: WindowStats) -> str:
        p95 = "-" if w.p95_ms is None else f"{w.p95_ms:.0f} ms"
        return f"{name} {w.requests} req, {w.errors} 5xx, p95 {p95}"

    return f"{side('candidate', candidate)}; {side('stable', stable)}"
