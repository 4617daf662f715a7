"""The comparison report: summary.csv, summary.md with a plain verdict, plots, one self-contained report.html."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator, NullFormatter

from lrlab.aggregate import Comparison, ScheduleResult, aggregate
from lrlab.comparison import run_path
from lrlab.config import RUNTIME_ONLY
from lrlab.errors import UsageError
from lrlab.preview import doctor
from lrlab.runs import RunDirectory
from lrlab.stats import ALPHA, MAX_SEEDS, MIN_SEEDS_FOR_VERDICT, PairedDifference, equivalence_p

PLOTS = ("paired_difference", "lr_by_epoch", "lr_by_step", "test_acc", "test_loss", "train_loss", "final_acc")


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def _interval(low: float, high: float, seeds: int = 1) -> str:
    if math.isnan(low):
        return "n/a (one seed)" if seeds < 2 else "n/a (no spread)"
    return f"[{_pct(low)}, {_pct(high)}]"


def _signed(fraction: float) -> str:
    return f"{100 * fraction:+.2f}"


def _reached(values: list) -> str:
    reached = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(reached) < len(values):
        return f"{len(reached)}/{len(values)} seeds reached"
    return f"{sum(reached) / len(reached):.1f}"


def summary_rows(comparison: Comparison) -> list[dict[str, str]]:
    """One row per schedule: the figures of summary.csv and summary.md (accuracies in %)."""
    rows = []
    for result in comparison.results:
        final, best, auc, diff = result.final_acc, result.best_acc, result.auc, result.difference
        states = list(result.states.values())
        rows.append({
            "schedule": result.label,
            "spec": result.schedule,
            "picked_lr": "" if result.picked_lr is None else f"{result.picked_lr:g}",
            "seeds_finished": f"{states.count('finished')}/{len(states)}",
            "diverged": str(states.count("diverged")),
            "failed": str(states.count("failed")),
            "final_acc_mean": _pct(final.mean) if final else "n/a",
            "final_acc_std": _pct(final.std) if final else "n/a",
            "final_acc_ci95": _interval(final.ci_low, final.ci_high, final.n) if final else "n/a",
            "best_epoch_test_acc_mean": _pct(best.mean) if best else "n/a",
            "best_epoch_test_acc_ci95": _interval(best.ci_low, best.ci_high, best.n) if best else "n/a",
            "diff_vs_baseline": ("baseline" if result.label == comparison.baseline else
                                 f"{100 * diff.mean:+.2f}" if diff else "n/a"),
            "verdict": "" if result.label == comparison.baseline else judgement(result, comparison),
            "diff_ci95": _interval(diff.ci_low, diff.ci_high, diff.n) if diff else "",
            "diff_ci_judged": _interval(*diff.judged_interval, diff.n) if diff else "",
            "diff_ci_judged_level": _level(diff) if diff and not math.isnan(diff.judged_interval[0]) else "",
            "p_value": "" if not diff or math.isnan(diff.p_value) else f"{diff.p_value:.3g}",
            "p_holm": "" if not diff or math.isnan(diff.p_adjusted) else f"{diff.p_adjusted:.3g}",
            "p_equivalence": "" if not diff or math.isnan(equivalence_p(diff, comparison.min_effect))
                             else f"{equivalence_p(diff, comparison.min_effect):.3g}",
            "seeds_won": _won(diff) if diff else "",
            "seeds_for_min_effect": _plan_cell(result),
            "epochs_to_target": _reached(result.epochs_to_target),
            "seconds_to_target": _reached(result.seconds_to_target),
            "auc_acc_mean": _pct(auc.mean) if auc else "n/a",
        })
    return rows


def _number(value: float | None, scale: float = 100.0) -> float | None:
    """`value` times `scale` as a float; None where there is none (missing, or NaN for one seed)."""
    return None if value is None or math.isnan(value) else float(scale * value)


def summary_records(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per schedule, as numbers for a script: accuracies and differences in percent (points),
    None where a figure does not exist (the baseline's difference, an interval from one seed)."""
    records = []
    for result in comparison.results:
        final, best, auc, diff = result.final_acc, result.best_acc, result.auc, result.difference
        states = list(result.states.values())
        epochs, seconds = result.epochs_to_target, result.seconds_to_target
        reached = [e for e in epochs if e is not None]
        records.append({
            "schedule": result.label,
            "spec": result.schedule,
            "picked_lr": result.picked_lr,
            "seeds": len(states),
            "seeds_finished": states.count("finished"),
            "diverged": states.count("diverged"),
            "failed": states.count("failed"),
            "final_acc_mean": _number(final.mean) if final else None,
            "final_acc_std": _number(final.std) if final else None,
            "final_acc_ci95_low": _number(final.ci_low) if final else None,
            "final_acc_ci95_high": _number(final.ci_high) if final else None,
            "best_epoch_test_acc_mean": _number(best.mean) if best else None,
            "diff_vs_baseline": _number(diff.mean) if diff and result.label != comparison.baseline else None,
            "diff_ci95_low": _number(diff.ci_low) if diff and result.label != comparison.baseline else None,
            "diff_ci95_high": _number(diff.ci_high) if diff and result.label != comparison.baseline else None,
            "p_value": _number(diff.p_value, 1) if diff and result.label != comparison.baseline else None,
            "p_holm": _number(diff.p_adjusted, 1) if diff and result.label != comparison.baseline else None,
            "seeds_for_min_effect": result.seeds_needed,
            "target_acc": _number(comparison.target_acc),
            "seeds_reached_target": len(reached),
            # Means over the seeds only when every seed reached the target: a mean of the lucky ones flatters.
            "epochs_to_target_mean": sum(reached) / len(reached) if epochs and len(reached) == len(epochs) else None,
            "seconds_to_target_mean": (sum(seconds) / len(seconds) if seconds and all(s is not None for s in seconds)
                                       else None),
            "auc_acc_mean": _number(auc.mean) if auc else None,
        })
    return records


