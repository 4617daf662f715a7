import math

import pytest

import numpy

from lrlab.stats import (
    area_under_curve,
    epochs_to_target,
    holm_adjusted,
    paired_difference,
    seconds_to_target,
    seeds_to_resolve,
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


def _correctness(accuracy: float, images: int, seed: int) -> numpy.ndarray:
    right = numpy.zeros(images, dtype=bool)
    right[numpy.random.default_rng(seed).permutation(images)[: round(accuracy * images)]] = True
    return right


def test_a_huge_test_set_gives_the_t_interval_over_seeds():
    values = [0.90, 0.92, 0.94]
    correct = [_correctness(v, 2_000_000, seed) for seed, v in enumerate(values)]
    with_images, seeds_only = summarize(values, correct), summarize(values)
    assert (with_images.ci_low, with_images.ci_high) == pytest.approx((seeds_only.ci_low, seeds_only.ci_high), abs=2e-3)


def test_a_small_test_set_widens_the_interval_by_its_own_sampling():
    values = [0.90, 0.92, 0.94]
    correct = [_correctness(v, 50, seed) for seed, v in enumerate(values)]
    summary = summarize(values, correct)
    per_image = numpy.mean(correct, axis=0)
    standard_error = math.sqrt(0.02**2 / 3 + per_image.var(ddof=1) / 50)
    assert summary.ci_high == pytest.approx(min(1.0, 0.92 + T_975_DF2 * standard_error))
    assert summary.ci_high - summary.ci_low > summarize(values).ci_high - summarize(values).ci_low


def test_intervals_stay_on_the_accuracy_scale():
    summary = summarize([0.98, 1.0, 1.0], [_correctness(a, 40, s) for s, a in enumerate([0.975, 1.0, 1.0])])
    assert 0 <= summary.ci_low and summary.ci_high <= 1
    difference = paired_difference([1.0, 1.0], [0.0, 0.1])
    assert -1 <= difference.ci_low and difference.ci_high <= 1


def test_two_seeds_that_miss_the_same_one_of_six_images_are_not_a_certain_difference():
    # The folder: both seeds lose the same test image, so the spread over seeds is zero.
    baseline = [numpy.ones(6, dtype=bool)] * 2
    candidate = [numpy.array([False, True, True, True, True, True])] * 2
    result = paired_difference([5 / 6, 5 / 6], [1.0, 1.0], candidate, baseline)
    assert result.mean == pytest.approx(-1 / 6) and result.std == 0
    # Per-image differences (-1, 0, 0, 0, 0, 0): variance 1/6, so the standard error is sqrt(1/6 / 6) = 1/6;
    # t = 1 on one degree of freedom: p = 0.5.
    assert result.image_se == pytest.approx(1 / 6) and result.p_value == pytest.approx(0.5)
    assert result.ci_low == -1 and result.ci_high > 0


def test_holm_adjusts_as_the_step_down_procedure_says():
    raw = [paired_difference([0.9, 0.9 + d, 0.92], [0.9, 0.9, 0.9]) for d in (0.01, 0.02, 0.03)]
    adjusted = holm_adjusted(raw)
    order = sorted(range(3), key=lambda i: raw[i].p_value)
    expected, running = {}, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[i].p_value))
        expected[i] = running
    assert [d.p_adjusted for d in adjusted] == pytest.approx([expected[i] for i in range(3)])
    assert [d.p_value for d in adjusted] == [d.p_value for d in raw]


def test_seeds_to_resolve_matches_the_paired_t_power_table():
    # Cohen's d = 0.5 needs 34 pairs for 80% power at the 5% level (two-sided paired t-test).
    assert seeds_to_resolve(0.005, 0.01) == 34
    # Five comparisons with the baseline: the 1% level of Holm's strictest step; the normal
    # approximation ((2.576 + 0.842) / 0.5)^2 + 2.576^2 / 2 = 50.0 pairs, t's heavier tails one more.
    assert seeds_to_resolve(0.005, 0.01, comparisons=5) == 51
    assert seeds_to_resolve(0.005, 0.0) is None and seeds_to_resolve(0.005, math.nan) is None


def test_identical_values_raise_no_numerical_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summarize([0.9, 0.9, 0.9], [numpy.ones(10, dtype=bool)] * 3)
        paired_difference([0.9, 0.9, 0.9], [0.9, 0.9, 0.9])
        holm_adjusted([paired_difference([0.9, 0.9], [0.9, 0.9])])
