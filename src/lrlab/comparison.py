"""What a comparison is, apart from running it: its arms, the ready-made presets, and its folder
(the manifest, and one run folder per arm and seed). The grid runner writes this folder and the
aggregation reads it; neither needs the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lrlab.errors import UsageError

MANIFEST = "comparison.json"
DEFAULT_MIN_EFFECT = 0.005  # the smallest accuracy difference a user is assumed to care about: half a point


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a schedule, and optionally its own optimizer.

    In an LR sweep (`--lrs`) each arm is run once per LR: those variants carry the `lr` and the
    label of the `arm` they belong to, and their label names both (`step/lr=0.1`).
    """

    label: str
    schedule: str
    optimizer: str | None = None
    lr: float | None = None
    arm: str | None = None

    @property
    def arm_label(self) -> str:
        return self.arm or self.label


def run_path(out: Path, label: str, seed: int) -> Path:
    """Where the run of the arm labelled `label` with `seed` lives in the comparison folder `out`."""
    return Path(out) / label / f"seed-{seed}"


def read_manifest(out: Path) -> dict[str, Any]:
    """comparison.json, checked: a base config, at least one variant with a label and a schedule, seeds."""
    path = Path(out) / MANIFEST
    if not Path(out).is_dir():
        raise UsageError(f"{out} is not a folder; give the --out folder of an lrlab compare")
    damaged = f"{path} is damaged or not lrlab's; run lrlab compare again with the same --out to rewrite it"
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{out} holds no comparison ({MANIFEST} is missing); run lrlab compare first") from None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise UsageError(damaged) from None
    variants = manifest.get("variants") if isinstance(manifest, dict) else None
    seeds = manifest.get("seeds") if isinstance(manifest, dict) else None
    fields = {"label", "schedule", "optimizer", "lr", "arm"}
    if (not isinstance(manifest.get("base_config") if isinstance(manifest, dict) else None, dict)
            or not isinstance(variants, list) or not variants
            or not all(isinstance(v, dict) and set(v) <= fields
                       and isinstance(v.get("label"), str) and isinstance(v.get("schedule"), str) for v in variants)
            or not isinstance(seeds, list) or not seeds
            or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)
            or manifest.get("baseline") not in [v.get("arm") or v["label"] for v in variants] + [v["label"] for v in variants]):
        raise UsageError(damaged)
    for variant in variants:
        # A label is a folder path inside the comparison (`step/lr=0.1`); none may lead out of it.
        label = variant["label"]
        if not label or "\0" in label or label.startswith("/") or any(part in ("", ".", "..") for part in label.split("/")):
            raise UsageError(damaged)
    return manifest


@dataclass(frozen=True)
class Preset:
    """A ready-made set of arms, the run length they were meant for, and their validation fraction."""

    description: str
    epochs: int
    variants: tuple[Variant, ...]
    val_fraction: float | None = None  # None: the usual default


PRESETS = {
    "article": Preset(
        "the article's experiment: a fixed LR against StepLR, CosineAnnealingLR, ReduceLROnPlateau and ExponentialLR "
        "with its exact settings, stepped once per epoch after training, over 20 epochs",
        20,
        (
            Variant("constant", "constant"),
            Variant("step", "step:step_size=5,gamma=0.5"),
            Variant("cosine-T50", "cosine:T_max=50"),
            Variant("plateau", "plateau:mode=min,factor=0.5,patience=5,monitor=test_loss"),
            Variant("exponential", "exponential:gamma=0.95"),
        ),
        val_fraction=0,  # the article chose on test data; its report says that is optimistic
    ),
    "modern": Preset(
        "what people use today: one-cycle, linear warmup then cosine to zero, linear decay to zero, "
        "warmup-stable-decay (a 1-sqrt cooldown over the last 20%), and schedule-free AdamW (no schedule at all), "
        "over 20 epochs",
        20,
        (
            Variant("constant", "constant"),
            Variant("onecycle", "onecycle:max_lr=0.1"),
            Variant("warmup-cosine", "warmup(linear,epochs=1)+cosine:T_max=19"),
            Variant("linear-to-zero", "linear:start_factor=1.0,end_factor=0.0,total_iters=20"),
            Variant("warmup-stable-decay", "warmup(linear,epochs=1)+wsd:cooldown=0.2,shape=1-sqrt"),
            Variant("schedulefree-adamw", "constant", "adamw-schedulefree:lr=0.005,warmup_steps=200"),
        ),
    ),
}


# What a comparison writes at the top of its folder, besides its run folders (those holding config.yaml and status.json).
COMPARISON_FILES = (MANIFEST, "summary.csv", "summary.md", "report.html", "lr_find.json", "lr_find.csv", "lr_find.png",
                    "lr_find.svg", "study.json", "study.db")


def remove_comparison(out: Path) -> None:
    """Delete what lrlab wrote in the comparison folder `out` (for --overwrite): its runs, manifest,
    summaries, report and plots. Files lrlab did not make stay, and so do the folders holding them."""
    from lrlab.runs import LEFT_BY_AN_EARLIER_ATTEMPT, LOCK_NAME, RunDirectory

    out = Path(out)
    if not (out / MANIFEST).is_file() and not (out / "study.json").is_file():
        return  # no comparison here: nothing of lrlab's to replace
    for status in sorted(out.rglob("status.json")):
        run = RunDirectory(status.parent)
        if not run.config_path.is_file():
            continue  # a run folder holds both; this is someone else's status.json
        run.clear()
        for name in LEFT_BY_AN_EARLIER_ATTEMPT:
            if name != LOCK_NAME:  # a lock belongs to whoever holds it
                (run.path / name).unlink(missing_ok=True)
    for name in COMPARISON_FILES:
        (out / name).unlink(missing_ok=True)
    for plot in [*(out / "plots").glob("*.png"), *(out / "plots").glob("*.svg")]:
        plot.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
