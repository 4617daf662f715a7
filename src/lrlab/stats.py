"""Statistics over seeds and test images: means with intervals, paired differences, Holm's correction,
equivalence, seeds needed for a wanted resolution, time to a target accuracy.

An accuracy measured on a fixed test set varies twice: from seed to seed (initial weights, data
order) and with the draw of the test images, which every seed shares. Seeds and images are
*crossed*: the table of per-image correctness (or, for a paired difference, of per-image
differences) has one row per seed and one column per image, and every cell is filled. Its grand
mean is the accuracy (or the difference), and under the two-way random-effects model
x[s, i] = mu + a[s] + b[i] + e[s, i] its variance is

    Var(mean) = s_seed^2 / n + s_image^2 / N + s_interaction^2 / (n N)

(n seeds, N images). The components come from the mean squares of the two-way table without
replication (Searle, Casella & McCulloch, *Variance Components*, Wiley 1992; in generalizability
theory the p x i design, Brennan, *Generalizability Theory*, Springer 2001; for any exchangeable
crossed array, not only a normal one, Owen, "The pigeonhole bootstrap", Ann. Appl. Stat. 1:386-411,
2007):

    E[MS_seed] = s_int^2 + N s_seed^2,  E[MS_image] = s_int^2 + n s_image^2,  E[MS_residual] = s_int^2

so Var(mean) is estimated by two terms: MS_seed / (n N), the spread of the per-seed means / n, on
n - 1 degrees of freedom, which more seeds shrink; and (MS_image - MS_residual) / (n N), truncated
at zero, the test set's own draw, which no number of seeds shrinks. Their sum is
(MS_seed + MS_image - MS_residual) / (n N) wherever nothing is truncated. Intervals and p-values
give each term Student's t on its own degrees of freedom (Banerjee, Sankhya 22:357-358, 1960), which
held the error rates at 3 seeds where Satterthwaite's single df (Biometrics Bulletin 2:110-114, 1946)
did not; `tests/test_calibration.py` measures coverage, family-wise error, equivalence and the power
the seeds plan delivers by simulation. Without per-image correctness (runs that did not record it)
the variance is the spread over seeds / n on n - 1 degrees of freedom. Intervals are clipped to the
scale ([0, 1] for accuracies, [-1, 1] for differences). Pure functions of plain lists and arrays;
scipy does the distributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy
from scipy import special
from scipy import stats as scipy_stats
from scipy.optimize import brentq

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8
MAX_SEEDS = 100  # a plan needing more is reported as "more than MAX_SEEDS seeds"
MIN_SEEDS_FOR_VERDICT = 3  # a difference over fewer seeds is reported but never called real
DECIMALS = 9  # per-seed values are compared at this resolution: float noise is not spread


@dataclass(frozen=True)
class CrossedVariance:
    """The variance of the grand mean of a seeds x test-images table, in the two parts its interval treats
    apart, with the components behind them. `images` is 0 when only per-seed values were known."""

    seeds: int
    images: int
    seed: float  # s_seed^2, between seeds (truncated at 0)
    image: float  # s_image^2, between test images (0 without per-image correctness)
    interaction: float  # s_interaction^2, seed x image interaction and noise
    seed_term: float  # MS_seed / (n N) = s_seed^2 / n + s_interaction^2 / (n N): the spread of per-seed means / n
    image_term: float  # (MS_image - MS_residual) / (n N), truncated at 0: s_image^2 / N, which seeds cannot shrink

    @property
    def variance(self) -> float:
        """Of the grand mean: seed / n + image / N + interaction / (n N)."""
        return self.seed_term + self.image_term

    @property
    def seed_df(self) -> float:
        return self.seeds - 1.0

    @property
    def image_df(self) -> float:
        """Of MS_image, which carries the image term's uncertainty."""
        return max(1.0, self.images - 1.0)

    @property
    def df(self) -> float:
        """Satterthwaite's degrees of freedom of `variance` (for reference: the intervals use `half_width`)."""
        if not self.variance > 0:
            return math.nan
        spread = self.seed_term**2 / self.seed_df + (self.image_term**2 / self.image_df if self.image_term > 0 else 0.0)
        return self.variance**2 / spread

    def half_width(self, confidence: float) -> float:
        """Half the width of the interval at `confidence`: each part with Student's t on its own degrees of
        freedom, sqrt(t_{n-1}^2 seed_term + t_{image_df}^2 image_term) (Banerjee, Sankhya 22:357-358, 1960,
        for linear functions of means with separate variance estimates: never narrower than it should be).
        Satterthwaite's single df, tried first, rejected up to twice the nominal rate at 3 seeds in the
        calibration simulation, because a seed term underestimated by chance also raised its df."""
        tail = (1 - confidence) / 2  # scipy.special's t quantile: the same as stats.t.isf, 30x less overhead
        width = special.stdtrit(self.seed_df, tail) ** 2 * self.seed_term if self.seed_term > 0 else 0.0
        if self.image_term > 0:
            width += special.stdtrit(self.image_df, tail) ** 2 * self.image_term
        return math.sqrt(width)

    def level_at(self, half_width: float) -> float:
        """The two-sided level (1 - confidence) whose interval has this half width: the p-value of a
        distance `half_width` from the null (1 at zero distance); nan without any spread."""
        if not (self.variance > 0 and self.seeds > 1):
            return math.nan
        if half_width <= 0:
            return 1.0
        statistic = half_width / math.sqrt(self.variance)
        if not self.image_term > 0:
            return float(special.stdtr(self.seed_df, -statistic)) * 2
        # t's quantiles lie between the normal's and those on the smaller df, so the level lies between:
        low = max(float(special.ndtr(-statistic)) * 2, 1e-300)
        high = float(special.stdtr(min(self.seed_df, self.image_df), -statistic)) * 2
        if high <= low * (1 + 1e-9):
            return high
        try:
            return 10 ** brentq(lambda exponent: min(self.half_width(1 - 10**exponent), 1e300) - half_width,
                                math.log10(low), math.log10(high), xtol=1e-6)
        except ValueError:  # a bracket lost to rounding at the extremes: the bound on the safe side
            return high


