"""agent.decay: McNemar, Welch and Fisher decay tests, their combination and the sample sizes."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from agent.decay import (
    FISHER,
    MCNEMAR,
    WELCH,
    DecayTest,
    ItemSummary,
    canary_tests,
    combine,
    feedback_sample_size,
    fisher_decay,
    mcnemar_decay,
    min_discordant_items,
    summarise_runs,
    welch_decay,
)

ITEMS = [f"item-{i}" for i in range(8)]
BASELINE_CONFIDENCES = [0.997, 0.998, 1.0, 0.999, 0.993, 0.992, 1.0, 1.0]
# all-MiniLM-L6-v2 with Gaussian noise of 0.5 x each weight matrix's std (seed 7): every label
# still right and above min_confidence 0.3, so the threshold canaries pass
DEGRADED_CONFIDENCES = [0.535, 0.381, 0.514, 0.367, 0.489, 0.553, 0.557, 0.405]


def verdicts(wrong: int) -> dict[str, bool]:
    return {name: index >= wrong for index, name in enumerate(ITEMS)}


def test_mcnemar_with_5_of_8_items_flipped_is_the_exact_binomial_tail() -> None:
    result = mcnemar_decay(verdicts(0), verdicts(5))
    assert result.p_value == pytest.approx(0.5**5)
    assert result.detail == (
        "McNemar: 5 of 8 golden-set items went from right to wrong, 0 back, p=0.031"
    )


def test_mcnemar_counts_items_that_recovered_against_the_flips() -> None:
    baseline = verdicts(2)  # items 0 and 1 were wrong
    current = {name: name not in ("item-2", "item-3", "item-4") for name in ITEMS}
    result = mcnemar_decay(baseline, current)
    # 3 right -> wrong, 2 wrong -> right: P(X >= 3 | n=5) = 16/32
    assert result.p_value == pytest.approx(0.5)
    assert result.effect == 1.0


def test_mcnemar_with_no_item_changed_is_p_1() -> None:
    result = mcnemar_decay(verdicts(1), verdicts(1))
    assert result.p_value == 1.0
    assert result.detail == "McNemar: no golden-set item changed its verdict (8 items)"


def test_mcnemar_never_calls_an_improvement_decay() -> None:
    result = mcnemar_decay(verdicts(6), verdicts(0))
    assert result.p_value == 1.0
    assert not result.significant_effect


def test_a_golden_set_of_8_needs_5_flips_for_p_below_005_and_6_after_bonferroni() -> None:
    assert min_discordant_items(0.05) == 5
    assert min_discordant_items(0.05 / 2) == 6
    assert min_discordant_items(0.05 / 3) == 6
    assert mcnemar_decay(verdicts(0), verdicts(4)).p_value == pytest.approx(0.0625)


def test_welch_flags_the_degraded_weights_confidences() -> None:
    result = welch_decay(BASELINE_CONFIDENCES, DEGRADED_CONFIDENCES, min_effect=0.05)
    assert result.p_value is not None and result.p_value < 1e-6
    assert result.significant_effect
    assert result.effect == pytest.approx(np.mean(BASELINE_CONFIDENCES) - 0.475, abs=1e-3)


def test_welch_on_two_constant_series_says_no_variance_instead_of_nan() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "precision loss" warning would be a bug here
        result = welch_decay([0.9] * 8, [0.6] * 8, min_effect=0.05)
    assert result.p_value is None
    assert result.detail == (
        "Welch: no variance (mean expected-label probability 0.600 now vs 0.900 baseline); "
        "a t-test on constant series is undefined"
    )


def test_welch_runs_when_only_one_series_is_constant() -> None:
    result = welch_decay([1.0] * 8, DEGRADED_CONFIDENCES, min_effect=0.05)
    assert result.p_value is not None and not math.isnan(result.p_value)
    assert result.p_value < 1e-6


def test_welch_needs_two_values_on_each_side() -> None:
    result = welch_decay([0.9], [0.5, 0.6], min_effect=0.05)
    assert result.p_value is None
    assert result.detail == "Welch: too few confidences (1 baseline, 2 now; need 2)"


def test_a_tiny_consistent_confidence_shift_is_significant_but_not_decay() -> None:
    shifted = [c - 0.002 for c in BASELINE_CONFIDENCES]
    welch = welch_decay(BASELINE_CONFIDENCES, shifted, min_effect=0.05)
    assert not welch.significant_effect
    assert not combine([welch], alpha=0.05).detected


def test_fisher_waits_for_the_minimum_sample_size_and_says_so() -> None:
    result = fisher_decay(
        baseline_correct=90,
        baseline_total=100,
        current_correct=10,
        current_total=20,
        min_samples=250,
        min_effect=0.05,
    )
    assert result.p_value is None
    assert result.detail == (
        "feedback: too few labelled items (20 live, 100 baseline; the test needs 250 each)"
    )


def test_fisher_flags_a_10_point_drop_at_250_items_each() -> None:
    result = fisher_decay(
        baseline_correct=225,
        baseline_total=250,
        current_correct=200,
        current_total=250,
        min_samples=250,
        min_effect=0.05,
    )
    assert result.p_value is not None and result.p_value < 0.05 / 3
    assert result.effect == pytest.approx(0.1)
    assert result.detail.startswith("feedback: accuracy 80.0% of 250 live vs 90.0% of 250 baseline")


def result(test: str, p: float | None, *, effect: bool = True) -> DecayTest:
    return DecayTest(test=test, p_value=p, effect=0.1, significant_effect=effect, detail=test)


def test_combine_applies_bonferroni_over_the_tests_that_ran() -> None:
    verdict = combine([result(MCNEMAR, 0.03), result(WELCH, 0.5)], alpha=0.05)
    assert not verdict.detected  # 0.03 x 2 = 0.06
    assert verdict.p_value == pytest.approx(0.06)
    alone = combine([result(MCNEMAR, 0.03), result(FISHER, None)], alpha=0.05)
    assert alone.detected  # the feedback test did not run: no correction for it
    assert alone.p_value == pytest.approx(0.03)
    assert alone.reason.startswith("accuracy decay (mcnemar; Bonferroni x1, alpha 0.05)")


def test_combine_with_no_test_run_has_no_p_value() -> None:
    verdict = combine([result(FISHER, None)], alpha=0.05)
    assert verdict.p_value is None and not verdict.detected


def test_canary_tests_pool_runs_per_item_not_per_run() -> None:
    good = {name: (True, c) for name, c in zip(ITEMS, BASELINE_CONFIDENCES, strict=True)}
    bad = {name: (index >= 5, 0.2) for index, name in enumerate(ITEMS)}
    # ten identical runs are still 8 items: McNemar stays at 0.5 ** 5, not 0.5 ** 50
    baseline = summarise_runs([good] * 10)
    current = summarise_runs([bad] * 10)
    mcnemar, welch = canary_tests(baseline, current, min_confidence_drop=0.05)
    assert mcnemar.p_value == pytest.approx(0.5**5)
    assert welch.p_value is not None and welch.p_value < 1e-6


def test_summarise_runs_takes_the_majority_and_the_mean() -> None:
    runs = [{"a": (True, 0.9)}, {"a": (False, 0.3)}, {"a": (True, None)}]
    assert summarise_runs(runs) == {"a": ItemSummary(correct=True, confidence=pytest.approx(0.6))}


def test_the_documented_sample_size_for_a_10_point_drop() -> None:
    # docs/decay.md: 224 per window by the normal approximation, one-sided alpha 0.05 / 3
    assert feedback_sample_size(baseline_accuracy=0.9, drop=0.1, alpha=0.05 / 3) == 224
    assert feedback_sample_size(baseline_accuracy=0.9, drop=0.1, alpha=0.05) == 157


def test_a_10_point_feedback_drop_is_flagged_with_80_percent_power_at_250_items() -> None:
    """Seeded simulation of the default: 250 labelled items in each window, all three tests
    running (Bonferroni x3). docs/decay.md states 81% power and about 1% false alarms."""
    rng = np.random.default_rng(20241123)
    n, runs = 250, 400
    canaries_unchanged = [result(MCNEMAR, 1.0, effect=False), result(WELCH, 0.5, effect=False)]
    detected = false_alarms = 0
    for _ in range(runs):
        base, worse, same = rng.binomial(n, 0.9), rng.binomial(n, 0.8), rng.binomial(n, 0.9)
        for live, is_decay in ((worse, True), (same, False)):
            fisher = fisher_decay(
                baseline_correct=int(base),
                baseline_total=n,
                current_correct=int(live),
                current_total=n,
                min_samples=n,
                min_effect=0.05,
            )
            hit = combine([*canaries_unchanged, fisher], alpha=0.05).detected
            detected += hit and is_decay
            false_alarms += hit and not is_decay
    assert detected / runs >= 0.78
    assert false_alarms / runs <= 0.03
