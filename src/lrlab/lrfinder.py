"""LR range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3).

Train briefly while the LR grows from `start` to `end`, record the loss, and read a starting LR
off the curve. The model, optimizer and RNG are put back exactly as they were afterwards.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.ndimage import median_filter
from scipy.signal import savgol_filter
from torch import nn

from lrlab.errors import UsageError

RULES = {
    "valley": "45% of the way (in log LR) from where the smoothed loss leaves its plateau to its minimum",
    "steepest": "steepest fall of the smoothed loss against log(LR)",
    "minimum/10": "a tenth of the LR at the smoothed loss's minimum",
}
# Steepest follows noise on short curves; the valley depends only on where the fall starts and ends,
# so it moves little between seeds (after fastai's "valley" idea, with our own definition of it).
AUTO_RULE = "valley"
VALLEY_FRACTION = 0.45
MIN_STEPS = 10
# The smoothing window spans this share of the sweep (15 of 100 steps: 1.2 decades of 1e-7..10),
# about the width of the basin around a real curve's minimum; a quadratic fit keeps that basin's
# shape where a moving average of the same width would flatten it.
SMOOTHING_SHARE = 0.15
SPIKE_WINDOW = 5
RUNAWAY_WINDOW = 5


@dataclass
class RangeTest:
    """The swept LRs, raw and smoothed losses, and each rule's suggestion."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float]
    stopped_early: bool
    wrapped: bool
    notes: list[str] = field(default_factory=list)

    @property
    def pick(self) -> float:
        return self.suggestions[AUTO_RULE]


def check_settings(start: float, end: float, steps: int, mode: str, diverge: float) -> None:
    if not (start > 0 and end > 0):
        raise UsageError(f"--start {start:g} and --end {end:g} must both be positive")
    if start >= end:
        raise UsageError(f"--start {start:g} must be below --end {end:g}")
    if steps < MIN_STEPS:
        raise UsageError(f"--steps {steps} is too few to read a slope; use at least {MIN_STEPS} (100 is typical)")
    if mode not in ("exp", "linear"):
        raise UsageError(f"--mode {mode!r} should be exp or linear")
    if diverge <= 1:
        raise UsageError(f"--diverge {diverge:g} should be above 1 (the default 4 stops at 4x the lowest loss)")


def sweep(start: float, end: float, steps: int, mode: str) -> list[float]:
    """The LR of each step: geometric (exp) or evenly spaced (linear) from start to end."""
    if mode == "exp":
        return [start * (end / start) ** (i / (steps - 1)) for i in range(steps)]
    return [start + (end - start) * i / (steps - 1) for i in range(steps)]


