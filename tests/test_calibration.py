"""The verdict's statistics, checked against comparisons simulated from a generative model of seeds and
test images, driving lrlab's own `paired_difference`, `holm_adjusted`, `equivalence_p` and
`seeds_to_resolve`.

The model: each test image has a difficulty shared by every arm and an arm x image effect; each seed
shifts every arm alike and each arm apart (the seed spread of a difference); each run's per-image
noise is correlated across arms within a seed (the same initial weights and batches). An image is
right when the sum crosses zero (a probit model), so every arm's accuracy over the population of
seeds and images, and every true difference, is known in closed form. Settings: 500 and 10,000 test
images, 3, 5 and 10 seeds, a low and a high seed spread (per-seed differences with an sd near 0.25
and 1.2 points at 10,000 images).

The default run uses REPLICATES comparisons per setting and asserts the pooled rates against the
issue's bounds and every setting's against them widened by 3 Monte Carlo standard errors (stated in
each message); `-m slow` runs SLOW_REPLICATES per setting and holds every setting to the bounds.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy
import pytest
from scipy import stats as scipy_stats

from lrlab.stats import (
    ALPHA,
    MIN_SEEDS_FOR_VERDICT,
    PairedDifference,
    equivalence_p,
    holm_adjusted,
    paired_difference,
    seeds_to_resolve,
)

SIGMA_IMAGE = 2.0  # image difficulty (probit scale): a few images almost always wrong, most always right
SIGMA_ARM_IMAGE = 0.3  # images one arm finds easier than another
SIGMA_SEED = 0.1  # a seed's shift of every arm alike
NOISE_SHARED = 0.7  # share of a run's per-image noise variance common to the arms of one seed
LOW_SPREAD, HIGH_SPREAD = 0.01, 0.1  # a seed's shift of one arm alone
BASE_SHIFT = scipy_stats.norm.ppf(0.9) * math.sqrt(SIGMA_IMAGE**2 + SIGMA_ARM_IMAGE**2 + SIGMA_SEED**2 + 1)  # ~90% accurate
EFFECT_SHIFT = 0.02  # one arm's shift: about +0.15 points
MIN_EFFECT = 0.005  # half a point, lrlab's default

SETTINGS = [(images, seeds, spread) for images in (500, 10_000) for seeds in (3, 5, 10) for spread in (LOW_SPREAD, HIGH_SPREAD)]
REPLICATES = 150
SLOW_REPLICATES = 1000
PILOTS = 200  # pilot comparisons per power check: the Monte Carlo se of the delivered power is about 0.025
CELLS_PER_BATCH = 3_000_000  # arms x seeds x images simulated at once (about 12 MB of float32)


def true_accuracy(shift: float, seed_spread: float) -> float:
    """An arm's accuracy over the population of seeds and images: every term of the latent sum is normal."""
    total = SIGMA_IMAGE**2 + SIGMA_ARM_IMAGE**2 + SIGMA_SEED**2 + seed_spread**2 + 1
    return float(scipy_stats.norm.cdf(shift / math.sqrt(total)))


def shift_for(difference: float, seed_spread: float) -> float:
    """The shift whose arm is `difference` more accurate than the baseline's."""
    total = SIGMA_IMAGE**2 + SIGMA_ARM_IMAGE**2 + SIGMA_SEED**2 + seed_spread**2 + 1
    return float(scipy_stats.norm.ppf(true_accuracy(BASE_SHIFT, seed_spread) + difference) * math.sqrt(total))


def simulate(rng: numpy.random.Generator, comparisons: int, seeds: int, images: int, shifts: list[float],
             seed_spread: float) -> numpy.ndarray:
    """correct[comparison, arm, seed, image]: which images each run got right, fresh images and seeds each time."""
    f = numpy.float32
    arms = len(shifts)
    latent = rng.standard_normal((comparisons, arms, seeds, images), dtype=f)
    latent *= f(math.sqrt(1 - NOISE_SHARED))
    latent += rng.standard_normal((comparisons, 1, seeds, images), dtype=f) * f(math.sqrt(NOISE_SHARED))
    latent += rng.standard_normal((comparisons, 1, 1, images), dtype=f) * f(SIGMA_IMAGE)
    latent += rng.standard_normal((comparisons, arms, 1, images), dtype=f) * f(SIGMA_ARM_IMAGE)
    latent += rng.standard_normal((comparisons, 1, seeds, 1), dtype=f) * f(SIGMA_SEED)
    latent += rng.standard_normal((comparisons, arms, seeds, 1), dtype=f) * f(seed_spread)
    latent += numpy.asarray(shifts, dtype=f)[None, :, None, None]
    return latent > 0


