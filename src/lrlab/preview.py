"""See a schedule before training: `preview` gives its LR at every step, `doctor` reads it for surprises.

Both drive the real `ScheduleDriver` (and so the real torch scheduler) on a throwaway parameter,
with exactly the calls the engine makes, so a preview matches what training logs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from statistics import NormalDist

import torch

from lrlab.errors import UsageError
from lrlab.schedules import MONITORS, ScheduleDriver, ScheduleSpec, parse_schedule


# A preview steps a real torch scheduler once per optimizer step (about 30 us each): this many take
# a few seconds, and their rows fit in memory.
MAX_PREVIEW_STEPS = 100_000


@dataclass(frozen=True)
class PreviewRow:
    step: int
    epoch: int
    lr: float


def preview(
    spec: ScheduleSpec | str,
    epochs: int,
    steps_per_epoch: int = 1,
    lr: float = 0.1,
    metric_per_epoch: Sequence[float] | None = None,
) -> list[PreviewRow]:
    """The LR used at each optimizer step of a run; ReduceLROnPlateau sees `metric_per_epoch` (flat if None)."""
    spec = parse_schedule(spec) if isinstance(spec, str) else spec
    if epochs < 1 or steps_per_epoch < 1:
        raise UsageError("preview needs at least one epoch and one step per epoch")
    if epochs * steps_per_epoch > MAX_PREVIEW_STEPS:
        raise UsageError(f"a preview of {epochs} epochs x {steps_per_epoch} steps is more than the {MAX_PREVIEW_STEPS:,} steps "
                         f"lrlab previews; give fewer --epochs or --steps-per-epoch")
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr {lr} should be a positive number")
    if metric_per_epoch is not None and len(metric_per_epoch) < epochs:
        raise UsageError(f"the assumed metric curve has {len(metric_per_epoch)} values; give one per epoch ({epochs})")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=lr, momentum=0.9)
    driver = ScheduleDriver(spec, optimizer, epochs, steps_per_epoch)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "step() before optimizer.step()" note does not apply here
        for epoch in range(1, epochs + 1):
            for step_in_epoch in range(steps_per_epoch):
                rows.append(PreviewRow((epoch - 1) * steps_per_epoch + step_in_epoch + 1, epoch, optimizer.param_groups[0]["lr"]))
                optimizer.step()
                try:
                    driver.after_step()
                except ValueError as error:  # OneCycleLR refuses to step past its total_steps
                    raise UsageError(f"schedule {spec.text!r} fails at step {rows[-1].step}: {error}") from None
            metric = 1.0 if metric_per_epoch is None else metric_per_epoch[epoch - 1]
            driver.after_epoch({name: metric for name in MONITORS})
    return rows


def _epoch_lrs(rows: list[PreviewRow]) -> list[float]:
    first = {}
    for row in rows:
        first.setdefault(row.epoch, row.lr)
    return [first[e] for e in sorted(first)]


def doctor(spec: ScheduleSpec | str, epochs: int, steps_per_epoch: int = 1) -> list[str]:
    """One line per way `spec` will probably not do what its author expects over this run."""
    spec = parse_schedule(spec) if isinstance(spec, str) else spec
    name = spec.text
    if epochs < 1 or steps_per_epoch < 1:
        raise UsageError("the doctor needs at least one epoch and one step per epoch")
    if epochs * steps_per_epoch > MAX_PREVIEW_STEPS:
        if spec.per_step or spec.warmup or epochs > MAX_PREVIEW_STEPS:
            return [f"{name}: a run of {epochs * steps_per_epoch:,} steps is too long to check step by step "
                    f"(the doctor previews at most {MAX_PREVIEW_STEPS:,}); preview a shorter run to see its LR"]
        steps_per_epoch = 1  # stepped once per epoch: its LR per epoch is the same whatever the epoch's length
    warmup_steps = spec.warmup_steps(steps_per_epoch)
    # The run's length in the warmup's own unit, so a warmup written in epochs is talked about in epochs.
    run_length = (f"{epochs} epoch{'s' if epochs != 1 else ''}" if spec.warmup and spec.warmup.steps is None
                  else f"{epochs * steps_per_epoch} steps")
    if warmup_steps >= epochs * steps_per_epoch:
        return [f"{name}: the warmup takes {spec.warmup.length_as_given} but the whole run has {run_length}; "
                "the schedule after it never runs (shorten the warmup or train longer)"]
    try:
        rows = preview(spec, epochs, steps_per_epoch, lr=1.0)
    except UsageError as error:
        return [f"{name}: {error}"]
    # Annealing to exactly zero is common (cosine, linear to zero); below zero or past a float is not.
    unusable = next((row for row in rows if not (math.isfinite(row.lr) and row.lr >= 0)), None)
    if unusable is not None:
        return [f"{name}: the LR becomes {unusable.lr:g} x --lr at step {unusable.step} (epoch {unusable.epoch}); "
                "an LR must stay zero or positive and finite, so this run would not train from there"]
    warnings_found: list[str] = []
    epoch_lrs = _epoch_lrs(rows)
    final_factor = rows[-1].lr / rows[0].lr if spec.warmup is None else rows[-1].lr / max(r.lr for r in rows)
    unit = "steps" if spec.per_step else "epochs"
    length = spec.main_length(epochs, steps_per_epoch)
    arguments = spec.arguments

    if spec.warmup and warmup_steps >= epochs * steps_per_epoch / 2:
        warnings_found.append(f"{name}: the warmup takes {spec.warmup.length_as_given} of the run's {run_length}; "
                              "the schedule after it barely runs")
    if spec.class_name == "CosineAnnealingLR" and not spec.length_from_run:
        t_max = arguments["T_max"]
        if t_max > length:
            warnings_found.append(
                f"{name}: T_max={t_max} {unit} is longer than the run ({length} {unit}); the LR only falls and ends at "
                f"{final_factor:.2f} of its start, never reaching eta_min (set T_max={length} to anneal fully)")
        elif t_max < length:
            warnings_found.append(f"{name}: T_max={t_max} is shorter than the run ({length} {unit}); after it the LR climbs "
                                  "back up (cosine is periodic); use cosine-restarts if you want restarts")
    elif spec.class_name in ("StepLR", "MultiStepLR"):
        values = [row.lr for row in rows] if spec.per_step else epoch_lrs
        changes = sum(1 for a, b in pairwise(values) if a != b)
        if changes == 0:
            warnings_found.append(f"{name}: never fires within {length} {unit}; the LR stays fixed (a smaller step size or "
                                  "earlier milestones would act)")
        elif changes == 1:
            warnings_found.append(f"{name}: fires only once within {length} {unit}; the LR ends at {final_factor:.2g} of its start")
    elif spec.class_name == "ReduceLROnPlateau":
        patience = arguments.get("patience", 10)
        chances = length // (patience + 1)
        if chances <= 2:
            warnings_found.append(
                f"{name}: patience={patience} leaves it at most {chances} chance{'s' if chances != 1 else ''} to cut the LR "
                f"in {length} epochs; the LR may never change")
    elif spec.class_name == "OneCycleLR":
        total = arguments.get("total_steps") or (arguments.get("epochs") or 0) * (arguments.get("steps_per_epoch") or 1)
        if total and total != length:
            warnings_found.append(f"{name}: its cycle is {total} {unit} but the run has {length}; "
                                  "drop total_steps/epochs to let lrlab fit it to the run")
    elif spec.class_name == "WarmupStableDecayLR":
        cooldown = max(1, round(arguments.get("cooldown", 0.2) * arguments.get("total_steps", length)))
        if cooldown < 2:
            warnings_found.append(f"{name}: the cooldown takes {cooldown} {unit[:-1]} of the run's {length}; the LR drops at "
                                  "once at the very end instead of annealing (a larger cooldown=, or stepping per batch)")
        total = arguments.get("total_steps")
        if total and total != length:
            warnings_found.append(f"{name}: total_steps={total} but the run has {length} {unit}; the cooldown "
                                  f"{'ends early and the LR stays at its floor' if total < length else 'never finishes'} "
                                  "(drop total_steps to let lrlab fit it to the run)")
    if spec.class_name and spec.class_name not in ("ReduceLROnPlateau", "CyclicLR", "CosineAnnealingWarmRestarts"):
        if 0.7 <= final_factor < 0.999:
            warnings_found.append(f"{name}: the LR ends at {final_factor:.2f} of its start; hardly a decay over this run")
        elif final_factor < 1e-3 and spec.class_name not in ("OneCycleLR", "LinearLR", "PolynomialLR", "CosineAnnealingLR",
                                                             "WarmupStableDecayLR"):
            warnings_found.append(f"{name}: the LR ends at {final_factor:.1e} of its start; the last epochs barely train")
    return warnings_found


def previews_csv(previews: dict[str, list[PreviewRow]]) -> str:
    """spec,step,epoch,lr rows for every spec's preview."""
    lines = ["spec,step,epoch,lr"] + [f'"{spec}",{r.step},{r.epoch},{r.lr!r}' for spec, rows in previews.items() for r in rows]
    return "\n".join(lines) + "\n"