METHOD = ("Intervals and p-values count both sources of uncertainty, seeds and the draw of the test images, which "
          "every seed shares: seeds and images are crossed, so the variance of a mean is s_seed^2/n + s_image^2/N + "
          "s_interaction^2/(nN), estimated from the two-way table of per-image correctness by seed (ANOVA mean "
          "squares; Searle, Casella & McCulloch, Variance Components, 1992), each part with Student's t on its own "
          "degrees of freedom (Banerjee 1960); differences are paired by seed and by test image. p (Holm): Holm's "
          "step-down correction over the comparisons with the baseline; the interval of a difference is shown at the "
          "level Holm's procedure judged it at (95% with one comparison), so it excludes zero exactly when the "
          "difference is called real. Equivalent: that interval lies inside +-the minimum effect (two one-sided "
          "tests). Seeds won: the share of paired seeds in which the schedule beat the baseline (ties count half), "
          "with Wilson's 95% interval. Seeds for the minimum effect: the fewest seeds with 80% expected power for the "
          "same test at the 5% level divided by the number of comparisons, from the same variance (simulated "
          "calibration: tests/test_calibration.py).")
OPTIMISTIC = ("These runs have no validation split (--val-fraction 0, the article's protocol), so their best epochs and "
              "plateau cuts were chosen on the test data, and the best-epoch accuracies are optimistic.")


def _best_epoch_header(comparison: Comparison) -> str:
    return ("test acc at best-val epoch %" if comparison.selected_on == "validation"
            else "best test acc % (chosen on test: optimistic)")


def judgement(result: ScheduleResult, comparison: Comparison) -> str:
    """What the verdict says of one schedule against the baseline: better, worse, equivalent (within the
    minimum effect), undecided, too few seeds, no spread, or no finished seed; read off the interval the
    verdict shows (Holm's level), never off anything else."""
    diff = result.difference
    if diff is None:
        return "no finished seed" if not result.final_acc else "no paired seeds"
    if diff.n < MIN_SEEDS_FOR_VERDICT:
        return "too few seeds"
    low, high = diff.judged_interval
    if math.isnan(low):
        return "no spread"
    # Holm's p and its interval agree (holm_adjusted makes them so); a difference built by hand may carry only the p.
    if (diff.p_adjusted < comparison.alpha) if not math.isnan(diff.p_adjusted) else (low > 0 or high < 0):
        return "better" if diff.mean > 0 else "worse"
    if -comparison.min_effect < low and high < comparison.min_effect:
        return "equivalent"
    return "undecided"


def _level(diff: PairedDifference) -> str:
    """The confidence of the interval the verdict reads: 95%, or Holm's level where it is higher."""
    level = diff.confidence_adjusted if not math.isnan(diff.confidence_adjusted) else 0.95
    return "95%" if round(level, 4) == 0.95 else f"{100 * level:.3g}% Holm"


def _won(diff: PairedDifference) -> str:
    """Seeds won, as a share with Wilson's interval: the probability of improvement."""
    return f"{100 * diff.improvement:.0f}% [{100 * diff.improvement_low:.0f}, {100 * diff.improvement_high:.0f}]"


def _plan_cell(result: ScheduleResult) -> str:
    plan = result.seed_plan
    if plan is None:
        return "" if not result.seeds_needed else str(result.seeds_needed)
    return {"": str(plan.seeds), "seeds": f"more than {MAX_SEEDS}", "test set": "none (test set too small)"}.get(plan.limited_by, "")


def _points(value: float) -> str:
    return f"{100 * value:+.2f}"


def _what_would_decide(result: ScheduleResult, comparison: Comparison) -> str:
    """Undecided: the seeds that would likely tell a difference of the minimum effect, or why none would."""
    effect = f"{100 * comparison.min_effect:g}-point"
    plan = result.seed_plan
    if plan is None:
        return f"about {result.seeds_needed} seeds would tell a {effect} difference" if result.seeds_needed else ""
    if plan.limited_by == "test set":
        return (f"the test set ({comparison.test_images} images) cannot resolve a {effect} difference however many "
                f"seeds are run; only a larger test set would")
    if plan.limited_by == "seeds":
        return f"more than {MAX_SEEDS} seeds would be needed to tell a {effect} difference at this spread"
    if plan.seeds and plan.seeds > result.difference.n:
        return (f"{plan.seeds} seeds in all ({plan.seeds - result.difference.n} more) on this test set would tell a "
                f"{effect} difference with {100 * plan.power:.0f}% expected power")
    if plan.seeds:
        return (f"a {effect} difference would likely ({100 * plan.power:.0f}%) have shown with these seeds, so a "
                f"difference is probably smaller; a smaller one needs more seeds")
    return ""