def crossed_variance(table: numpy.ndarray | Sequence[Sequence[float]]) -> CrossedVariance:
    """Variance components of a seeds x images table (rows: seeds) from the mean squares of the two-way
    layout without replication, and the two terms of the variance of its grand mean."""
    table = numpy.asarray(table, dtype=float)
    n, images = table.shape
    if images < 2:
        return _over_seeds(table.mean(axis=1))
    if n < 2:
        return CrossedVariance(n, images, math.nan, math.nan, math.nan, math.nan, math.nan)
    seed_means, image_means = table.mean(axis=1), table.mean(axis=0)
    grand = seed_means.mean()
    ss_seed = images * float(numpy.sum((seed_means - grand) ** 2))
    ss_image = n * float(numpy.sum((image_means - grand) ** 2))
    ss_residual = max(0.0, float(numpy.sum((table - grand) ** 2)) - ss_seed - ss_image)
    ms_seed, ms_image = ss_seed / (n - 1), ss_image / (images - 1)
    ms_residual = ss_residual / ((n - 1) * (images - 1))
    # A component whose mean square falls below the residual's is estimated as zero. The seed term keeps
    # MS_seed whole: it is the spread of the per-seed means, on n - 1 degrees of freedom.
    return CrossedVariance(n, images, seed=max(0.0, (ms_seed - ms_residual) / images),
                           image=max(0.0, (ms_image - ms_residual) / n), interaction=ms_residual,
                           seed_term=ms_seed / (n * images), image_term=max(0.0, ms_image - ms_residual) / (n * images))


def _over_seeds(values: numpy.ndarray) -> CrossedVariance:
    """Per-seed values alone: the spread over seeds / n on n - 1 degrees of freedom."""
    n = len(values)
    if n < 2:
        return CrossedVariance(n, 0, math.nan, 0.0, 0.0, math.nan, 0.0)
    spread = float(numpy.var(numpy.round(values, DECIMALS), ddof=1))
    return CrossedVariance(n, 0, spread, 0.0, 0.0, spread / n, 0.0)


def _interval(mean: float, variance: CrossedVariance, confidence: float,
              bounds: tuple[float, float]) -> tuple[float, float]:
    if not (variance.variance > 0 and variance.seeds > 1):
        return math.nan, math.nan
    half_width = variance.half_width(confidence)
    return max(bounds[0], mean - half_width), min(bounds[1], mean + half_width)