def batches(rng, comparisons: int, seeds: int, images: int, shifts: list[float], seed_spread: float):
    """The simulated comparisons, a memory-sized batch at a time, as (per-run accuracy, correctness) pairs."""
    size = max(1, CELLS_PER_BATCH // (len(shifts) * seeds * images))
    for start in range(0, comparisons, size):
        correct = simulate(rng, min(size, comparisons - start), seeds, images, shifts, seed_spread)
        yield from zip(correct.mean(axis=-1, dtype=float), correct)


def judged(accuracy: numpy.ndarray, correct: numpy.ndarray) -> list[PairedDifference]:
    """lrlab's judgement of every arm against arm 0, as the report makes it."""
    return holm_adjusted([paired_difference(accuracy[arm], accuracy[0], correct[arm], correct[0])
                          for arm in range(1, len(accuracy))])


def mc_error(rate: float, count: int) -> float:
    """Monte Carlo standard error of a rate measured over `count` replicates."""
    return math.sqrt(max(rate * (1 - rate), 0.01) / count)


@dataclass
class Outcome:
    """What happened in one setting's simulated comparisons."""

    covered: int = 0
    intervals: int = 0
    family_false_real: int = 0
    families: int = 0
    equivalent_nulls: int = 0
    nulls: int = 0
    width_points: list[float] = field(default_factory=list)


@cache
def calibration(replicates: int) -> dict[tuple[int, int, float], Outcome]:
    """Per setting: four arms, two identical to the baseline (true difference 0) and one EFFECT_SHIFT
    better, judged together with Holm's correction over the three comparisons."""
    rng = numpy.random.default_rng(20261201)
    outcomes = {}
    for images, seeds, spread in SETTINGS:
        outcome = outcomes[images, seeds, spread] = Outcome()
        effect = true_accuracy(BASE_SHIFT + EFFECT_SHIFT, spread) - true_accuracy(BASE_SHIFT, spread)
        truths = (0.0, 0.0, effect)
        for accuracy, correct in batches(rng, replicates, seeds, images,
                                         [BASE_SHIFT, BASE_SHIFT, BASE_SHIFT, BASE_SHIFT + EFFECT_SHIFT], spread):
            differences = judged(accuracy, correct)
            for difference, truth in zip(differences, truths):
                outcome.covered += difference.ci_low <= truth <= difference.ci_high
                outcome.intervals += 1
                outcome.width_points.append(100 * (difference.ci_high - difference.ci_low))
            outcome.family_false_real += any(d.p_adjusted < ALPHA for d in differences[:2])
            outcome.families += 1
            for difference in differences[:2]:
                low, high = difference.judged_interval
                outcome.equivalent_nulls += -MIN_EFFECT < low and high < MIN_EFFECT
                outcome.nulls += 1
    return outcomes


def _check_coverage(outcomes, per_setting_slack: float) -> None:
    pooled = sum(o.covered for o in outcomes.values()) / sum(o.intervals for o in outcomes.values())
    count = sum(o.intervals for o in outcomes.values())
    assert 0.92 <= pooled <= 0.98, f"pooled coverage {pooled:.3f} over {count} intervals (MC se {mc_error(pooled, count):.3f})"
    for setting, outcome in outcomes.items():
        rate = outcome.covered / outcome.intervals
        slack = per_setting_slack * mc_error(0.95, outcome.intervals)
        assert 0.92 - slack <= rate <= 0.98 + slack, (
            f"{setting} (images, seeds, spread): coverage {rate:.3f} over {outcome.intervals} intervals, "
            f"allowed [0.92, 0.98] +- {slack:.3f} ({per_setting_slack:g} MC standard errors)")


def _check_family_wise(outcomes, per_setting_slack: float) -> None:
    count = sum(o.families for o in outcomes.values())
    pooled = sum(o.family_false_real for o in outcomes.values()) / count
    assert pooled <= ALPHA + 2 * mc_error(ALPHA, count), (
        f"pooled family-wise false-'real' rate {pooled:.3f} over {count} comparisons, "
        f"allowed 0.05 + 2 MC se ({2 * mc_error(ALPHA, count):.3f})")
    for setting, outcome in outcomes.items():
        rate = outcome.family_false_real / outcome.families
        allowed = ALPHA + per_setting_slack * mc_error(ALPHA, outcome.families)
        assert rate <= allowed, f"{setting}: family-wise false-'real' rate {rate:.3f} over {outcome.families}, allowed {allowed:.3f}"


def test_intervals_cover_the_true_difference_about_95_percent_of_the_time():
    _check_coverage(calibration(REPLICATES), per_setting_slack=3)


def test_identical_arms_are_called_different_in_at_most_5_percent_of_comparisons_family_wise():
    _check_family_wise(calibration(REPLICATES), per_setting_slack=3)


def test_identical_arms_are_declared_equivalent_with_a_large_test_set_and_a_low_seed_spread():
    outcomes = calibration(REPLICATES)
    # Judged at Holm's level for three comparisons: the interval at 1 - 0.05/3 must lie inside +-0.5 points.
    outcome = outcomes[10_000, 10, LOW_SPREAD]
    rate = outcome.equivalent_nulls / outcome.nulls
    assert rate >= 0.9, f"10,000 images, 10 seeds, low spread: equivalence declared in {rate:.2f} of {outcome.nulls}"
    fewer = outcomes[10_000, 5, LOW_SPREAD]
    assert fewer.equivalent_nulls < outcome.equivalent_nulls, "five seeds pin the difference as well as ten"
    # 500 images cannot pin a difference within half a point, however steady the seeds.
    small = [outcomes[500, seeds, spread] for seeds in (3, 5, 10) for spread in (LOW_SPREAD, HIGH_SPREAD)]
    assert sum(o.equivalent_nulls for o in small) == 0


def test_a_difference_of_the_minimum_effect_is_rarely_declared_equivalent():
    rng = numpy.random.default_rng(7)
    shift = shift_for(MIN_EFFECT, LOW_SPREAD)
    declared, count = 0, 0
    for accuracy, correct in batches(rng, 150, 10, 10_000, [BASE_SHIFT, shift], LOW_SPREAD):
        difference = paired_difference(accuracy[1], accuracy[0], correct[1], correct[0])
        declared += equivalence_p(difference, MIN_EFFECT) < ALPHA
        count += 1
    rate = declared / count
    assert rate <= ALPHA + 2 * mc_error(ALPHA, count), f"declared equivalent in {rate:.3f} of {count} (MC se {mc_error(ALPHA, count):.3f})"


def delivered_power(rng, pilot_seeds: int, images: int, spread: float, pilots: int) -> tuple[float, float, int, int]:
    """Each pilot comparison plans its seeds with `seeds_to_resolve`; a fresh comparison with that many
    seeds (true difference: the minimum effect) then says whether it is real. Returns the mean power the
    plans promised, the share of fresh comparisons that found the difference, their count, and how many
    pilots answered with no count."""
    shift = shift_for(MIN_EFFECT, spread)
    plans = []
    for accuracy, correct in batches(rng, pilots, pilot_seeds, images, [BASE_SHIFT, shift], spread):
        plans.append(seeds_to_resolve(paired_difference(accuracy[1], accuracy[0], correct[1], correct[0]), MIN_EFFECT))
    counted = [plan for plan in plans if plan.seeds]
    found = 0
    for seeds in sorted({plan.seeds for plan in counted}):
        runs = sum(plan.seeds == seeds for plan in counted)
        for accuracy, correct in batches(rng, runs, max(seeds, MIN_SEEDS_FOR_VERDICT), images, [BASE_SHIFT, shift], spread):
            difference = paired_difference(accuracy[1], accuracy[0], correct[1], correct[0])
            found += difference.p_value < ALPHA and difference.mean > 0
    promised = sum(plan.power for plan in counted) / max(1, len(counted))
    return promised, found / max(1, len(counted)), len(counted), len(plans) - len(counted)


@pytest.mark.parametrize("pilot_seeds,spread", [(10, LOW_SPREAD), (5, 0.04)])
def test_the_seeds_recommended_deliver_the_power_they_promise(pilot_seeds, spread):
    promised, delivered, count, _ = delivered_power(numpy.random.default_rng(11), pilot_seeds, 10_000, spread, PILOTS)
    assert count >= 0.8 * PILOTS, f"only {count} of {PILOTS} pilots gave a seed count"
    assert abs(delivered - promised) <= 0.1, (
        f"promised {promised:.2f}, delivered {delivered:.2f} over {count} planned comparisons "
        f"(MC se {mc_error(delivered, count):.3f})")


def test_a_test_set_too_small_for_the_minimum_effect_gets_no_seed_count():
    rng = numpy.random.default_rng(13)
    shift = shift_for(MIN_EFFECT, LOW_SPREAD)
    plans = [seeds_to_resolve(paired_difference(accuracy[1], accuracy[0], correct[1], correct[0]), MIN_EFFECT)
             for accuracy, correct in batches(rng, 40, 5, 500, [BASE_SHIFT, shift], LOW_SPREAD)]
    # Where 500 images happen to look less varied than they are, the answer is "more than 100 seeds", or
    # once in a while a count near that, never a small one.
    assert sum(plan.limited_by == "test set" for plan in plans) >= 0.75 * len(plans), [p.limited_by for p in plans]
    assert all(plan.seeds is None or plan.seeds >= 50 for plan in plans), [p.seeds for p in plans]


@pytest.mark.slow
def test_every_setting_is_calibrated_over_many_comparisons():
    outcomes = calibration(SLOW_REPLICATES)
    _check_coverage(outcomes, per_setting_slack=0)
    _check_family_wise(outcomes, per_setting_slack=2)


@pytest.mark.slow
@pytest.mark.parametrize("pilot_seeds,spread", [(3, LOW_SPREAD), (3, 0.04), (5, LOW_SPREAD), (10, HIGH_SPREAD)])
def test_the_seeds_recommended_deliver_their_power_from_small_and_large_pilots(pilot_seeds, spread):
    promised, delivered, count, _ = delivered_power(numpy.random.default_rng(17), pilot_seeds, 10_000, spread, 400)
    assert abs(delivered - promised) <= 0.1, f"promised {promised:.2f}, delivered {delivered:.2f} over {count}"


def _set_final_test_accuracy(run: Path, accuracy: float) -> None:
    """Rewrite a finished run's last test accuracy, and drop its per-image record (as a torchrun run has none)."""
    path = run / "metrics.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[-1]["test_acc"] = repr(accuracy)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "correct.npz").unlink(missing_ok=True)


def test_a_report_of_runs_a_hundredth_of_a_point_apart_completes_and_says_what_it_can(tmp_path):
    from lrlab import RunConfig
    from lrlab.aggregate import aggregate
    from lrlab.comparison import Variant
    from lrlab.grid import run_comparison
    from lrlab.report import build_report, verdict

    base = RunConfig(dataset="digits", model="cnn", width=4, epochs=1, batch_size=64, limit_train=128, quiet=True,
                     optimizer="sgd:lr=0.05,momentum=0.9", out=str(tmp_path / "cmp"), device="cpu")
    variants = [Variant("fixed", "constant"), Variant("steady", "constant"), Variant("twin", "constant")]
    run_comparison(base, variants, [0, 1, 2], base.out, show_progress=False)
    # Per-seed differences with an sd of 0.01 points (+1 point), and of none (exactly +0.01 point each seed).
    gains = {"fixed": (0, 0, 0), "steady": (0.0100, 0.0101, 0.0099), "twin": (1e-4,) * 3}
    for result in aggregate(base.out).results:
        for seed, gain in zip((0, 1, 2), gains[result.label]):
            _set_final_test_accuracy(result.paths[seed], 0.9 + 0.01 * seed + gain)
    comparison = build_report(base.out)
    lines = verdict(comparison).splitlines()
    assert lines[0] == "Against fixed, minimum effect 0.5 points:"
    # One comparison is judged (twin has no spread), so its interval is the plain 95% one: t(2) * 0.01 / sqrt(3).
    assert lines[1] == "- steady: better, +1.00 points (95% interval +0.98 to +1.02, 3 seeds)."
    assert lines[2].startswith("- twin: not enough spread to judge: every one of 3 seeds differs by the same +0.01 points")
    assert "nan" not in "".join(lines) and "100" not in "".join(lines)
    assert "seeds only: these runs recorded no per-image correctness (correct.npz)" in lines[-1]
    steady = next(r for r in comparison.results if r.label == "steady")
    assert steady.seed_plan.limited_by == "" and steady.seed_plan.seeds == 3  # the fewest the verdict judges on
    assert (tmp_path / "cmp" / "plots" / "paired_difference.png").exists()
    summary = (tmp_path / "cmp" / "summary.md").read_text()
    assert "| better | [0.98, 1.02] (95%) |" in summary and "| no spread | n/a (no spread) |" in summary


def _verdict_of(arms: dict[str, tuple[list, list]], correct: dict[str, tuple] | None = None, test_images: int = 10_000) -> str:
    """The verdict on arms given as (candidate, baseline) final accuracies per seed, judged as `aggregate` judges."""
    from lrlab.aggregate import Comparison, ScheduleResult
    from lrlab.report import verdict
    from lrlab.stats import Summary

    correct = correct or {}
    raw = {label: paired_difference(c, b, *correct.get(label, (None, None))) for label, (c, b) in arms.items()}
    judged = dict(zip(raw, holm_adjusted(list(raw.values()))))

    def result(label, difference=None, seeds=3):
        summary = Summary(seeds, 0.9, 0.01, 0.88, 0.92)
        plan = seeds_to_resolve(difference, MIN_EFFECT, comparisons=len(judged)) if difference else None
        return ScheduleResult(label, label, "sgd", list(range(seeds)), dict.fromkeys(range(seeds), "finished"), summary,
                              summary, summary, difference, [], [], {}, {}, {}, seeds_needed=plan and plan.seeds,
                              seed_plan=plan)
    results = [result("base")] + [result(label, d, d.n) for label, d in judged.items()]
    return verdict(Comparison(Path("x"), "base", 0.9, 3, {}, results, test_images=test_images))


def test_one_and_two_seeds_give_no_nan_and_no_hundred_point_interval():
    text = _verdict_of({"one": ([0.92], [0.90]), "two": ([0.99, 0.5], [0.5, 0.99])})
    assert "- one: too few seeds to judge, +2.00 points from 1 seed; no interval from one seed; run at least 3 seeds" in text
    assert "- two: too few seeds to judge, +0.00 points from 2 seeds; run at least 3 seeds" in text
    assert "nan" not in text and "100" not in text


def test_each_schedule_gets_one_line_better_worse_equivalent_or_undecided_with_what_would_decide_it():
    base = [0.90, 0.91, 0.92, 0.90, 0.91]
    text = _verdict_of({
        "up": ([b + d for b, d in zip(base, (0.020, 0.022, 0.018, 0.021, 0.019))], base),
        "down": ([b - d for b, d in zip(base, (0.020, 0.022, 0.018, 0.021, 0.019))], base),
        "same": ([b + d for b, d in zip(base, (0.0002, -0.0001, 0.0001, 0.0, -0.0002))], base),
        "close": ([b + d for b, d in zip(base, (0.004, -0.002, 0.003, 0.0, 0.001))], base),
        "wild": ([b + d for b, d in zip(base, (0.06, -0.05, 0.04, -0.02, 0.01))], base),
    })
    lines = text.splitlines()
    assert lines[1].startswith("- up: better, +2.00 points (")
    assert lines[2].startswith("- down: worse, -2.00 points (")
    assert lines[3].startswith("- same: equivalent within ±0.5 points, +0.00 points (")
    assert lines[4].startswith("- close: undecided, +0.12 points (") and "more) on this test set would tell a 0.5-point difference" in lines[4]
    assert lines[5].startswith("- wild: undecided") and lines[5].endswith("more than 100 seeds would be needed to tell a 0.5-point difference at this spread.")


def test_an_undecided_schedule_on_a_coarse_test_set_is_told_seeds_will_not_help_and_given_no_count():
    rng = numpy.random.default_rng(8)
    baseline = rng.random((4, 200)) < 0.5
    candidate = baseline ^ (rng.random(200) < 0.1)  # a tenth of the images flip either way, in every seed alike
    text = _verdict_of({"coarse": (list(candidate.mean(axis=1)), list(baseline.mean(axis=1)))},
                       {"coarse": (candidate, baseline)}, test_images=200)
    line = text.splitlines()[1]
    assert line.startswith("- coarse: undecided") and "the test set (200 images) cannot resolve a 0.5-point difference" in line
    assert "seeds on this test set would" not in text and "The test set (200 images) is too small" in text