def _verdict_line(result: ScheduleResult, comparison: Comparison) -> str:
    """One line: the schedule, its judgement, and what stands behind it or would decide it."""
    kind, diff, label = judgement(result, comparison), result.difference, result.label
    if kind == "no finished seed":
        return f"- {label}: no finished seed to judge."
    if kind == "no paired seeds":
        return f"- {label}: no seed finished for both it and {comparison.baseline}, so there is nothing to pair."
    seeds = f"{diff.n} seed{'s' if diff.n != 1 else ''}"
    if kind == "too few seeds":
        decide = "; ".join(filter(None, ["no interval from one seed" if diff.n < 2 else "",
                                         f"run at least {MIN_SEEDS_FOR_VERDICT} seeds (--seeds 0 1 2) to judge"]))
        return f"- {label}: too few seeds to judge, {_points(diff.mean)} points from {seeds}; {decide}."
    if kind == "no spread" and diff.variance is not None and diff.variance.images:
        return (f"- {label}: nothing to judge: right and wrong on exactly the same test images as {comparison.baseline} "
                f"in all {seeds} (the same predictions, or as good as).")
    if kind == "no spread":
        return (f"- {label}: not enough spread to judge: every one of {seeds} differs by the same "
                f"{_points(diff.mean)} points, and no per-image correctness was recorded to say how much the test "
                f"images alone could move it.")
    low, high = diff.judged_interval
    shown = f"{_points(diff.mean)} points ({_level(diff)} interval {_points(low)} to {_points(high)}, {seeds})"
    effect = f"{100 * comparison.min_effect:g}"
    if kind in ("better", "worse"):
        small = (f", by less than the minimum effect (within ±{effect} points)"
                 if -comparison.min_effect < low and high < comparison.min_effect else "")
        return f"- {label}: {kind}{small}, {shown}."
    if kind == "equivalent":
        return f"- {label}: equivalent within ±{effect} points, {shown}."
    decide = _what_would_decide(result, comparison)
    return f"- {label}: undecided, {shown}{'; ' + decide if decide else ''}."


def verdict(comparison: Comparison) -> str:
    """One line per schedule against the baseline (better, worse, equivalent within the minimum effect, or
    undecided and what would decide it), then the detail: says no more than the intervals support."""
    finished = [r for r in comparison.results if r.final_acc]
    if not finished:
        return "No run has finished yet, so there is nothing to compare."
    seeds = max(r.final_acc.n for r in finished)
    best = max(finished, key=lambda r: r.final_acc.mean)
    base = comparison.baseline
    others = [r for r in comparison.results if r.label != base]
    images = f", {comparison.test_images:,} test images" if comparison.test_images else ""
    lines = [f"Against {base}, minimum effect {100 * comparison.min_effect:g} points{images}:",
             *(_verdict_line(r, comparison) for r in others), ""]
    detail = []
    if seeds < 2:
        detail.append("With one seed per schedule no uncertainty can be given: the numbers below are single runs, "
                      "and a difference between them may be noise. Run at least 3 seeds (--seeds 0 1 2) to tell.")
    if comparison.lrs:
        on = "validation" if comparison.selected_on == "validation" else "test (no validation split: optimistic)"
        picks = ", ".join(f"{r.label} {r.picked_lr:g}" for r in comparison.results if r.picked_lr is not None)
        detail.append(f"Each schedule ran at every LR of {', '.join(f'{lr:g}' for lr in comparison.lrs)}; its LR was "
                      f"picked by mean final {on} accuracy over seeds ({picks}), and the schedules are compared at their "
                      f"picked LRs, paired by seed, on test accuracy.")
    detail.append(f"Highest mean final test accuracy: {best.label} ({_pct(best.final_acc.mean)}%, "
                  f"{best.final_acc.n} seed{'s' if best.final_acc.n != 1 else ''}).")
    judged = [r for r in others if r.difference is not None and judgement(r, comparison) not in ("too few seeds", "no spread")]
    if judged:
        holm = (f"Holm's correction over the {len(judged)} comparisons with {base}: each interval is at the level its "
                f"step was judged at, so it excludes zero exactly when the difference is called real"
                if len(judged) > 1 else "a 95% interval and p < 0.05")
        with_images = [bool(r.difference.variance and r.difference.variance.images) for r in judged]
        counted = ("seeds and test images both counted" if all(with_images) else
                   "seeds only: these runs recorded no per-image correctness (correct.npz), so the draw of the test "
                   "images is not in the intervals" if not any(with_images) else
                   "seeds, and test images where the runs recorded per-image correctness (correct.npz)")
        detail.append(f"Differences are final test accuracy minus {base}'s, paired by seed and test image ({counted}); "
                      f"better or worse means {holm}; equivalent means that interval lies within ±"
                      f"{100 * comparison.min_effect:g} points (--min-effect).")
    coarse = [r for r in others if r.difference is not None and (
        (r.seed_plan is not None and r.seed_plan.limited_by == "test set") or 1.96 * r.difference.image_se > comparison.min_effect)]
    if coarse and comparison.test_images:
        widest = max(1.96 * r.difference.image_se for r in coarse)
        alone = (f"its draw alone puts up to ±{100 * widest:.2g} points on these differences"
                 if widest >= comparison.min_effect else "its draw alone may put more than that on these differences")
        detail.append(f"The test set ({comparison.test_images} images) is too small to resolve "
                      f"{100 * comparison.min_effect:g}-point differences: {alone}, however many seeds are run.")
    if comparison.selected_on == "test":
        detail.append(OPTIMISTIC)
    problems = [f"{r.label} ({', '.join(f'seed {s} {st}' for s, st in r.states.items() if st != 'finished')})"
                for r in comparison.results if any(st != "finished" for st in r.states.values())]
    if problems:
        detail.append(f"Not averaged in: {'; '.join(problems)}.")
    retried = [f"{r.label} seed {s} ({n}x)" for r in comparison.results for s, n in r.retries.items()]
    if retried:
        detail.append(f"Restarted from their last checkpoint after a worker died: {', '.join(retried)}.")
    return "\n".join([*lines, " ".join(detail)]) if others else " ".join(detail)