def smoothing_window(steps: int) -> int:
    """The centred smoothing window, in steps, for a sweep of `steps`: odd, and at least a quadratic's worth."""
    return max(5, round(steps * SMOOTHING_SHARE) // 2 * 2 + 1)


def smooth(losses: list[float], window: int) -> list[float]:
    """The recorded losses smoothed without lag: a running median of 5, then a centred quadratic fit.

    The suggestions are read after the sweep, so each point can be smoothed with the losses on
    both sides of it, and a centred filter moves no feature of the curve along the LR axis (the
    causal moving average used before trailed the raw curve by more than a decade of LR on the
    README's range test, and pushed every suggestion up). The median removes single-batch spikes,
    which a linear filter would smear over its window. The Savitzky-Golay filter (scipy's) then
    fits a quadratic to the `window` points around each one: a minimum or a bend keeps its place,
    where a moving average of the same width would flatten an uneven valley and shift its bottom
    towards the gentler side. At the ends it evaluates the fit of the first or last window, so the
    ends do not lag either. A fit of one formula to the whole curve was the other choice; a range
    test's curve (plateau, fall, basin, blow-up) has no agreed formula, so a local fit it is.
    """
    window = min(window, len(losses) // 2 * 2 - 1)
    despiked = median_filter(np.asarray(losses, dtype=float), SPIKE_WINDOW, mode="mirror")
    return savgol_filter(despiked, window, 2, mode="interp").tolist()


class RunawayCheck:
    """Whether the loss has run away, decided step by step while the sweep runs.

    This has to be causal, unlike the smoothing the suggestions use: it decides whether to take
    the next step, whose loss cannot be known yet. The median of the last five losses ignores a
    single bad batch and stops two steps into a real runaway; the moving average used before took
    ten steps on a tenfold jump (tested), nearly a decade of LR further into the blow-up.
    """

    def __init__(self, diverge: float):
        self.diverge = diverge
        self.recent: deque[float] = deque(maxlen=RUNAWAY_WINDOW)
        self.lowest = math.inf

    def __call__(self, loss: float) -> bool:
        self.recent.append(loss)
        level = statistics.median(self.recent)
        self.lowest = min(self.lowest, level)
        return level > self.diverge * self.lowest


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    """Each rule's LR from a smoothed loss curve."""
    lowest = int(np.argmin(smoothed))
    descent = smoothed[: lowest + 1] if lowest >= 2 else smoothed
    slopes = np.gradient(np.asarray(descent), np.log(np.asarray(lrs[: len(descent)])))
    steepest = lrs[int(np.argmin(slopes))]
    # The valley runs from the last point still near the starting plateau (within a tenth of the
    # total drop) to the minimum. Measuring from the plateau's median and taking the last such
    # point keeps a noisy first few batches from starting the valley too early.
    plateau = statistics.median(smoothed[: max(1, lowest // 2)])
    near_plateau = plateau - 0.1 * (plateau - smoothed[lowest])
    falling = max((i for i in range(lowest + 1) if smoothed[i] >= near_plateau), default=0)
    valley = lrs[falling + int(VALLEY_FRACTION * (lowest - falling))]
    return {"valley": valley, "steepest": steepest, "minimum/10": lrs[lowest] / 10}


def range_test(
    model: nn.Module,
    make_optimizer: Callable[[Any], torch.optim.Optimizer],
    loader: Any,
    loss_fn: nn.Module,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    mode: str = "exp",
    diverge: float = 4.0,
    autocast: Callable = nullcontext,
) -> RangeTest:
    """Run the range test on `model` with a fresh optimizer from `make_optimizer`; restore everything after."""
    check_settings(start, end, steps, mode, diverge)
    saved_model = copy.deepcopy(model.state_dict())
    saved_rng = torch.get_rng_state()
    saved_cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    optimizer = make_optimizer(model.parameters())
    if hasattr(optimizer, "train"):
        optimizer.train()
    lrs, losses = [], []
    stopped_early = wrapped = False
    ran_away = RunawayCheck(diverge)
    try:
        model.train()
        batches = iter(loader)
        for step, lr in enumerate(sweep(start, end, steps, mode)):
            try:
                images, labels = next(batches)
            except StopIteration:
                wrapped = True
                loader.set_epoch(getattr(loader, "epoch", 0) + 1)
                batches = iter(loader)
                images, labels = next(batches)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                stopped_early = True
                break
            lrs.append(lr)
            losses.append(value)
            if ran_away(value) and step >= MIN_STEPS:
                stopped_early = True
                break
    finally:
        model.load_state_dict(saved_model)
        model.train(was_training)
        torch.set_rng_state(saved_rng)
        if saved_cuda_rng is not None:
            torch.cuda.set_rng_state_all(saved_cuda_rng)
    if len(losses) < MIN_STEPS:
        raise UsageError(f"the loss blew up after {len(losses)} steps of the range test; lower --start or --end")
    smoothed = smooth(losses, smoothing_window(steps))
    notes = [f"the test needed more steps ({steps}) than one epoch has ({len(loader)} batches) and wrapped around the data"] if wrapped else []
    return RangeTest(lrs, losses, smoothed, suggest(lrs, smoothed), stopped_early, wrapped, notes)


def combine(tests: list[RangeTest]) -> dict[str, Any]:
    """Median and spread of each rule's pick over repeated tests (one per seed)."""
    summary = {}
    for rule in RULES:
        picks = [t.suggestions[rule] for t in tests]
        summary[rule] = {"median": statistics.median(picks), "min": min(picks), "max": max(picks),
                         "spread_factor": max(picks) / min(picks), "picks": picks}
    return summary


def chosen_lr(tests: list[RangeTest]) -> float:
    """What `lr=auto` uses: the valley pick, or its median over repeats."""
    return statistics.median(t.pick for t in tests)


def write_outputs(folder, tests: list[RangeTest]) -> dict[str, Any]:
    """lr_find.csv, lr_find.png/.svg (suggestions marked) and lr_find.json in `folder`; returns the JSON."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["repeat,lr,loss,smoothed_loss"]
    for repeat, test in enumerate(tests):
        lines += [f"{repeat},{lr!r},{loss!r},{smoothed!r}" for lr, loss, smoothed in zip(test.lrs, test.losses, test.smoothed)]
    (folder / "lr_find.csv").write_text("\n".join(lines) + "\n")
    figure, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for repeat, test in enumerate(tests):
        seed = f", seed +{repeat}" if len(tests) > 1 else ""
        line, = ax.plot(test.lrs, test.losses, alpha=0.35, linewidth=0.7, marker=".", markersize=2, label=f"recorded loss{seed}")
        ax.plot(test.lrs, test.smoothed, color=line.get_color(), linewidth=1.8, label=f"centred smoothing, read by the rules{seed}")
    styles = {"valley": ("tab:red", "-"), "steepest": ("tab:green", "--"), "minimum/10": ("tab:purple", ":")}
    for rule, (colour, style) in styles.items():
        value = statistics.median(t.suggestions[rule] for t in tests)
        ax.axvline(value, color=colour, linestyle=style, label=f"{rule}: {value:.3g}" + (" (auto)" if rule == AUTO_RULE else ""))
    ax.set_xscale("log")
    low = min(min(min(t.smoothed), min(t.losses)) for t in tests)
    ax.set_ylim(low * 0.9, max(t.smoothed[0] for t in tests) * 1.5)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    for suffix in ("png", "svg"):
        figure.savefig(folder / f"lr_find.{suffix}")
    plt.close(figure)
    combined = combine(tests)
    record = {
        "pick": chosen_lr(tests), "rule": AUTO_RULE, "why": RULES[AUTO_RULE],
        "suggestions": {rule: {"lr": combined[rule]["median"], "rule": RULES[rule]} for rule in RULES},
        "repeats": len(tests), "spread": combined,
        "stopped_early": [t.stopped_early for t in tests], "notes": sorted({n for t in tests for n in t.notes}),
    }
    (folder / "lr_find.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