def plot_previews(previews: dict[str, list[PreviewRow]], path: str, *, epochs: int, steps_per_epoch: int, lr: float,
                  metric_given: bool) -> None:
    """The LR of every spec at every step, on one plot written to `path` (.png, .svg or .pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if Path(path).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--plot {path} should end in .png, .svg or .pdf")
    figure, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for spec, rows in previews.items():
        ax.plot([r.step / steps_per_epoch for r in rows], [r.lr for r in rows], label=spec)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"Learning-rate schedules over {epochs} epochs (start LR {lr:g})")
    if any("plateau" in s.lower() for s in previews):
        ax.text(0.01, 0.02, "plateau assumes a " + ("given metric curve" if metric_given else "flat metric (no improvement)"),
                transform=ax.transAxes, fontsize=8, color="grey")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror}") from None
    plt.close(figure)


# The share of test images two similar schedules typically classify differently; sets how small a
# difference a test set can resolve before any run.
TYPICAL_DISAGREEMENT = 0.05


def resolvable_difference(test_images: int, disagreement: float = TYPICAL_DISAGREEMENT) -> float:
    """The 95% half-width a test set of `test_images` alone puts on a paired difference between two
    schedules that classify `disagreement` of its images differently (whatever the number of seeds)."""
    return NormalDist().inv_cdf(0.975) * math.sqrt(disagreement / test_images)


def doctor_test_set(test_images: int, min_effect: float) -> list[str]:
    """One line if a test set of `test_images` is too small to resolve differences of `min_effect` (0-1)."""
    resolution = resolvable_difference(test_images)
    if resolution <= min_effect:
        return []
    return [f"the test set has {test_images} images: its draw alone puts about ±{100 * resolution:.2g} points on a "
            f"difference between two schedules (if they disagree on {TYPICAL_DISAGREEMENT:.0%} of the images), more "
            f"than --min-effect {100 * min_effect:g}; use a larger test set to resolve such differences"]
