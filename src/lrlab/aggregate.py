"""A finished (or half-finished) comparison read back from its folder: the figures the report shows.

Reads only run directories and the comparison's manifest, so a report can be rebuilt without
importing the engine, the executors or the grid runner.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrlab.comparison import DEFAULT_MIN_EFFECT, MANIFEST, Variant, read_manifest, run_path
from lrlab.config import config_from_dict
from lrlab.runs import RunDirectory
from lrlab.stats import (
    ALPHA,
    PairedDifference,
    SeedPlan,
    Summary,
    area_under_curve,
    epochs_to_target,
    holm_adjusted,
    paired_difference,
    seconds_to_target,
    seeds_to_resolve,
    summarize,
)


@dataclass
class LRPoint:
    """One schedule at one LR of a sweep: each finished seed's final validation and test accuracy."""

    lr: float
    val_acc: dict[int, float]  # nan without a validation split
    test_acc: dict[int, float]
    unfinished: int  # seeds that diverged or failed at this LR

    @property
    def pick_score(self) -> float:
        """What picks the LR: mean final validation accuracy over seeds (test accuracy without a split)."""
        values = list(self.val_acc.values())
        if not values or any(math.isnan(v) for v in values):
            values = list(self.test_acc.values())
        return math.fsum(values) / len(values) if values else -math.inf


@dataclass
class ScheduleResult:
    """Everything the report says about one schedule, across its seeds (at its picked LR in a sweep)."""

    label: str
    schedule: str
    optimizer: str
    seeds: list[int]
    states: dict[int, str]
    final_acc: Summary | None
    best_acc: Summary | None  # test accuracy at each seed's best epoch (on validation data when there is a split)
    auc: Summary | None
    difference: PairedDifference | None  # final accuracy minus the baseline's, paired by seed
    epochs_to_target: list[int | None]
    seconds_to_target: list[float | None]
    curves: dict[int, list[dict[str, float]]]  # seed -> metrics rows
    steps: dict[int, list[dict[str, float]]]  # seed -> per-step rows (first seed only, for LR plots)
    retries: dict[int, int]  # seed -> times its worker died and the run was restarted
    paths: dict[int, Path] = field(default_factory=dict)  # seed -> run directory
    picked_lr: float | None = None  # in an LR sweep: the LR with the best mean validation accuracy
    seeds_needed: int | None = None  # to resolve the comparison's min_effect: seed_plan.seeds
    seed_plan: SeedPlan | None = None  # the seeds that would resolve min_effect, or why no number of seeds would
    sweep: list[LRPoint] = field(default_factory=list)  # in an LR sweep: every LR tried, in increasing order

    @property
    def finished_seeds(self) -> list[int]:
        return [s for s in self.seeds if self.states.get(s) == "finished"]


@dataclass
class Comparison:
    out: Path
    baseline: str
    target_acc: float
    epochs: int
    base_config: dict[str, Any]
    results: list[ScheduleResult]
    selected_on: str = "validation"  # what chose each run's best epoch and LR: "validation", or "test" (the article's protocol)
    min_effect: float = DEFAULT_MIN_EFFECT  # the smallest difference the user cares about (accuracy, 0-1)
    test_images: int = 0  # in the test set every run shares (0 when no run recorded it)
    alpha: float = ALPHA  # the level every difference is judged at: 5%, less after a study's sequential looks

    @property
    def lrs(self) -> list[float]:
        """The LRs of a sweep (empty without one)."""
        return sorted({point.lr for result in self.results for point in result.sweep})


@dataclass
class _Runs:
    """What the run directories of one variant hold, seed by seed."""

    variant: Variant
    states: dict[int, str]
    curves: dict[int, list[dict[str, float]]]
    steps: dict[int, list[dict[str, float]]]
    retries: dict[int, int]
    paths: dict[int, Path]
    correct: dict[int, dict] = field(default_factory=dict)  # seed -> correct.npz (which images each epoch got right)

    def finished(self, seeds: list[int]) -> list[int]:
        return [s for s in seeds if self.states[s] == "finished" and s in self.curves]


def _read_runs(out: Path, variant: Variant, seeds: list[int], epochs: int) -> _Runs:
    runs = _Runs(variant, {}, {}, {}, {}, {})
    for seed in seeds:
        run = RunDirectory(run_path(out, variant.folder_name, seed))
        runs.paths[seed] = run.path
        status = run.read_status() if run.path.exists() else {"state": "missing"}
        runs.states[seed] = status.get("state", "missing")
        if status.get("retries"):
            runs.retries[seed] = status["retries"]
        rows = run.read_metrics()
        if runs.states[seed] == "finished" and len(rows) < epochs:
            runs.states[seed] = "incomplete"  # its metrics.csv lost rows since it finished
        correct = run.read_correctness()
        if correct:
            runs.correct[seed] = correct
        if rows:
            runs.curves[seed] = rows
            if not runs.steps:
                runs.steps[seed] = run.read_steps()
    return runs


def _pick(arm_runs: list[_Runs], seeds: list[int]) -> tuple[_Runs, list[LRPoint]]:
    """The runs at the LR a schedule is judged at, and the sweep's points (none without a sweep)."""
    if len(arm_runs) == 1 and arm_runs[0].variant.lr is None:
        return arm_runs[0], []
    points = []
    for runs in arm_runs:
        finished = runs.finished(seeds)
        points.append(LRPoint(
            runs.variant.lr,
            {s: runs.curves[s][-1].get("val_acc", math.nan) for s in finished},
            {s: runs.curves[s][-1]["test_acc"] for s in finished},
            sum(1 for s in seeds if runs.states[s] in ("diverged", "failed")),
        ))
    # An LR at which some seed diverged is judged only if every LR lost a seed.
    eligible = [i for i, p in enumerate(points) if p.test_acc and not p.unfinished] or \
               [i for i, p in enumerate(points) if p.test_acc] or [0]
    best = max(eligible, key=lambda i: points[i].pick_score)
    order = sorted(range(len(points)), key=lambda i: points[i].lr)
    return arm_runs[best], [points[i] for i in order]


