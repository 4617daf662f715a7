"""Statistics over seeds and test images: means with intervals, paired differences, Holm's correction,
seeds needed for a wanted resolution, time to a target accuracy.

An accuracy measured on a fixed test set varies twice: from seed to seed (initial weights, data
order) and with the draw of the test images themselves, which every seed shares. Intervals and
p-values here add both, as the variance of a two-stage sample (Cochran, *Sampling Techniques*,
3rd ed. 1977, ch. 10: seeds are the first stage, test images the second):

    Var(mean) = s_seeds^2 / n_seeds + Var_images(per-image correctness averaged over seeds) / n_images

with Student's t on n_seeds - 1 degrees of freedom. For a paired difference both terms are taken
on the per-seed and per-image differences. With a huge test set the image term vanishes and the
interval is exactly the paired t-interval over seeds; intervals are clipped to the scale
([0, 1] for accuracies, [-1, 1] for differences). Pure functions of plain lists and arrays.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
POWER = 0.8


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation over seeds and a 95% interval of the mean (seeds and test images)."""

    n: int
    mean: float
    std: float  # over seeds; nan with one value: no spread can be estimated
    ci_low: float
    ci_high: float
    image_se: float = 0.0  # the standard error the test images' draw alone adds (0 when unknown)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (candidate - baseline) over paired seeds, its interval, and its p-values (raw and Holm-adjusted)."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float
    std: float = math.nan  # of the per-seed differences
    image_se: float = 0.0
    p_adjusted: float = math.nan  # Holm-adjusted over the comparison's arms; set by `holm_adjusted`


def _image_variance(correct: Sequence[numpy.ndarray] | None) -> float:
    """Variance of the mean over test images of per-image correctness (or its difference), averaged over seeds."""
    if correct is None or not len(correct) or len(correct[0]) < 2:
        return 0.0
    per_image = numpy.mean(numpy.asarray(correct, dtype=float), axis=0)
    return float(per_image.var(ddof=1) / len(per_image))


def _interval(values: Sequence[float], image_variance: float, bounds: tuple[float, float]) -> tuple[float, float, float, float, float]:
    """mean, std over seeds, interval low and high, and the standard error of the mean."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan, math.nan
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    standard_error = math.sqrt(std**2 / n + image_variance)
    half_width = scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * standard_error
    return mean, std, max(bounds[0], mean - half_width), min(bounds[1], mean + half_width), standard_error


def summarize(values: Sequence[float], correct: Sequence[Sequence[bool]] | None = None) -> Summary:
    """Mean and 95% interval of accuracies over seeds; `correct` (one row per seed: which test images it
    got right) adds the test set's own sampling. With one value the spread and interval are nan."""
    if not values:
        raise ValueError("summarize needs at least one value")
    image_variance = _image_variance(correct)
    mean, std, low, high, _ = _interval(values, image_variance, (0.0, 1.0))
    return Summary(len(values), mean, std, low, high, math.sqrt(image_variance))


def paired_difference(candidate: Sequence[float], baseline: Sequence[float],
                      candidate_correct: Sequence[Sequence[bool]] | None = None,
                      baseline_correct: Sequence[Sequence[bool]] | None = None) -> PairedDifference:
    """Paired by position (seed): the mean difference, its 95% interval and a two-sided p-value, from
    seeds and (given each run's per-image correctness, paired image by image) the test images."""
    if len(candidate) != len(baseline) or not candidate:
        raise ValueError("paired_difference needs two equally long, non-empty lists")
    differences = [c - b for c, b in zip(candidate, baseline)]
    image_variance = 0.0
    if candidate_correct is not None and baseline_correct is not None:
        image_variance = _image_variance(numpy.asarray(candidate_correct, dtype=float) - numpy.asarray(baseline_correct, dtype=float))
    mean, std, low, high, standard_error = _interval(differences, image_variance, (-1.0, 1.0))
    if len(differences) < 2:
        p_value = math.nan
    elif standard_error == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(2 * scipy_stats.t.sf(abs(mean) / standard_error, len(differences) - 1))
    return PairedDifference(len(differences), mean, low, high, p_value, std, math.sqrt(image_variance))


def holm_adjusted(differences: Sequence[PairedDifference]) -> list[PairedDifference]:
    """The same differences with Holm's step-down adjusted p-values (Holm 1979), computed by statsmodels'
    `multipletests(method="holm")`; differences without a p-value keep nan and do not count."""
    from statsmodels.stats.multitest import multipletests

    tested = [i for i, d in enumerate(differences) if not math.isnan(d.p_value)]
    adjusted = [math.nan] * len(differences)
    if tested:
        corrected = multipletests([differences[i].p_value for i in tested], method="holm")[1]
        for i, p in zip(tested, corrected):
            adjusted[i] = float(p)
    return [replace(d, p_adjusted=p) for d, p in zip(differences, adjusted)]


def seeds_to_resolve(min_effect: float, seed_std: float, comparisons: int = 1) -> int | None:
    """Seeds a paired t-test needs to detect a difference of `min_effect` with 80% power at the 5% level,
    given the per-seed differences' standard deviation: statsmodels' `TTestPower.solve_power` (a one-sample
    t-test on the paired differences). With several `comparisons` the level is 5% / comparisons, the
    strictest step of Holm's correction, so the count holds wherever the difference falls in Holm's
    order. None where the spread is unknown or zero."""
    from statsmodels.stats.power import TTestPower

    if not seed_std > 0 or not min_effect > 0:
        return None
    with warnings.catch_warnings(), numpy.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        needed = TTestPower().solve_power(effect_size=min_effect / seed_std, alpha=(1 - CONFIDENCE) / comparisons,
                                            power=POWER)
    return max(2, math.ceil(float(numpy.asarray(needed).item())))


def epochs_to_target(accuracies: Sequence[float], target: float) -> int | None:
    """The first epoch (1-based) whose accuracy reaches `target`, or None if none does."""
    for epoch, accuracy in enumerate(accuracies, start=1):
        if accuracy >= target:
            return epoch
    return None


def seconds_to_target(accuracies: Sequence[float], elapsed_seconds: Sequence[float], target: float) -> float | None:
    """Training seconds until the end of the first epoch reaching `target`, or None."""
    epoch = epochs_to_target(accuracies, target)
    return None if epoch is None else elapsed_seconds[epoch - 1]


def area_under_curve(accuracies: Sequence[float]) -> float:
    """Trapezoidal area under accuracy-per-epoch, divided by the span: a mean accuracy over training."""
    if len(accuracies) == 1:
        return float(accuracies[0])
    area = math.fsum((a + b) / 2 for a, b in pairwise(accuracies))
    return area / (len(accuracies) - 1)
