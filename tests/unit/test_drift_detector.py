"""agent.drift.detector: scipy-identical KS, corrections, decision, calibration, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from agent.drift.detector import (
    DriftInputError,
    DriftSettings,
    check_inputs,
    correct,
    detect,
    ks_statistics,
)

SEED = 20_241_123


def normal(rng: np.random.Generator, n: int, k: int = 33, shift: float = 0.0) -> np.ndarray:
    return rng.standard_normal((n, k)) + shift


def test_statistics_and_p_values_equal_scipy_ks_2samp_per_feature() -> None:
    rng = np.random.default_rng(SEED)
    ref = normal(rng, 1000, 8)
    cur = normal(rng, 500, 8, shift=0.1)
    cur[:, 0] = np.round(cur[:, 0], 1)  # ties in one feature
    ref[:, 0] = np.round(ref[:, 0], 1)
    result = detect(ref, cur, DriftSettings(min_statistic=0.0))
    for j in range(8):
        expected = stats.ks_2samp(ref[:, j], cur[:, j], method="asymp")
        assert result.statistics[j] == expected.statistic
        assert result.p_values[j] == pytest.approx(expected.pvalue, abs=1e-12)


def test_exact_method_matches_scipy_exact() -> None:
    rng = np.random.default_rng(SEED)
    ref, cur = normal(rng, 300, 3), normal(rng, 200, 3, shift=0.2)
    result = detect(ref, cur, DriftSettings(method="exact"))
    expected = [stats.ks_2samp(ref[:, j], cur[:, j], method="exact").pvalue for j in range(3)]
    assert result.p_values == pytest.approx(expected, abs=1e-12)


def test_bonferroni_multiplies_by_the_number_of_features_and_caps_at_one() -> None:
    p = np.array([0.001, 0.02, 0.5])
    assert correct(p, "bonferroni").tolist() == pytest.approx([0.003, 0.06, 1.0])


def test_fdr_is_benjamini_hochberg() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.5])
    assert correct(p, "fdr").tolist() == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])


def test_a_shift_of_one_feature_is_detected_and_named() -> None:
    rng = np.random.default_rng(SEED)
    ref, cur = normal(rng, 1000), normal(rng, 500)
    cur[:, 5] += 0.5
    result = detect(ref, cur, DriftSettings())
    assert result.drift is True
    assert result.drifted == (5,)
    assert result.features_fraction == pytest.approx(1 / 33)
    assert result.p_value < 1e-6
    assert result.to_dict()["drifted_features"] == ["f5"]


def test_a_significant_but_small_shift_stays_below_the_effect_size_floor() -> None:
    rng = np.random.default_rng(SEED)
    ref, cur = normal(rng, 20_000, 2), normal(rng, 20_000, 2)
    cur[:, 0] += 0.08  # KS distance ~0.03: highly significant with 20k rows, but small
    result = detect(ref, cur, DriftSettings(min_statistic=0.1))
    assert result.p_value < 1e-6
    assert result.statistic < 0.1
    assert result.drift is False
    assert detect(ref, cur, DriftSettings(min_statistic=0.0)).drift is True


def test_cvm_test_detects_a_shift_and_keeps_ks_as_effect_size() -> None:
    rng = np.random.default_rng(SEED)
    ref, cur = normal(rng, 1000, 4), normal(rng, 500, 4)
    cur[:, 2] += 0.5
    result = detect(ref, cur, DriftSettings(test="cvm"))
    assert result.drifted == (2,)
    assert result.p_values[2] == pytest.approx(
        stats.cramervonmises_2samp(ref[:, 2], cur[:, 2]).pvalue
    )
    assert result.statistics == tuple(float(s) for s in ks_statistics(ref, cur))


@pytest.mark.parametrize("correction", ["bonferroni", "fdr"])
def test_false_alarm_rate_over_200_no_shift_trials_is_at_most_alpha(correction: str) -> None:
    """Calibration: 200 seeded drift-free windows (33 features, 1000 vs 500 rows) at α = 0.05.

    The number of false alarms is Binomial(200, ≤α): its 99.9 % upper bound for α = 0.05 is 21
    (scipy.stats.binom.ppf(0.999, 200, 0.05)); a miscalibrated test (e.g. no correction: ~82 %
    false alarms) is far above it. The floor is off so the test alone is calibrated.
    """
    alpha, trials = 0.05, 200
    rng = np.random.default_rng(SEED)
    settings = DriftSettings(alpha=alpha, correction=correction, min_statistic=0.0)  # type: ignore[arg-type]
    ref = normal(rng, 1000)
    alarms = sum(detect(ref, normal(rng, 500), settings).drift for _ in range(trials))
    bound = int(stats.binom.ppf(0.999, trials, alpha))
    assert bound == 21
    assert alarms <= bound, f"{alarms} false alarms in {trials} drift-free windows"


def test_without_correction_the_same_trials_would_alarm_far_too_often() -> None:
    """The calibration test can fail: per-feature α without correction alarms most windows."""
    rng = np.random.default_rng(SEED)
    ref = normal(rng, 1000)
    raw = DriftSettings(alpha=0.05 / 33, min_statistic=0.0)  # Bonferroni undone: α per feature
    alarms = 0
    for _ in range(50):
        p = detect(ref, normal(rng, 500), raw).p_values
        alarms += min(p) < 0.05
    assert alarms > 25


def test_mismatched_feature_counts_are_refused_with_both_numbers() -> None:
    with pytest.raises(
        DriftInputError, match="reference has 33 features per row but current has 32"
    ):
        check_inputs(np.zeros((10, 33)), np.zeros((10, 32)))


def test_nan_is_refused_with_its_position() -> None:
    cur = np.zeros((10, 3))
    cur[4, 2] = np.nan
    with pytest.raises(DriftInputError, match="the first at row 4, feature 2"):
        check_inputs(np.zeros((10, 3)), cur)


def test_too_few_rows_are_refused() -> None:
    with pytest.raises(DriftInputError, match="current has 50 rows; at least 200 are needed"):
        check_inputs(np.zeros((1000, 3)), np.zeros((50, 3)), min_current=200)


def test_impossible_settings_are_refused() -> None:
    with pytest.raises(DriftInputError, match="alpha must be between 0 and 1"):
        detect(np.zeros((10, 1)), np.zeros((10, 1)), DriftSettings(alpha=1.5))