def same_lr_arms(comparison: Comparison) -> dict[str, str]:
    """label -> the label of an earlier arm that ran with the same optimizer and the same LR at every step
    of every seed: the two are the same run (same seed, same weights, same batches), not two results."""
    same = {}
    for index, result in enumerate(comparison.results):
        for earlier in comparison.results[:index]:
            if earlier.label in same or earlier.optimizer != result.optimizer or earlier.picked_lr != result.picked_lr:
                continue
            seeds = [s for s in result.finished_seeds if s in earlier.curves and s in result.curves]
            epoch_lrs = all([r["lr"] for r in result.curves[s]] == [r["lr"] for r in earlier.curves[s]] for s in seeds)
            step_lrs = ([r["lr"] for r in next(iter(result.steps.values()), [])]
                        == [r["lr"] for r in next(iter(earlier.steps.values()), [])])
            if seeds and epoch_lrs and step_lrs:
                same[result.label] = earlier.label
                break
    return same


def _steps_per_epoch(result: ScheduleResult) -> int:
    steps = next(iter(result.steps.values()), [])
    return max(1, sum(1 for row in steps if row["epoch"] == 1))


def notes(comparison: Comparison) -> list[str]:
    """What to know before reading the table: arms that were the same run, what `lrlab doctor` says of
    each schedule over this run, and LRs picked at the edge of an LR grid or a study's search range."""
    found = []
    if comparison.alpha < ALPHA:
        found.append(f"Seeds were added in rounds where a comparison was undecided (--max-seeds), with a look after each "
                     f"round; so that looking often cannot make a false difference likelier, every difference here is "
                     f"judged at {100 * comparison.alpha:.3g}% (5% over the looks), Holm's correction on top.")
    for label, earlier in same_lr_arms(comparison).items():
        found.append(f"{label} ran the same LR as {earlier} at every step, with the same optimizer: the two are the same "
                     f"run, so their results are identical and not a finding (drawn dashed in the plots).")
    for result in comparison.results:
        try:
            lines = doctor(result.schedule, comparison.epochs, _steps_per_epoch(result))
        except UsageError:  # a spec this lrlab cannot read (a study's search ranges): nothing to say of it
            lines = []
        found += [f"lrlab doctor on {result.label}: {line.removeprefix(result.schedule + ': ')}" for line in lines]
    lrs = comparison.lrs
    if len(lrs) > 1:
        for edge, name, beyond in ((lrs[-1], "largest", lrs[-1] ** 2 / lrs[-2]), (lrs[0], "smallest", lrs[0] ** 2 / lrs[1])):
            at_edge = [r.label for r in comparison.results if r.picked_lr == edge]
            if at_edge:
                extended = sorted([*lrs, beyond])
                found.append(f"{', '.join(at_edge)} picked LR {edge:g}, the {name} of the grid (--lrs "
                             f"{' '.join(f'{lr:g}' for lr in lrs)}): the best LR may lie beyond it; extend the grid, "
                             f"e.g. --lrs {' '.join(f'{lr:.3g}' for lr in extended)}.")
    return found + search_edge_notes(comparison.out)


def readable_table(comparison: Comparison, rows: list[dict[str, str]]) -> tuple[list[str], list[list]]:
    """The summary as people read it (summary.md and report.html): headers, then per schedule its
    (label, spec) pair and the other cells as text. The interval of a difference is the one the verdict
    reads (Holm's level where there are several comparisons), with its level."""
    sweep = bool(comparison.lrs)
    headers = ["schedule", *(["LR (picked on validation)"] if sweep else []), "final acc % (mean ± sd)", "95% CI",
               _best_epoch_header(comparison), f"vs {comparison.baseline} (points)", "verdict",
               "interval of difference (level)", "p", "p (Holm)", "seeds won [95% CI]",
               f"seeds for {100 * comparison.min_effect:g} points", f"epochs to {_pct(comparison.target_acc)}%",
               "mean acc over training %"]
    table = []
    for row in rows:
        level = row["diff_ci_judged_level"]
        interval = f"{row['diff_ci_judged']} ({level})" if level else row["diff_ci_judged"]
        table.append([(row["schedule"], row["spec"]), *([row["picked_lr"]] if sweep else []),
                      f"{row['final_acc_mean']} ± {row['final_acc_std']}", row["final_acc_ci95"],
                      row["best_epoch_test_acc_mean"], row["diff_vs_baseline"], row["verdict"], interval,
                      row["p_value"], row["p_holm"], row["seeds_won"],
                      row["seeds_for_min_effect"] if row["verdict"] in ("undecided", "too few seeds") else "",
                      row["epochs_to_target"], row["auc_acc_mean"]])
    return headers, table


