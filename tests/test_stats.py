import math

import pytest

import numpy

from lrlab.stats import (
    MAX_SEEDS,
    area_under_curve,
    crossed_variance,
    epochs_to_target,
    equivalence_p,
    holm,
    holm_adjusted,
    paired_difference,
    power_at,
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
    candidate = [b + gain for b, gain in zip(baseline, (0.010, 0.011, 0.009, 0.010))]
    result = paired_difference(candidate, baseline)
    assert result.ci_low > 0.008 and result.p_value < 1e-3


def test_identical_per_seed_differences_are_not_enough_spread_to_judge_never_p_0():
    # Three seeds that each gain exactly one image of 10,000: the accuracies' float noise is not spread.
    result = paired_difference([0.9012, 0.9013, 0.9014], [0.9011, 0.9012, 0.9013])
    assert result.mean == pytest.approx(1e-4) and result.std == 0
    assert math.isnan(result.p_value) and math.isnan(result.ci_low) and math.isnan(result.se)
    assert holm_adjusted([result])[0].p_adjusted != holm_adjusted([result])[0].p_adjusted  # nan stays nan


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


def test_crossed_components_are_the_two_way_anova_mean_squares_of_statsmodels():
    import pandas
    from statsmodels.formula.api import ols
    from statsmodels.stats.anova import anova_lm

    rng = numpy.random.default_rng(3)
    # Images of varied difficulty, seeds of varied skill.
    table = (rng.random((4, 30)) < numpy.linspace(0.5, 0.95, 30) + numpy.array([[-0.3], [0.0], [0.1], [0.2]])).astype(float)
    frame = pandas.DataFrame({"y": table.ravel(), "seed": numpy.repeat(numpy.arange(4), 30), "image": numpy.tile(numpy.arange(30), 4)})
    anova = anova_lm(ols("y ~ C(seed) + C(image)", frame).fit())
    ms_seed, ms_image, ms_residual = anova["mean_sq"]
    variance = crossed_variance(table)
    assert variance.interaction == pytest.approx(ms_residual)
    assert variance.seed_term == pytest.approx(ms_seed / 120)
    assert variance.image_term == pytest.approx(max(0.0, ms_image - ms_residual) / 120)
    assert variance.seed == pytest.approx(max(0.0, (ms_seed - ms_residual) / 30))
    # Var(mean) = s_seed^2 / n + s_image^2 / N + s_interaction^2 / (n N), each component as estimated.
    assert variance.seed > 0 and variance.image > 0
    assert variance.variance == pytest.approx(max(variance.seed, 0) / 4 + variance.image / 30 + variance.interaction / 120)


def test_a_small_test_set_widens_the_interval_by_its_own_sampling():
    values = [0.90, 0.92, 0.94]
    difficulty = numpy.random.default_rng(1).random(50)  # shared by the seeds: the test set's own draw
    correct = [difficulty < v for v in values]
    summary = summarize(values, correct)
    variance = crossed_variance(numpy.asarray(correct, dtype=float))
    assert summary.image_se == pytest.approx(math.sqrt(variance.image_term)) and summary.image_se > 0.02
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
    # Per-image differences (-1, 0, 0, 0, 0, 0) in both seeds: no seed term; MS_image = 2 * (5/6) / 5 = 1/3,
    # so the image term is (1/3) / 12 = 1/36, a standard error of 1/6; t = 1 on 5 degrees of freedom.
    assert result.image_se == pytest.approx(1 / 6) and result.se == pytest.approx(1 / 6)
    assert result.p_value == pytest.approx(2 * 0.18160873382456127)
    assert result.ci_low < -1 / 6 < 0 < result.ci_high


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


def test_holm_agrees_with_statsmodels_and_leaves_nan_out():
    from statsmodels.stats.multitest import multipletests

    p_values = [0.01, 0.04, 0.03, 0.2, 0.005]
    assert holm(p_values) == pytest.approx(list(multipletests(p_values, method="holm")[1]))
    assert holm([0.01, math.nan, 0.04])[0] == pytest.approx(0.02) and math.isnan(holm([0.01, math.nan, 0.04])[1])


def test_the_judged_interval_excludes_zero_exactly_when_the_adjusted_p_is_below_5_percent():
    rng = numpy.random.default_rng(4)
    for _ in range(30):
        baseline = rng.normal(0.9, 0.01, 4)
        raw = [paired_difference(baseline + rng.normal(shift, 0.008, 4), baseline) for shift in rng.normal(0, 0.01, 3)]
        for difference in holm_adjusted(raw):
            low, high = difference.judged_interval
            assert (low > 0 or high < 0) == (difference.p_adjusted < 0.05)
            assert difference.confidence_adjusted >= 0.95 and high - low >= difference.ci_high - difference.ci_low - 1e-12


def test_equivalence_is_two_one_sided_tests_each_at_half_the_level():
    from statsmodels.stats.weightstats import ttost_paired

    rng = numpy.random.default_rng(5)
    baseline = rng.normal(0.9, 0.01, 6)
    candidate = baseline + rng.normal(0.001, 0.002, 6)
    difference = paired_difference(candidate, baseline)
    p_tost = ttost_paired(candidate, baseline, -0.005, 0.005)[0]
    assert equivalence_p(difference, 0.005) == pytest.approx(2 * p_tost, rel=1e-4)
    # and so, at 5%, exactly when the 95% interval lies inside +-min_effect:
    assert (equivalence_p(difference, 0.005) < 0.05) == (-0.005 < difference.ci_low and difference.ci_high < 0.005)
    assert equivalence_p(difference, 0.0001) == 1.0  # the observed difference is already larger
    assert math.isnan(equivalence_p(paired_difference([0.9], [0.9]), 0.005))


def test_probability_of_improvement_is_the_share_of_seeds_won_with_wilsons_interval():
    from statsmodels.stats.proportion import proportion_confint

    result = paired_difference([0.91, 0.92, 0.90, 0.93], [0.90, 0.91, 0.90, 0.94])  # won, won, tied, lost
    assert result.improvement == pytest.approx(2.5 / 4)
    assert (result.improvement_low, result.improvement_high) == pytest.approx(proportion_confint(2.5, 4, method="wilson"))


def _seeds_only(std: float, mean: float = 0.0, seeds: int = 4000) -> object:
    """A difference known from many seeds with this spread (no per-image correctness)."""
    values = numpy.random.default_rng(6).standard_normal(seeds)
    values = mean + std * (values - values.mean()) / values.std(ddof=1)
    return paired_difference(list(values + 0.5), [0.5] * seeds)


def test_planned_power_is_the_paired_t_tests_when_the_spread_is_well_known():
    from statsmodels.stats.power import TTestPower

    difference = _seeds_only(0.01)
    for seeds in (10, 34):
        expected = TTestPower().power(effect_size=0.5, nobs=seeds, alpha=0.05)
        assert power_at(difference.variance, seeds, 0.005)[0] == pytest.approx(expected, abs=0.01)
    # Cohen's d = 0.5 needs 34 pairs for 80% power at the 5% level (two-sided paired t-test).
    assert seeds_to_resolve(difference, 0.005).seeds in (34, 35)
    # Five comparisons with the baseline: the 1% level of Holm's strictest step, about 51 pairs.
    assert seeds_to_resolve(difference, 0.005, comparisons=5).seeds in (51, 52)


def test_seeds_to_resolve_never_fails_and_never_promises_what_the_test_set_cannot_give():
    # A spread of 0.01 points against half a point: the fewest seeds that may judge, not nan or an error.
    tiny = seeds_to_resolve(paired_difference([0.9001, 0.9000, 0.9002], [0.89, 0.89, 0.89]), 0.005)
    assert tiny.seeds == 3 and tiny.power > 0.8 and tiny.limited_by == ""
    assert seeds_to_resolve(paired_difference([0.9, 0.9, 0.9], [0.9, 0.9, 0.9]), 0.005).limited_by == "unknown"
    assert seeds_to_resolve(paired_difference([0.9], [0.9]), 0.005).limited_by == "unknown"
    wide = seeds_to_resolve(_seeds_only(0.05), 0.005)
    assert wide.seeds is None and wide.limited_by == "seeds" and wide.power < 0.8  # more than MAX_SEEDS
    assert MAX_SEEDS == 100
    # 200 images, a tenth of them flipped between the arms in every seed alike: only more images would tell.
    rng = numpy.random.default_rng(7)
    baseline = rng.random((5, 200)) < 0.9
    flipped = rng.random(200) < 0.1
    candidate = baseline ^ flipped
    coarse = paired_difference(candidate.mean(axis=1), baseline.mean(axis=1), candidate, baseline)
    plan = seeds_to_resolve(coarse, 0.005)
    assert plan.seeds is None and plan.limited_by == "test set"


def test_identical_values_raise_no_numerical_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summarize([0.9, 0.9, 0.9], [numpy.ones(10, dtype=bool)] * 3)
        paired_difference([0.9, 0.9, 0.9], [0.9, 0.9, 0.9])
        holm_adjusted([paired_difference([0.9, 0.9], [0.9, 0.9])])


def test_no_table_of_right_and_wrong_makes_the_statistics_fail_or_give_nan_p_with_spread():
    # Tables built to hit the edges: identical seeds, identical images, all right, all wrong, one seed.
    rng = numpy.random.default_rng(9)
    for _ in range(120):
        seeds, images = int(rng.integers(1, 6)), int(rng.integers(2, 40))
        shape = (seeds, images)
        baseline = rng.random(shape) < rng.choice([0.0, 0.5, 0.95, 1.0])
        candidate = rng.choice([baseline, baseline ^ (rng.random(images) < 0.2), rng.random(shape) < 0.7,
                                numpy.repeat(rng.random((1, images)) < 0.6, seeds, axis=0)])
        difference = paired_difference(candidate.mean(axis=1), baseline.mean(axis=1), candidate, baseline)
        (judged,) = holm_adjusted([difference])
        plan = seeds_to_resolve(judged, 0.005, comparisons=3)
        equivalent = equivalence_p(judged, 0.005)
        for p in (difference.p_value, equivalent):
            assert math.isnan(p) or 0 <= p <= 1
        assert math.isnan(difference.p_value) == (seeds < 2 or not difference.se > 0)
        assert plan.limited_by in ("", "seeds", "test set", "unknown") and (plan.seeds is None) == (plan.limited_by != "")
