"""What a comparison is, apart from running it: its arms, the ready-made presets, and its folder
(the manifest, and one run folder per arm and seed). The grid runner writes this folder and the
aggregation reads it; neither needs the other.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lrlab.errors import UsageError

MANIFEST = "comparison.json"
DEFAULT_MIN_EFFECT = 0.005  # the smallest accuracy difference a user is assumed to care about: half a point


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison: a schedule, and optionally its own optimizer.

    In an LR sweep (`--lrs`) each arm is run once per LR: those variants carry the `lr` and the
    label of the `arm` they belong to, and their label names both (`step/lr=0.1`). `folder` is the
    shell-safe folder its runs live in (`StepLR-5-0.5`); None in a comparison written before lrlab
    named folders apart from labels, whose runs live under the label itself.
    """

    label: str
    schedule: str
    optimizer: str | None = None
    lr: float | None = None
    arm: str | None = None
    folder: str | None = None

    @property
    def arm_label(self) -> str:
        return self.arm or self.label

    @property
    def folder_name(self) -> str:
        """The folder of this variant's runs, relative to the comparison's folder."""
        return self.folder or self.label

    def as_manifest_entry(self) -> dict[str, Any]:
        """This variant as comparison.json holds it (no folder key where it has none, as older lrlab wrote it)."""
        entry = asdict(self)
        if entry["folder"] is None:
            del entry["folder"]
        return entry


def run_path(out: Path, folder: str, seed: int) -> Path:
    """Where the run with `seed` of the variant whose folder is `folder` (`Variant.folder_name`) lives in `out`."""
    return Path(out) / folder / f"seed-{seed}"


LABEL_LIMIT = 80  # characters: a label is read in tables, plot legends and one-line messages
FOLDER_LIMIT = 48  # characters of a folder name made from a label
# What a comparison's folder holds besides its arms' folders, and what a run folder holds: no arm's
# folder may take one of these names (compared without case, for case-insensitive file systems).
RESERVED_NAMES = frozenset(name.casefold() for name in (
    MANIFEST, "summary.csv", "summary.md", "report.html", "plots", "lr_find", "lr_find.json", "lr_find.csv", "lr_find.png",
    "run.lock", "config.yaml", "metrics.csv", "steps.csv", "status.json", "correct.npz", "best.pt", "last.pt", "study",
    "study.db", "study.json", "tuning", "log.txt"))


def check_label(label: Any) -> str:
    """`label` if it can name an arm in tables, messages and comparison.json; a UsageError saying why not."""
    if not isinstance(label, str):
        raise UsageError(f"a schedule's label should be text, got {type(label).__name__} {label!r:.40}")
    shown = repr(label[:40]) + ("..." if len(label) > 40 else "")
    if not label.strip():
        raise UsageError("a schedule's label is empty; give each schedule a name, e.g. label: step")
    if len(label) > LABEL_LIMIT:
        raise UsageError(f"the label {shown} is {len(label)} characters long; keep labels to {LABEL_LIMIT}")
    if not label.isprintable():
        raise UsageError(f"the label {shown} holds a control character (NUL, newline, tab); use plain text")
    if "/" in label or "\\" in label or label.strip() in (".", ".."):
        raise UsageError(f"the label {shown} holds a path ('/', '\\', '.' or '..'); a label is a name, e.g. step-0.5")
    if label != label.strip():
        raise UsageError(f"the label {shown} starts or ends with a space; write it without")
    return label


def safe_folder_name(label: str, taken: set[str]) -> str:
    """A folder name for the arm labelled `label` that a shell takes as it is (letters, digits and
    `._=+@-`, not starting with `-` or `.`), none of `RESERVED_NAMES`, and not in `taken` (names
    compared without case); `taken` gets the new name."""
    stem = re.sub(r"[^A-Za-z0-9._=+@-]+", "-", label).strip("-.")[:FOLDER_LIMIT].rstrip("-.") or "schedule"
    name, number = stem, 1
    while name.casefold() in taken or name.casefold() in RESERVED_NAMES:
        number += 1
        name = f"{stem}-{number}"
    taken.add(name.casefold())
    return name


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
    fields = {"label", "schedule", "optimizer", "lr", "arm", "folder"}
    if (not isinstance(manifest.get("base_config") if isinstance(manifest, dict) else None, dict)
            or not isinstance(variants, list) or not variants
            or not all(isinstance(v, dict) and set(v) <= fields
                       and isinstance(v.get("label"), str) and isinstance(v.get("schedule"), str)
                       and isinstance(v.get("folder", ""), str) for v in variants)
            or not isinstance(seeds, list) or not seeds
            or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in seeds)
            or manifest.get("baseline") not in [v.get("arm") or v["label"] for v in variants] + [v["label"] for v in variants]):
        raise UsageError(damaged)
    for variant in variants:
        # A folder (or, written by an older lrlab, a label) is a path inside the comparison
        # (`step/lr=0.1`); none may lead out of it.
        folder = variant.get("folder") or variant["label"]
        if (not variant["label"] or "\0" in folder or folder.startswith("/")
                or any(part in ("", ".", "..") for part in folder.split("/"))):
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