def write_summaries(comparison: Comparison) -> tuple[Path, Path]:
    rows = summary_rows(comparison)
    csv_path, md_path = comparison.out / "summary.csv", comparison.out / "summary.md"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    RunDirectory(comparison.out).write_text(csv_path, text.getvalue())
    headers, table = readable_table(comparison, rows)
    lines = [f"# Schedule comparison: {comparison.out.name}", "", verdict(comparison), ""]
    found = notes(comparison)
    if found:
        lines += ["## Notes", "", *(f"- {note}" for note in found), ""]
    lines += tuning_markdown(comparison.out)
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for cells in table:
        cells = [f"`{cells[0][1]}`" if cells[0][0] == cells[0][1] else f"{cells[0][0]} (`{cells[0][1]}`)", *cells[1:]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", (f"Target accuracy for 'epochs to': {_pct(comparison.target_acc)}% "
                   f"(the {comparison.baseline} schedule's mean final accuracy unless --target-acc was given)."),
              "", METHOD]
    RunDirectory(comparison.out).write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def _band(ax, result: ScheduleResult, column: str, scale: float = 1.0, first_epoch: int = 1,
          same_as: dict[str, str] | None = None) -> None:
    curves = [result.curves[s] for s in result.finished_seeds if s in result.curves]
    if not curves:
        return
    length = min(len(c) for c in curves)
    shown = [i for i in range(length) if curves[0][i]["epoch"] >= first_epoch]
    epochs = [curves[0][i]["epoch"] for i in shown]
    values = [[c[i][column] * scale for c in curves] for i in shown]
    means = [sum(v) / len(v) for v in values]
    label = f"{_plot_label(result, same_as or {})} (n={len(curves)})"
    line, = ax.plot(epochs, means, label=label, **_line_style(result, same_as))
    if len(curves) > 1:
        ax.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.2)


def _line_style(result: ScheduleResult, same_as: dict[str, str] | None) -> dict:
    """An arm that repeats an earlier arm's run is drawn dashed, on top, so the line it hides stays visible."""
    if not same_as or result.label not in same_as:
        return {}
    return {"linestyle": (0, (4, 3)), "linewidth": 2.2, "zorder": 3}


def _plot_label(result: ScheduleResult, same_as: dict[str, str]) -> str:
    return f"{result.label} (= {same_as[result.label]})" if result.label in same_as else result.label