def _table(correct, rows: int) -> numpy.ndarray | None:
    """Per-image correctness as a float table with one row per seed, or None where it does not fit."""
    if correct is None or len(correct) != rows:
        return None
    table = numpy.asarray(correct, dtype=float)
    return table if table.ndim == 2 and table.shape[1] >= 2 else None


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation over seeds and a 95% interval of the mean (seeds and test images)."""

    n: int
    mean: float
    std: float  # over seeds; nan with one value: no spread can be estimated
    ci_low: float  # nan with one seed or no spread at all
    ci_high: float
    image_se: float = 0.0  # the standard error the test images' draw alone adds, which seeds cannot shrink (0 when unknown)
    se: float = math.nan  # of the mean, seeds and test images together
    df: float = math.nan


def summarize(values: Sequence[float], correct: Sequence[Sequence[bool]] | None = None) -> Summary:
    """Mean and 95% interval of accuracies over seeds; `correct` (one row per seed: which test images it
    got right) makes it the crossed seeds x images interval. With one value the spread and interval are nan."""
    if not len(values):
        raise ValueError("summarize needs at least one value")
    values = numpy.asarray(values, dtype=float)
    mean = math.fsum(values) / len(values)
    table = _table(correct, len(values))
    variance = _over_seeds(values) if table is None else crossed_variance(table)
    low, high = _interval(mean, variance, CONFIDENCE, (0.0, 1.0))
    std = float(numpy.std(numpy.round(values, DECIMALS), ddof=1)) if len(values) > 1 else math.nan
    return Summary(len(values), mean, std, low, high, math.sqrt(variance.image_term), math.sqrt(variance.variance),
                   variance.df)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (candidate - baseline) over paired seeds, its interval, and its p-values (raw and Holm-adjusted).

    p_value is nan with one seed or no spread at all (never 0 from a zero standard error). The adjusted
    interval, set by `holm_adjusted`, is the one the verdict reads: it excludes zero exactly when the
    Holm-adjusted p is below 5%."""

    n: int
    mean: float
    ci_low: float  # 95%, this difference alone
    ci_high: float
    p_value: float
    std: float = math.nan  # of the per-seed differences
    image_se: float = 0.0  # the part of the standard error more seeds cannot shrink
    p_adjusted: float = math.nan  # Holm-adjusted over the comparison's arms; set by `holm_adjusted`
    se: float = math.nan  # standard error of the mean difference (seeds, images and their interaction)
    df: float = math.nan  # Satterthwaite's degrees of freedom of `se`
    variance: CrossedVariance | None = None  # the components behind `se`, for planning seeds
    improvement: float = math.nan  # share of seeds in which the candidate beats the baseline (ties count half)
    improvement_low: float = math.nan  # its 95% Wilson interval
    improvement_high: float = math.nan
    ci_low_adjusted: float = math.nan  # at `confidence_adjusted`, the level Holm's step judged it at
    ci_high_adjusted: float = math.nan
    confidence_adjusted: float = math.nan

    @property
    def judged_interval(self) -> tuple[float, float]:
        """The Holm-level interval once `holm_adjusted` has set it, the plain 95% one before."""
        if math.isnan(self.confidence_adjusted):
            return self.ci_low, self.ci_high
        return self.ci_low_adjusted, self.ci_high_adjusted


def paired_difference(candidate: Sequence[float], baseline: Sequence[float],
                      candidate_correct: Sequence[Sequence[bool]] | None = None,
                      baseline_correct: Sequence[Sequence[bool]] | None = None) -> PairedDifference:
    """Paired by position (seed): the mean difference, its 95% interval and a two-sided p-value, from seeds
    and, given each run's per-image correctness (paired image by image), the test images: the crossed
    variance of the table of per-image differences (see `CrossedVariance.half_width`). With fewer than 2
    distinct per-seed differences and no per-image correctness there is no spread to judge by: the
    interval and p are nan, never a p of 0 from a zero standard error."""
    if len(candidate) != len(baseline) or not len(candidate):
        raise ValueError("paired_difference needs two equally long, non-empty lists")
    differences = numpy.asarray(candidate, dtype=float) - numpy.asarray(baseline, dtype=float)
    n = len(differences)
    mean = math.fsum(differences) / n
    tables = _table(candidate_correct, n), _table(baseline_correct, n)
    if tables[0] is not None and tables[1] is not None and tables[0].shape == tables[1].shape:
        variance = crossed_variance(tables[0] - tables[1])
    else:
        variance = _over_seeds(differences)
    low, high = _interval(mean, variance, CONFIDENCE, (-1.0, 1.0))
    se = math.sqrt(variance.variance) if variance.variance > 0 else math.nan
    p_value = variance.level_at(abs(mean))
    rounded = numpy.round(differences, DECIMALS)
    wins = float(numpy.sum(rounded > 0) + 0.5 * numpy.sum(rounded == 0))
    improvement_low, improvement_high = _wilson(wins, n)
    return PairedDifference(
        n, mean, low, high, p_value,
        std=float(numpy.std(rounded, ddof=1)) if n > 1 else math.nan,
        image_se=math.sqrt(variance.image_term),
        se=se, df=variance.df, variance=variance,
        improvement=wins / n, improvement_low=improvement_low, improvement_high=improvement_high)


