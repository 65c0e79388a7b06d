"""Accuracy decay statistics: does the model answer worse than its baseline? Pure, no I/O.

Three one-sided tests (only a *drop* matters; an improvement is never "decay"):

- **McNemar's exact test** on per-item correctness of the golden set. The baseline and the current
  run answer the *same* items, so the data are paired: only items whose verdict changed carry
  information. With ``b`` items right before and wrong now and ``c`` the other way round, under
  "no change" ``b ~ Binomial(b + c, 1/2)``; the p-value is ``P(X >= b)``. With ``b + c`` discordant
  items and none going the other way the smallest p-value is ``0.5 ** b``: a golden set of 8 can
  only reach p < 0.05 when at least 5 items flipped (6 after a Bonferroni factor of 2 or 3).
- **Welch's t-test** on the expected label's probability per item, baseline against current
  (``scipy.stats.ttest_ind(equal_var=False, alternative="less")``). Never run on series that are
  both constant: the statistic is 0/0 there, and the result says "no variance" instead of NaN.
  A drop smaller than ``min_effect`` is not reported as decay even when significant: a new torch
  build shifting every confidence by 0.001 is consistent, hence significant, and harmless.
- **Fisher's exact test** on labelled feedback: correct/wrong counts of the baseline window against
  the live window (``scipy.stats.fisher_exact(alternative="greater")``), run only when both windows
  hold at least ``min_samples`` items.

``combine`` turns the tests that could run into one verdict with a Bonferroni correction (the
family-wise error rate stays at ``alpha`` however many tests ran). ``docs/decay.md`` explains the
defaults and the sample sizes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

MCNEMAR = "mcnemar"
WELCH = "welch"
FISHER = "fisher"


@dataclass(frozen=True, slots=True, kw_only=True)
class DecayTest:
    """One test's outcome. ``p_value`` None: the test could not run; ``detail`` says why."""

    test: str
    p_value: float | None
    effect: float  # the drop it measured (items, probability or accuracy); 0 when none
    significant_effect: bool  # the drop is at least the smallest one worth acting on
    detail: str  # one sentence with the numbers


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The decay decision over every test that ran."""

    detected: bool
    p_value: float | None  # smallest Bonferroni-adjusted p-value; None when no test ran
    tests: tuple[DecayTest, ...]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemSummary:
    """One golden-set item over one or more canary runs."""

    correct: bool  # right label in more than half of the runs
    confidence: float | None  # mean probability of the expected label (None: never reported)


def mcnemar_decay(baseline: Mapping[str, bool], current: Mapping[str, bool]) -> DecayTest:
    """Exact one-sided McNemar test on items present in both (True = answered correctly)."""
    common = sorted(baseline.keys() & current.keys())
    worse = sum(1 for name in common if baseline[name] and not current[name])
    better = sum(1 for name in common if not baseline[name] and current[name])
    what = f"{worse} of {len(common)} golden-set items went from right to wrong, {better} back"
    if worse + better == 0:
        return DecayTest(
            test=MCNEMAR,
            p_value=1.0,
            effect=0.0,
            significant_effect=False,
            detail=f"McNemar: no golden-set item changed its verdict ({len(common)} items)",
        )
    p = float(stats.binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)
    return DecayTest(
        test=MCNEMAR,
        p_value=p,
        effect=float(worse - better),
        significant_effect=worse > better,
        detail=f"McNemar: {what}, p={_p(p)}",
    )


def welch_decay(
    baseline: Sequence[float], current: Sequence[float], *, min_effect: float
) -> DecayTest:
    """One-sided Welch t-test: is the current mean confidence below the baseline's?"""
    base = np.asarray(baseline, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if len(base) < 2 or len(cur) < 2:
        return DecayTest(
            test=WELCH,
            p_value=None,
            effect=0.0,
            significant_effect=False,
            detail=f"Welch: too few confidences ({len(base)} baseline, {len(cur)} now; need 2)",
        )
    drop = float(base.mean() - cur.mean())
    means = f"mean expected-label probability {cur.mean():.3f} now vs {base.mean():.3f} baseline"
    if np.ptp(base) == 0 and np.ptp(cur) == 0:
        return DecayTest(
            test=WELCH,
            p_value=None,
            effect=max(drop, 0.0),
            significant_effect=drop >= min_effect,
            detail=f"Welch: no variance ({means}); a t-test on constant series is undefined",
        )
    with warnings.catch_warnings():
        if np.ptp(base) == 0 or np.ptp(cur) == 0:
            # one constant side is fine for Welch (its variance is exactly 0); scipy's warning
            # about "nearly identical data" is about that side alone and would only be noise
            warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_ind(cur, base, equal_var=False, alternative="less")
    p = float(result.pvalue)
    return DecayTest(
        test=WELCH,
        p_value=p,
        effect=max(drop, 0.0),
        significant_effect=drop >= min_effect,
        detail=f"Welch: {means}, t={float(result.statistic):.2f}, p={_p(p)}",
    )


def fisher_decay(
    *,
    baseline_correct: int,
    baseline_total: int,
    current_correct: int,
    current_total: int,
    min_samples: int,
    min_effect: float,
) -> DecayTest:
    """One-sided Fisher exact test: is the live accuracy below the baseline accuracy?"""
    if baseline_total < min_samples or current_total < min_samples:
        return DecayTest(
            test=FISHER,
            p_value=None,
            effect=0.0,
            significant_effect=False,
            detail=(
                f"feedback: too few labelled items ({current_total} live, {baseline_total} "
                f"baseline; the test needs {min_samples} each)"
            ),
        )
    base_acc = baseline_correct / baseline_total
    cur_acc = current_correct / current_total
    table = [
        [baseline_correct, baseline_total - baseline_correct],
        [current_correct, current_total - current_correct],
    ]
    p = float(stats.fisher_exact(table, alternative="greater").pvalue)
    drop = base_acc - cur_acc
    return DecayTest(
        test=FISHER,
        p_value=p,
        effect=max(drop, 0.0),
        significant_effect=drop >= min_effect,
        detail=(
            f"feedback: accuracy {cur_acc:.1%} of {current_total} live vs {base_acc:.1%} of "
            f"{baseline_total} baseline, Fisher p={_p(p)}"
        ),
    )


def combine(results: Sequence[DecayTest], *, alpha: float) -> Verdict:
    """Decay when a test's Bonferroni-adjusted p-value is below ``alpha`` and its drop is big
    enough to act on. Tests that could not run do not count towards the correction."""
    ran = [r for r in results if r.p_value is not None]
    if not ran:
        return Verdict(
            detected=False,
            p_value=None,
            tests=tuple(results),
            reason="no decay test could run: " + "; ".join(r.detail for r in results)
            if results
            else "no decay test could run: no baseline",
        )
    k = len(ran)
    adjusted = {r.test: min(1.0, (r.p_value or 0.0) * k) for r in ran}
    hits = [r for r in ran if adjusted[r.test] < alpha and r.significant_effect]
    details = "; ".join(r.detail for r in results)
    best = min(adjusted.values())
    if hits:
        names = ", ".join(r.test for r in hits)
        reason = f"accuracy decay ({names}; Bonferroni x{k}, alpha {alpha:g}): {details}"
    else:
        reason = f"no significant accuracy decay (Bonferroni x{k}, alpha {alpha:g}): {details}"
    return Verdict(detected=bool(hits), p_value=best, tests=tuple(results), reason=reason)


def summarise_runs(
    runs: Sequence[Mapping[str, tuple[bool, float | None]]],
) -> dict[str, ItemSummary]:
    """Pool canary runs per item: majority correctness and mean expected-label probability.

    The unit of replication is the *item*, not the run: a deterministic model answers the same
    item identically every run, so counting each run as a new observation would be
    pseudo-replication and make any difference look significant. Pooling runs only smooths
    servers whose answers vary a little between runs (GPU kernels, batching).
    """
    names: dict[str, list[tuple[bool, float | None]]] = {}
    for run in runs:
        for name, verdict in run.items():
            names.setdefault(name, []).append(verdict)
    summary = {}
    for name, verdicts in names.items():
        right = sum(1 for ok, _ in verdicts if ok)
        confidences = [c for _, c in verdicts if c is not None]
        summary[name] = ItemSummary(
            correct=right * 2 > len(verdicts),
            confidence=sum(confidences) / len(confidences) if confidences else None,
        )
    return summary


def canary_tests(
    baseline: Mapping[str, ItemSummary],
    current: Mapping[str, ItemSummary],
    *,
    min_confidence_drop: float,
) -> tuple[DecayTest, DecayTest]:
    """McNemar on correctness and Welch on confidence over the items both summaries hold."""
    common = sorted(baseline.keys() & current.keys())
    mcnemar = mcnemar_decay(
        {n: baseline[n].correct for n in common}, {n: current[n].correct for n in common}
    )
    paired = [
        (b, c)
        for n in common
        if (b := baseline[n].confidence) is not None and (c := current[n].confidence) is not None
    ]
    welch = welch_decay(
        [b for b, _ in paired], [c for _, c in paired], min_effect=min_confidence_drop
    )
    return mcnemar, welch


def accuracy_of(summary: Mapping[str, ItemSummary]) -> float | None:
    """Share of items answered correctly (None for an empty summary)."""
    if not summary:
        return None
    return sum(1 for s in summary.values() if s.correct) / len(summary)


def min_discordant_items(alpha: float) -> int:
    """Smallest number of items that must flip right -> wrong (none back) for McNemar p < alpha."""
    return max(1, math.floor(math.log(alpha) / math.log(0.5)) + 1)


def feedback_sample_size(
    *, baseline_accuracy: float, drop: float, alpha: float, power: float = 0.8
) -> int:
    """Labelled items per window for a one-sided two-proportion z-test to detect ``drop``.

    The normal-approximation formula (Fleiss); Fisher's exact test is a little more conservative,
    so ``docs/decay.md`` checks the figure by simulation.
    """
    p1, p2 = baseline_accuracy, baseline_accuracy - drop
    if not 0 < p2 < p1 < 1:
        raise ValueError(f"need 0 < accuracy - drop < accuracy < 1; got {p1} and drop {drop}")
    mean = (p1 + p2) / 2
    z_alpha = float(stats.norm.ppf(1 - alpha))
    z_beta = float(stats.norm.ppf(power))
    root = z_alpha * math.sqrt(2 * mean * (1 - mean)) + z_beta * math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2)
    )
    return math.ceil(root**2 / drop**2)


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"