def _legend(ax, **options) -> None:
    """The legend below the plot, outside the data, in as many columns as its labels allow."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    columns = 1 if max(len(label) for label in labels) > 40 else min(3, len(labels))
    ax.figure.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=columns, frameon=False, **options)


def _figure(title: str, xlabel: str, ylabel: str):
    # Constrained layout keeps the title, the tick labels and the legend below the plot inside the image.
    figure, ax = plt.subplots(figsize=(7, 4.6), dpi=110, layout="constrained")
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(textwrap.fill(title, 64), fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return figure, ax


def _save(figure, folder: Path, name: str) -> Path:
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    for suffix in ("png", "svg"):
        figure.savefig(folder / f"{name}.{suffix}")
    plt.close(figure)
    return folder / f"{name}.png"


def write_plots(comparison: Comparison) -> dict[str, Path]:
    folder = comparison.out / "plots"
    folder.mkdir(exist_ok=True)
    written = {}
    if any(r.difference for r in comparison.results):
        written["paired_difference"] = _paired_difference_plot(comparison, folder)
    results = comparison.results
    same_as = same_lr_arms(comparison)
    figure, ax = _figure("Learning rate at the start of each epoch (first seed)", "epoch", "learning rate")
    for result in results:
        seed_rows = next(iter(result.curves.values()), [])
        ax.plot([r["epoch"] for r in seed_rows], [r["lr"] for r in seed_rows], marker=".", label=_plot_label(result, same_as),
                **_line_style(result, same_as))
    _legend(ax)
    written["lr_by_epoch"] = _save(figure, folder, "lr_by_epoch")
    figure, ax = _figure("Learning rate at every optimizer step (first seed)", "step", "learning rate")
    for result in results:
        steps = next(iter(result.steps.values()), [])
        ax.plot([r["step"] for r in steps], [r["lr"] for r in steps], label=_plot_label(result, same_as),
                **{"linewidth": 1, **_line_style(result, same_as)})
    _legend(ax)
    written["lr_by_step"] = _save(figure, folder, "lr_by_step")
    for column, title, scale, ylabel in (
        ("test_acc", "Test accuracy (line: mean over seeds; band: min to max)", 100, "test accuracy (%)"),
        ("test_loss", "Test loss (line: mean over seeds; band: min to max)", 1, "test loss"),
        ("train_loss", "Training loss (line: mean over seeds; band: min to max)", 1, "training loss"),
    ):
        figure, ax = _figure(title, "epoch", ylabel)
        for result in results:
            _band(ax, result, column, scale, same_as=same_as)
        _legend(ax)
        written[column] = _save(figure, folder, column)
        if column == "test_acc" and comparison.epochs >= 4:
            written["test_acc_last_epochs"] = _last_epochs(comparison, folder)
    if comparison.lrs:
        written["acc_vs_lr"] = _accuracy_against_lr(comparison, folder)
    figure, ax = _figure("Final test accuracy: mean and 95% interval", "test accuracy (%)", "")
    shown = [r for r in results if r.final_acc]
    for index, result in enumerate(shown):
        final = result.final_acc
        error = None if math.isnan(final.ci_low) else [[100 * (final.mean - final.ci_low)], [100 * (final.ci_high - final.mean)]]
        ax.errorbar([100 * final.mean], [index], xerr=error, fmt="o", capsize=4)
        finals = [result.curves[s][-1]["test_acc"] * 100 for s in result.finished_seeds]
        ax.scatter(finals, [index] * len(finals), s=12, color="grey", zorder=3)
    ax.set_yticks(range(len(shown)), [textwrap.fill(_plot_label(r, same_as), 28) for r in shown], fontsize=8)
    ax.set_xlim(right=min(100.0, ax.get_xlim()[1]))
    ax.set_ylabel("")
    written["final_acc"] = _save(figure, folder, "final_acc")
    return {**write_tuning_plots(comparison.out, folder), **written}


JUDGEMENT_COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "equivalent": "#0969da"}  # the rest grey


def _paired_difference_plot(comparison: Comparison, folder: Path) -> Path:
    """Each schedule's difference from the baseline, in points, with the interval the verdict reads (Holm's
    level), the per-seed differences as dots and the band of +-the minimum effect: the verdict, drawn."""
    shown = [r for r in comparison.results if r.difference is not None]
    effect = 100 * comparison.min_effect
    figure, ax = _figure(f"Difference from {comparison.baseline} (points): mean, the interval the verdict reads, "
                         f"and each seed", f"final test accuracy minus {comparison.baseline}'s (points)", "")
    ax.axvspan(-effect, effect, color="#0969da", alpha=0.08, label=f"within ±{effect:g} (--min-effect)")
    ax.axvline(0, color="black", linewidth=0.8)
    baseline = next((r for r in comparison.results if r.label == comparison.baseline), None)
    for index, result in enumerate(shown):
        diff, kind = result.difference, judgement(result, comparison)
        colour = JUDGEMENT_COLOURS.get(kind, "#6e7781")
        low, high = diff.judged_interval
        error = None if math.isnan(low) else [[100 * (diff.mean - low)], [100 * (high - diff.mean)]]
        ax.errorbar([100 * diff.mean], [index], xerr=error, fmt="o", capsize=4, color=colour)
        if baseline is not None:
            seeds = [s for s in result.finished_seeds if s in baseline.finished_seeds]
            per_seed = [100 * (result.curves[s][-1]["test_acc"] - baseline.curves[s][-1]["test_acc"]) for s in seeds]
            ax.scatter(per_seed, [index + 0.18] * len(per_seed), s=10, color="grey", zorder=3)
    ax.set_yticks(range(len(shown)), [textwrap.fill(f"{r.label}: {judgement(r, comparison)}", 28) for r in shown],
                  fontsize=8)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    return _save(figure, folder, "paired_difference")


def configuration(comparison: Comparison) -> str:
    """What varies between the runs (schedule, optimizer where an arm has its own, seed) and what every run shares."""
    optimizers = {result.optimizer for result in comparison.results}
    lines = ["Varies between runs:"]
    for result in comparison.results:
        own = f"  with optimizer {result.optimizer}" if len(optimizers) > 1 else ""
        lines.append(f"  {result.label}: schedule {result.schedule}{own}")
    seeds = sorted({seed for result in comparison.results for seed in result.seeds})
    lines += [f"  seeds: {', '.join(map(str, seeds))}", "", "Shared by every run:"]
    varying = {"schedule", "seed", *(("optimizer",) if len(optimizers) > 1 else ())}
    for name, value in comparison.base_config.items():
        if name not in varying and name not in RUNTIME_ONLY:
            lines.append(f"  {name}: {json.dumps(value)}")
    return "\n".join(lines)


def _last_epochs(comparison: Comparison, folder: Path) -> Path:
    """The test accuracy of the last quarter of the epochs (at least 3), on a scale where the curves part."""
    first = comparison.epochs - max(3, comparison.epochs // 4) + 1
    figure, ax = _figure(f"Test accuracy, epochs {first} to {comparison.epochs} (zoomed)", "epoch", "test accuracy (%)")
    same_as = same_lr_arms(comparison)
    for result in comparison.results:
        _band(ax, result, "test_acc", 100, first_epoch=first, same_as=same_as)
    _legend(ax)
    return _save(figure, folder, "test_acc_last_epochs")


def _accuracy_against_lr(comparison: Comparison, folder: Path) -> Path:
    """How forgiving each schedule is of its LR: final accuracy at every LR of the sweep, the picked one ringed."""
    column = "val_acc" if comparison.selected_on == "validation" else "test_acc"
    name = "validation" if column == "val_acc" else "test"
    figure, ax = _figure(f"Final {name} accuracy against LR (line: mean over seeds; band: min to max)",
                         "learning rate (log scale)", f"final {name} accuracy (%)")
    for result in comparison.results:
        points = [p for p in result.sweep if p.test_acc]
        if not points:
            continue
        values = [[100 * v for v in (p.val_acc if column == "val_acc" else p.test_acc).values()] for p in points]
        lrs = [p.lr for p in points]
        line, = ax.plot(lrs, [sum(v) / len(v) for v in values], marker="o", label=result.label)
        ax.fill_between(lrs, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.2)
        picked = [i for i, p in enumerate(points) if p.lr == result.picked_lr]
        for i in picked:
            ax.plot([lrs[i]], [sum(values[i]) / len(values[i])], marker="o", markersize=12, fillstyle="none",
                    color=line.get_color())
    ax.set_xscale("log")
    ax.set_xticks(comparison.lrs, [f"{lr:g}" for lr in comparison.lrs])
    ax.minorticks_off()
    _legend(ax, title="ringed: picked LR", title_fontsize=8)
    return _save(figure, folder, "acc_vs_lr")


def write_html(comparison: Comparison, plots: dict[str, Path]) -> Path:
    """One file with everything inline: no script, no remote resource, every user string escaped."""
    headers, cells = readable_table(comparison, summary_rows(comparison))
    table = ['<div class="scroll"><table><thead><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in headers) + "</tr></thead><tbody>"]
    for (label, spec), *rest in cells:
        name = html.escape(label) + ("" if label == spec else f"<br><code>{html.escape(spec)}</code>")
        table.append(f"<tr><td>{name}</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in rest) + "</tr>")
    table.append("</tbody></table></div>")
    images = []
    for name, path in plots.items():
        if name in TUNING_PLOTS:
            continue  # shown with the tuning table
        encoded = base64.b64encode(path.read_bytes()).decode()
        images.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}"></figure>')
    configs = []
    for result in comparison.results:
        for seed in result.seeds:
            config_path = result.paths.get(seed, run_path(comparison.out, result.label, seed)) / "config.yaml"
            text = config_path.read_bytes().decode(errors="replace") if config_path.is_file() else "(not started)"
            configs.append(f"<details><summary>{html.escape(result.label)} seed {seed}: "
                           f"{html.escape(result.states.get(seed, 'missing'))}</summary><pre>{html.escape(text)}</pre></details>")
    base = html.escape(configuration(comparison))
    found = notes(comparison)
    notes_html = ('<h2>Notes</h2>\n<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in found) + "</ul>\n"
                  if found else "")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>lrlab report: {html.escape(comparison.out.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1260px; margin: 2em auto; padding: 0 1em; color: #222; overflow-wrap: anywhere; }}
.scroll {{ overflow-x: auto; max-width: 100%; }} .scroll table {{ overflow-wrap: normal; }}
table {{ border-collapse: collapse; font-size: 0.85em; }} th, td {{ border: 1px solid #ccc; padding: 0.3em 0.4em; text-align: right; }}
th {{ font-weight: 600; vertical-align: bottom; }} td code {{ font-size: 0.9em; color: #555; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em 0; width: 100%; max-width: 620px; vertical-align: top; }}
img {{ width: 100%; height: auto; }} pre {{ background: #f7f7f7; padding: 0.5em; overflow-x: auto; white-space: pre-wrap; }}
.notes li {{ margin: 0.3em 0; }}
.verdict {{ white-space: pre-line; background: #eef5ff; padding: 0.8em 1em; border-left: 4px solid #36c; }}
</style></head><body>
<h1>Which learning-rate schedule? {html.escape(comparison.out.name)}</h1>
<p class="verdict">{html.escape(verdict(comparison))}</p>
{notes_html}{tuning_html(comparison.out, plots)}<h2>Summary</h2>
{''.join(table)}
<p>Accuracies in %. Differences are final test accuracy minus the baseline's ({html.escape(comparison.baseline)}),
paired by seed. Target for "epochs to target": {_pct(comparison.target_acc)}%.</p>
<h2>Plots</h2>
{''.join(images)}
<h2>Configuration</h2>
<pre>{base}</pre>
{''.join(configs)}
</body></html>
"""
    path = comparison.out / "report.html"
    RunDirectory(comparison.out).write_text(path, page)
    return path


