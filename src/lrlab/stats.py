"""Statistics over seeds: means with t-intervals, paired differences, time to a target accuracy.

Pure functions of plain lists, so each is checked against numbers worked out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and a t-based confidence interval of the mean."""

    n: int
    mean: float
    std: float  # nan with one value: no spread can be estimated
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (candidate - baseline) over paired seeds, its interval and a paired t-test p-value."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float


def _t_interval(values: Sequence[float]) -> tuple[float, float, float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half_width = scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)
    return mean, std, mean - half_width, mean + half_width


def summarize(values: Sequence[float]) -> Summary:
    """Mean and 95% t-interval; with one value the spread and interval are nan (unknowable)."""
    if not values:
        raise ValueError("summarize needs at least one value")
    mean, std, low, high = _t_interval(values)
    return Summary(len(values), mean, std, low, high)


def paired_difference(candidate: Sequence[float], baseline: Sequence[float]) -> PairedDifference:
    """Paired by position (seed): the mean difference, its 95% interval and the paired t-test p."""
    if len(candidate) != len(baseline) or not candidate:
        raise ValueError("paired_difference needs two equally long, non-empty lists")
    differences = [c - b for c, b in zip(candidate, baseline)]
    mean, std, low, high = _t_interval(differences)
    if len(differences) < 2:
        p_value = math.nan
    elif std == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(scipy_stats.ttest_rel(candidate, baseline).pvalue)
    return PairedDifference(len(differences), mean, low, high, p_value)


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
