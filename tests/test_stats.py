import math

import pytest

from lrlab.stats import (
    area_under_curve,
    epochs_to_target,
    paired_difference,
    seconds_to_target,
    summarize,
)

T_975_DF2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (from tables)


def test_summary_of_three_values_matches_the_hand_computation():
    summary = summarize([0.90, 0.92, 0.94])
    half_width = T_975_DF2 * 0.02 / math.sqrt(3)
    assert summary.n == 3
    assert summary.mean == pytest.approx(0.92)
    assert summary.std == pytest.approx(0.02)
    assert (summary.ci_low, summary.ci_high) == pytest.approx((0.92 - half_width, 0.92 + half_width))


def test_one_value_gives_no_spread_and_no_interval():
    summary = summarize([0.9])
    assert summary.mean == 0.9 and math.isnan(summary.std) and math.isnan(summary.ci_low) and math.isnan(summary.ci_high)


def test_paired_difference_matches_the_hand_computation():
    # Differences 0.01, 0.02, 0.01: mean 1/75, sd 0.005774, t = 4.0 on 2 degrees of freedom.
    result = paired_difference([0.91, 0.94, 0.95], [0.90, 0.92, 0.94])
    standard_error = math.sqrt(1 / 3 * 1e-4) / math.sqrt(3)
    assert result.mean == pytest.approx(0.04 / 3)
    assert (result.ci_low, result.ci_high) == pytest.approx((0.04 / 3 - T_975_DF2 * standard_error, 0.04 / 3 + T_975_DF2 * standard_error))
    # For 2 degrees of freedom the t distribution has a closed form: p = 1 - t / sqrt(2 + t^2).
    assert result.p_value == pytest.approx(1 - 4 / math.sqrt(18))


def test_pairing_matters_a_consistent_small_gain_is_detected():
    baseline = [0.80, 0.90, 0.85, 0.95]
    candidate = [b + 0.01 for b in baseline]
    result = paired_difference(candidate, baseline)
    assert result.ci_low == pytest.approx(0.01) and result.p_value == 0.0


def test_paired_difference_with_one_seed_has_no_interval():
    result = paired_difference([0.92], [0.90])
    assert result.mean == pytest.approx(0.02) and math.isnan(result.ci_low) and math.isnan(result.p_value)


def test_paired_difference_refuses_unequal_lengths():
    with pytest.raises(ValueError):
        paired_difference([0.9, 0.8], [0.9])


def test_epochs_and_seconds_to_target():
    accuracies, elapsed = [0.5, 0.7, 0.9], [10.0, 20.0, 30.0]
    assert epochs_to_target(accuracies, 0.7) == 2
    assert seconds_to_target(accuracies, elapsed, 0.7) == 20.0
    assert epochs_to_target(accuracies, 0.95) is None and seconds_to_target(accuracies, elapsed, 0.95) is None


def test_area_under_the_accuracy_curve_is_the_trapezoid_mean():
    assert area_under_curve([0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert area_under_curve([0.5, 0.5, 1.0]) == pytest.approx((0.5 + 0.75) / 2)
    assert area_under_curve([0.8]) == 0.8