def _wilson(successes: float, trials: int) -> tuple[float, float]:
    """Wilson's 95% interval of a share (statsmodels' `proportion_confint`)."""
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(successes, trials, alpha=ALPHA, method="wilson")
    return float(low), float(high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the k-th smallest p times (m - k + 1), made monotone
    and capped at 1; nan p-values stay nan and do not count as tests. Equal to statsmodels'
    `multipletests(method="holm")` (a test checks), which runs a full garbage collection on every call
    (about 0.1 s): too slow for a sequential study or a simulation that adjusts thousands of times."""
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    order = sorted(tested, key=lambda i: p_values[i])
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def holm_adjusted(differences: Sequence[PairedDifference], alpha: float = ALPHA) -> list[PairedDifference]:
    """The same differences with Holm-adjusted p-values and, beside them, the interval at the level Holm's
    procedure judged each at: 1 - 0.05/k, k the hypotheses still open at its step (for those it did not
    reject, at the step where it stopped). Such an interval excludes zero exactly when the adjusted p is
    below 5%, so the interval shown never contradicts the verdict; each holds its own difference with at
    least 95% confidence (they are not a simultaneous set). `alpha` is the family's level: 5%, or less
    where a sequential study looked several times (lrlab.study.sequential_level)."""
    adjusted = holm([d.p_value for d in differences])
    tested = sorted((i for i, p in enumerate(adjusted) if not math.isnan(p)), key=lambda i: differences[i].p_value)
    rejected = sum(adjusted[i] < alpha for i in tested)
    result = list(differences)
    for rank, i in enumerate(tested):
        d = differences[i]
        level = alpha / (len(tested) - min(rank, rejected))
        low, high = (math.nan, math.nan) if d.variance is None else _interval(d.mean, d.variance, 1 - level, (-1.0, 1.0))
        if math.isnan(low):  # a difference built without its variance: its plain 95% interval, said so
            low, high, level = d.ci_low, d.ci_high, ALPHA
        result[i] = replace(d, p_adjusted=adjusted[i], ci_low_adjusted=low, ci_high_adjusted=high,
                            confidence_adjusted=1 - level)
    return [replace(d, p_adjusted=p) if math.isnan(p) else d for d, p in zip(result, adjusted)]


def equivalence_p(difference: PairedDifference, min_effect: float) -> float:
    """p-value for "the true difference lies within +-min_effect", on the same crossed variance as the
    difference test: two one-sided tests (Schuirmann 1987) in their interval-inclusion form, so
    `equivalence_p(d, m) < alpha` exactly when d's (1 - alpha) interval lies inside (-m, +m). 1 when the
    observed difference is already min_effect or more; nan with one seed or no spread."""
    if difference.variance is None or not min_effect > 0:
        return math.nan
    return difference.variance.level_at(min_effect - abs(difference.mean))


@dataclass(frozen=True)
class SeedPlan:
    """How many seeds would tell a difference of the minimum effect, or why no number of seeds would."""

    seeds: int | None  # the fewest with at least POWER; None when none up to MAX_SEEDS has it
    power: float  # the power of `seeds` (of MAX_SEEDS when None), under the variance model it was planned on
    limited_by: str  # "" (a count was found), "test set" (its image term alone hides the effect),
    #                  "seeds" (more than MAX_SEEDS), "unknown" (no spread to plan from)


def power_at(variance: CrossedVariance, seeds, effect: float, alpha: float = ALPHA) -> numpy.ndarray:
    """The power the verdict's test (its interval, `CrossedVariance.half_width`, excludes zero) can be
    expected to have to find a true difference of `effect` with `seeds` seeds (math.inf: unlimited) on
    the same test set.

    The pilot knows the image term through MS_image's N - 1 degrees of freedom and a seed's own variance
    as the interaction's share (pinned down by thousands of images) plus an excess known only to its
    n - 1, so the power is averaged over what the pilot leaves possible (scaled inverse chi-squares):
    the expected power or "assurance" of O'Hagan, Stevens & Campbell, Pharm. Stat. 4:187-201, 2005.
    In the calibration simulation, plugging in the pilot's estimates promised 0.83 and delivered 0.70;
    averaging over a seed's whole variance delivered up to 0.13 more than it promised with 3-5 pilot
    seeds and no seed effect; this delivers within 0.1 of its promise in every setting tried. Within
    each possibility the mean difference is normal and the interval's half width random through the
    future seed term's chi-square."""
    seeds = numpy.atleast_1d(numpy.asarray(seeds, dtype=float))[:, None, None, None]
    per_seed = variance.seed_term * variance.seeds  # MS_seed / N: one seed's variance (seed + interaction / N)
    floor = variance.interaction / variance.images if variance.images else 0.0
    # Axes: seeds, a seed's possible variance, the image term's possible value, the future seed term's estimate.
    possible_seed = (floor + max(0.0, per_seed - floor) / _chi2_quantiles(variance.seed_df))[None, :, None, None]
    ms_image = variance.image_term * variance.seeds * variance.images + variance.interaction
    possible_image = (numpy.maximum(0.0, ms_image / _chi2_quantiles(variance.image_df) - variance.interaction)
                      / (variance.seeds * variance.images))[None, None, :, None] if variance.images else numpy.zeros((1, 1, 1, 1))
    finite = numpy.isfinite(seeds)
    df = numpy.where(finite, seeds - 1, 1.0)
    seed_term = numpy.where(finite, possible_seed / numpy.where(finite, seeds, 1.0), 0.0)
    estimate = seed_term * _chi2_quantiles(df[:, 0, 0, 0])[:, None, None, :]
    image_critical = special.stdtrit(variance.image_df, alpha / 2) ** 2
    half = numpy.sqrt(special.stdtrit(df, alpha / 2) ** 2 * estimate + image_critical * possible_image)
    sd = numpy.sqrt(seed_term + possible_image)
    with numpy.errstate(divide="ignore", invalid="ignore"):
        power = special.ndtr((effect - half) / sd) + special.ndtr((-effect - half) / sd)
    return numpy.nan_to_num(power, nan=1.0).mean(axis=(1, 2, 3))


_DRAWS = 16  # quantiles of each chi-square `power_at` averages over


def _chi2_quantiles(df) -> numpy.ndarray:
    """Midpoint quantiles of chi-square(df) / df, on a new last axis (all ones for infinite df)."""
    df = numpy.asarray(df, dtype=float)
    if not numpy.all(numpy.isfinite(df)):
        return numpy.ones((*df.shape, _DRAWS))
    return scipy_stats.chi2.ppf((numpy.arange(_DRAWS) + 0.5) / _DRAWS, df[..., None]) / df[..., None]


def seeds_to_resolve(difference: PairedDifference, min_effect: float, comparisons: int = 1) -> SeedPlan:
    """The fewest seeds (on the same test set, at least MIN_SEEDS_FOR_VERDICT) whose verdict can be expected
    to call a true difference of `min_effect` real with 80% power at the 5% level divided by
    `comparisons` (the strictest step of Holm's correction), from this difference's variance
    (`power_at`). Never a count and "the test set cannot resolve it" together: when even unlimited
    seeds leave the image term too wide, that is the answer; past MAX_SEEDS the answer is "more than
    MAX_SEEDS". Never nan or an error: "unknown" without a spread to plan from."""
    variance = difference.variance
    if variance is None or not variance.variance > 0 or not min_effect > 0 or variance.seeds < 2:
        return SeedPlan(None, math.nan, "unknown")
    alpha = ALPHA / max(1, comparisons)
    limit = float(power_at(variance, math.inf, min_effect, alpha)[0])
    if limit < POWER:
        return SeedPlan(None, limit, "test set")
    low, high = MIN_SEEDS_FOR_VERDICT, MAX_SEEDS  # power grows with seeds: bisect for the fewest with enough
    power_high = float(power_at(variance, high, min_effect, alpha)[0])
    if power_high < POWER:
        return SeedPlan(None, power_high, "seeds")
    power_low = float(power_at(variance, low, min_effect, alpha)[0])
    if power_low >= POWER:
        return SeedPlan(low, power_low, "")
    while high - low > 1:
        middle = (low + high) // 2
        power = float(power_at(variance, middle, min_effect, alpha)[0])
        low, high, power_high = (low, middle, power) if power >= POWER else (middle, high, power_high)
    return SeedPlan(high, power_high, "")


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