def aggregate(out: str | Path) -> Comparison:
    """Read every run of the comparison in `out` and compute the figures of the report.

    In an LR sweep each schedule is judged at its own LR, the one with the highest mean final
    validation accuracy over seeds; the comparisons between schedules are then on test accuracy.
    """
    out = Path(out)
    manifest = read_manifest(out)
    base = config_from_dict(manifest["base_config"], str(out / MANIFEST))
    variants = [Variant(**v) for v in manifest["variants"]]
    seeds = manifest["seeds"]
    arms: dict[str, list[_Runs]] = {}
    for variant in variants:
        arms.setdefault(variant.arm_label, []).append(_read_runs(out, variant, seeds, base.epochs))
    picked = {label: _pick(arm_runs, seeds) for label, arm_runs in arms.items()}
    finals: dict[str, dict[int, float]] = {
        label: {s: runs.curves[s][-1]["test_acc"] for s in runs.finished(seeds)} for label, (runs, _) in picked.items()}
    baseline = manifest["baseline"]
    baseline_finals = finals.get(baseline, {})
    target = manifest.get("target_acc")
    if target is None:
        target = math.fsum(baseline_finals.values()) / len(baseline_finals) if baseline_finals else math.nan
    min_effect = manifest.get("min_effect", DEFAULT_MIN_EFFECT)
    baseline_runs = picked[baseline][0] if baseline in picked else None
    results = []
    for label, (runs, points) in picked.items():
        curves = runs.curves
        finished = runs.finished(seeds)
        final = [curves[s][-1]["test_acc"] for s in finished]
        best = [test_acc_at_best_epoch(curves[s]) for s in finished]
        auc = [area_under_curve([r["test_acc"] for r in curves[s]]) for s in finished]
        paired = [s for s in finished if s in baseline_finals]
        difference = None
        if paired and label != baseline:
            difference = paired_difference([finals[label][s] for s in paired], [baseline_finals[s] for s in paired],
                                           _correct(runs, paired, "final_test"), _correct(baseline_runs, paired, "final_test"))
        accuracy_curves = {s: [r["test_acc"] for r in curves[s]] for s in finished}
        arm = arms[label][0].variant
        results.append(ScheduleResult(
            label=label, schedule=arm.schedule if arm.lr is None else _arm_spec(arms[label]),
            optimizer=runs.variant.optimizer or base.optimizer,
            seeds=seeds, states=runs.states,
            final_acc=summarize(final, _correct(runs, finished, "final_test")) if final else None,
            best_acc=summarize(best, _correct(runs, finished, "best_test")) if best else None,
            auc=summarize(auc) if auc else None, difference=difference,
            epochs_to_target=[epochs_to_target(accuracy_curves[s], target) for s in finished],
            seconds_to_target=[seconds_to_target(accuracy_curves[s], [r["elapsed_seconds"] for r in curves[s]], target)
                               for s in finished],
            curves=curves, steps=runs.steps, retries=runs.retries, paths=runs.paths,
            picked_lr=runs.variant.lr, sweep=points,
        ))
    differences = [r.difference for r in results if r.difference]
    alpha = study_level(out)
    adjusted = iter(holm_adjusted(differences, alpha))
    for result in results:
        if result.difference:
            result.difference = next(adjusted)
            result.seed_plan = seeds_to_resolve(result.difference, min_effect, comparisons=len(differences))
            result.seeds_needed = result.seed_plan.seeds
    test_images = next((len(c["final_test"]) for arm_runs in arms.values() for r in arm_runs
                        for c in r.correct.values() if "final_test" in c), 0)
    return Comparison(out, baseline, target, base.epochs, manifest["base_config"], results,
                      selected_on="validation" if base.val_fraction > 0 else "test", min_effect=min_effect,
                      test_images=test_images, alpha=alpha)


def study_level(out: Path) -> float:
    """The level a comparison's differences are judged at: 5%, or a study's per-look level when it
    added seeds in rounds and looked after each (lrlab.study.sequential_level)."""
    from lrlab.tuning import read_record

    record = read_record(out) or {}
    level = record.get("sequential", {}).get("level")
    return level if isinstance(level, float) and 0 < level <= ALPHA else ALPHA


def _correct(runs: _Runs | None, seeds: list[int], name: str) -> list | None:
    """Each seed's per-image correctness `name` (e.g. final_test), or None unless every seed recorded it."""
    if runs is None or not all(name in runs.correct.get(s, {}) for s in seeds):
        return None
    return [runs.correct[s][name].numpy() for s in seeds]


def _arm_spec(arm_runs: list[_Runs]) -> str:
    """A sweep's schedule as the user gave it: its LR-independent spec (peak LR shown as swept)."""
    spec = arm_runs[0].variant.schedule
    return spec if len(arm_runs) == 1 else re.sub(r"\bmax_lr=[^,@]+", "max_lr=<LR>", spec)


def best_epoch_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """The metrics row of a run's best epoch: highest validation accuracy (the first, on a tie), or
    highest test accuracy for a run without a validation split, as the engine chose best.pt."""
    chosen_on = "val_acc" if not math.isnan(rows[0].get("val_acc", math.nan)) else "test_acc"
    return max(rows, key=lambda row: row[chosen_on])


def test_acc_at_best_epoch(rows: list[dict[str, float]]) -> float:
    return best_epoch_row(rows)["test_acc"]