def build_report(out: str | Path) -> Comparison:
    """Aggregate the runs in `out` and write summary.csv, summary.md, plots/ and report.html."""
    comparison = aggregate(out)
    write_summaries(comparison)
    plots = write_plots(comparison)
    write_html(comparison, plots)
    return comparison


# -- a study's tuning phase (lrlab.study), read from study.json ------------------------------------

def tuning_rows(out: Path) -> list[dict[str, str]]:
    """One row per schedule of a study: the setting it was confirmed at and what tuning it cost; [] if not a study."""
    from lrlab.tuning import read_record

    record = read_record(out)
    if not record:
        return []
    rows = []
    for label, arm in record["arms"].items():
        confirmed = record.get("confirmed", {}).get(label, {})
        trial = next((t for t in arm["trials"] if t.number == confirmed.get("trial")), None)
        setting = "(tuning not finished)" if trial is None else ", ".join(
            [f"lr={trial.lr:.4g}", *(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())])
        rows.append({"schedule": label, "searched": arm["spec"], "confirmed at": setting,
                     "trial": "" if trial is None else str(trial.number),
                     "validation acc (%)": "" if trial is None else _pct(trial.final_val_acc),
                     "trials": str(len(arm["trials"])), "pruned": str(arm["pruned"]), "failed": str(arm["failed"]),
                     "epochs trained": str(arm["epochs_trained"])})
    return rows


def tuning_summary(out: Path) -> str:
    """The sentence that opens a study's tuning section: budget, sampler, pruner, seeds."""
    from lrlab.tuning import read_record

    record = read_record(out)
    settings = record["settings"]
    total = sum(arm["epochs_trained"] for arm in record["arms"].values())
    rungs = ", ".join(map(str, record.get("rungs", []))) or "none"
    return (f"Each schedule was tuned with {settings['trials']} trials ({settings['sampler'].upper()} sampling over "
            f"{record['lr_range']} and the ranges in its spec; pruner {settings['prune']}, rungs at epochs {rungs}) on "
            f"tuning seed(s) {', '.join(map(str, settings['tuning_seeds']))}, scored on final validation accuracy: "
            f"{total} tuning epochs in all. Only the confirmation runs below, on other seeds, are judged on the test set.")


