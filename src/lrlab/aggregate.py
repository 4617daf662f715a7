"""A finished (or half-finished) comparison read back from its folder: the figures the report shows.

Reads only run directories and the comparison's manifest, so a report can be rebuilt without
importing the engine, the executors or the grid runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrlab.comparison import MANIFEST, Variant, read_manifest, run_path
from lrlab.config import config_from_dict
from lrlab.runs import RunDirectory
from lrlab.stats import (
    PairedDifference,
    Summary,
    area_under_curve,
    epochs_to_target,
    paired_difference,
    seconds_to_target,
    summarize,
)


@dataclass
class ScheduleResult:
    """Everything the report says about one schedule, across its seeds."""

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
    selected_on: str = "validation"  # what chose each run's best epoch: "validation", or "test" (the article's protocol)


def aggregate(out: str | Path) -> Comparison:
    """Read every run of the comparison in `out` and compute the figures of the report."""
    out = Path(out)
    manifest = read_manifest(out)
    base = config_from_dict(manifest["base_config"], str(out / MANIFEST))
    variants = [Variant(**v) for v in manifest["variants"]]
    seeds = manifest["seeds"]
    finals: dict[str, dict[int, float]] = {}
    gathered = []
    for variant in variants:
        states, curves, steps, retries = {}, {}, {}, {}
        for seed in seeds:
            run = RunDirectory(run_path(out, variant.label, seed))
            status = run.read_status() if run.path.exists() else {"state": "missing"}
            states[seed] = status.get("state", "missing")
            if status.get("retries"):
                retries[seed] = status["retries"]
            rows = run.read_metrics()
            if rows:
                curves[seed] = rows
                if not steps:
                    steps[seed] = run.read_steps()
            if states[seed] == "finished" and rows:
                finals.setdefault(variant.label, {})[seed] = rows[-1]["test_acc"]
        gathered.append((variant, states, curves, steps, retries))
    baseline = manifest["baseline"]
    baseline_finals = finals.get(baseline, {})
    target = manifest.get("target_acc")
    if target is None:
        target = math.fsum(baseline_finals.values()) / len(baseline_finals) if baseline_finals else math.nan
    results = []
    for variant, states, curves, steps, retries in gathered:
        finished = [s for s in seeds if states[s] == "finished" and s in curves]
        final = [curves[s][-1]["test_acc"] for s in finished]
        best = [test_acc_at_best_epoch(curves[s]) for s in finished]
        auc = [area_under_curve([r["test_acc"] for r in curves[s]]) for s in finished]
        paired = [s for s in finished if s in baseline_finals]
        difference = None
        if paired and variant.label != baseline:
            difference = paired_difference([finals[variant.label][s] for s in paired], [baseline_finals[s] for s in paired])
        accuracy_curves = {s: [r["test_acc"] for r in curves[s]] for s in finished}
        results.append(ScheduleResult(
            label=variant.label, schedule=variant.schedule, optimizer=variant.optimizer or base.optimizer,
            seeds=seeds, states=states,
            final_acc=summarize(final) if final else None, best_acc=summarize(best) if best else None,
            auc=summarize(auc) if auc else None, difference=difference,
            epochs_to_target=[epochs_to_target(accuracy_curves[s], target) for s in finished],
            seconds_to_target=[seconds_to_target(accuracy_curves[s], [r["elapsed_seconds"] for r in curves[s]], target)
                               for s in finished],
            curves=curves, steps=steps, retries=retries,
        ))
    return Comparison(out, baseline, target, base.epochs, manifest["base_config"], results,
                      selected_on="validation" if base.val_fraction > 0 else "test")


def best_epoch_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """The metrics row of a run's best epoch: highest validation accuracy (the first, on a tie), or
    highest test accuracy for a run without a validation split, as the engine chose best.pt."""
    chosen_on = "val_acc" if not math.isnan(rows[0].get("val_acc", math.nan)) else "test_acc"
    return max(rows, key=lambda row: row[chosen_on])


def test_acc_at_best_epoch(rows: list[dict[str, float]]) -> float:
    return best_epoch_row(rows)["test_acc"]