def search_edge_notes(out: Path) -> list[str]:
    """A study's confirmed settings that lie near an end of their search range (lrlab.tuning.end_reached),
    each with the wider range to search next; [] if not a study."""
    from dataclasses import replace

    from lrlab.tuning import STUDY_RECORD, end_reached, find_ranges, parse_range, range_text, read_record, widened

    record = read_record(out)
    if not record:
        return []
    words = {"low": "bottom", "high": "top"}
    picked: dict[str, list[tuple[str, float]]] = {"low": [], "high": []}  # end -> (schedule, LR): one range for all
    lr_notes, spec_notes = [], []
    lr_name, _, lr_text = str(record.get("lr_range", "")).partition("=")
    # The LR is always sampled as a decimal, though the recorded range may read like whole numbers (lr=1:10:log).
    lr_range = replace(parse_range(lr_name, lr_text, STUDY_RECORD), integer=False) if lr_text else None
    for label, arm in record["arms"].items():
        number = record.get("confirmed", {}).get(label, {}).get("trial")
        trial = next((t for t in arm["trials"] if t.number == number), None)
        if trial is None:
            continue
        if lr_range is not None and (end := end_reached(trial.lr, lr_range)):
            picked[end].append((label, trial.lr))
        ranged = find_ranges(arm["spec"])
        for searched in ranged.ranges:
            value = trial.params.get(searched.name)
            end = end_reached(value, searched) if isinstance(value, (int, float)) else None
            wider = widened(searched, end) if end else None
            if wider is not None:
                spec_notes.append(f"{label} was confirmed at {searched.name}={value:.4g}, near the {words[end]} of its "
                                  f"search range {searched.name}={range_text(searched)}: the best may lie beyond it; "
                                  f"widen that end, e.g. {ranged.with_range(wider)}.")
    for end, picks in picked.items():
        wider = widened(lr_range, end) if picks else None
        if wider is not None:
            who = ", ".join(f"{label} at lr={lr:.4g}" for label, lr in picks)
            lr_notes.append(f"{who} {'was' if len(picks) == 1 else 'were'} confirmed near the {words[end]} of the LR "
                            f"search range (--search lr={range_text(lr_range)}): the best LR may lie beyond it; widen "
                            f"that end, e.g. --search lr={range_text(wider)}.")
    return lr_notes + spec_notes


def write_tuning_plots(out: Path, folder: Path) -> dict[str, Path]:
    """Each schedule's tuning curve (best validation accuracy against trials used) and every trial's
    validation accuracy against its LR, pruned trials hollow at the accuracy where they stopped."""
    from lrlab.tuning import read_record

    record = read_record(out)
    if not record:
        return {}
    written = {}
    figure, ax = _figure("Tuning: best validation accuracy among the first n trials", "trials used", "validation accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for label, arm in record["arms"].items():
        best, curve = -math.inf, []
        for trial in sorted(arm["trials"], key=lambda t: t.number):
            if trial.state == "complete":
                best = max(best, trial.final_val_acc)
            curve.append(100 * best if best > -math.inf else math.nan)
        ax.plot(range(1, len(curve) + 1), curve, marker="o", drawstyle="steps-post", label=label)
    _legend(ax)
    written["tuning_curves"] = _save(figure, folder, "tuning_curves")
    figure, ax = _figure("Tuning trials: validation accuracy against LR (hollow: pruned, at the epoch it stopped)",
                         "learning rate", "validation accuracy (%)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks collide within a decade
    for index, (label, arm) in enumerate(record["arms"].items()):
        color = f"C{index % 10}"
        for state, style in (("complete", {"color": color}), ("pruned", {"facecolors": "none", "edgecolors": color})):
            trials = [t for t in arm["trials"] if t.state == state and t.val_acc]
            ax.scatter([t.lr for t in trials], [100 * t.final_val_acc for t in trials], s=36, zorder=3,
                       label=f"{label}{'' if state == 'complete' else ' (pruned)'}", **style)
    _legend(ax)
    written["tuning_trials_vs_lr"] = _save(figure, folder, "tuning_trials_vs_lr")
    return written


TUNING_PLOTS = ("tuning_curves", "tuning_trials_vs_lr")


def tuning_markdown(out: Path) -> list[str]:
    rows = tuning_rows(out)
    if not rows:
        return []
    lines = ["## Tuning", "", tuning_summary(out), "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row.values()) + " |" for row in rows]
    return [*lines, "", "## Confirmation", ""]


def tuning_html(out: Path, plots: dict[str, Path]) -> str:
    rows = tuning_rows(out)
    if not rows:
        return ""
    table = ['<div class="scroll"><table><thead><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
             + "</tr></thead><tbody>"]
    table += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row.values()) + "</tr>" for row in rows]
    table.append("</tbody></table></div>")
    images = [f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(plots[name].read_bytes()).decode()}">'
              f"</figure>" for name in TUNING_PLOTS if name in plots]
    return (f"<h2>Tuning</h2>\n<p>{html.escape(tuning_summary(out))}</p>\n{''.join(table)}\n{''.join(images)}\n"
            f"<h2>Confirmation</h2>\n")
