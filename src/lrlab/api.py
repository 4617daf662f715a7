"""The Python API: `train` one run and `compare` schedules on your own model and data, from a script or a notebook.

A model is a name (`cnn`), an import path (`nets.py:Net`) or a Python object: an `nn.Module` class or
a function returning a new model. Data is a name (`fashion-mnist`, `nets.py:load`) or a `(train, test)`
pair of torch Datasets of (image, label). Every `RunConfig` field is a keyword, checked as the command
line checks it; bad input raises `lrlab.UsageError` with the same one-line message.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from lrlab import imports
from lrlab.config import RunConfig, config_from_dict
from lrlab.errors import UsageError
from lrlab.specs import suggestion

# The options of a comparison that are not options of its runs.
COMPARISON_KEYS = ("schedules", "preset", "seeds", "baseline", "target_acc", "lr", "lrs", "min_effect", "trials", "search",
                   "tuning_seeds", "sampler", "prune", "study_storage", "max_seeds")
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class ComparisonResult:
    """A finished comparison: `summary` has one row per schedule, as numbers (accuracies and differences
    in percent, None where a figure does not exist); `to_pandas()` and `to_csv(path)` give it as a table."""

    out: Path
    summary: list[dict[str, Any]]
    verdict: str
    report_path: Path
    comparison: Any  # the figures behind the summary (lrlab.aggregate.Comparison)
    outcomes: list[Any]  # how each run ended (lrlab.executors.GridOutcome)

    def __str__(self) -> str:
        return f"{self.verdict}\nreport: {self.report_path}"

    def to_pandas(self):
        """The summary as a pandas DataFrame, one row per schedule (pandas is not a dependency of lrlab)."""
        try:
            import pandas
        except ImportError:
            raise UsageError("to_pandas() needs pandas (pip install pandas); to_csv(path) needs nothing") from None
        return pandas.DataFrame(self.summary)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the summary to `path` as CSV (an empty cell where a figure is None); returns the path."""
        import csv

        path = Path(path)
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(self.summary[0]))
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in self.summary)
        return path


@dataclass
class FoundLR:
    """What `lrlab.find_lr` found: `lr` is the LR to use (picked by `rule`, for the reason in `why`),
    `suggestions` each rule's LR; the plot of the range test is at `plot_path`."""

    lr: float
    rule: str
    why: str
    suggestions: dict[str, float]
    notes: list[str]
    plot_path: Path

    def __float__(self) -> float:
        return self.lr


def run_config(config: RunConfig | None, model: Any, data: Any, options: dict[str, Any], where: str,
               defaults: dict[str, Any] | None = None) -> tuple[RunConfig, Callable[..., nn.Module] | None, Any]:
    """The checked RunConfig for these arguments, the model builder given as an object (or None), and
    the data set given as objects, read into lrlab's form (or None)."""
    values = {**(defaults or {}), **(config.to_dict() if config is not None else {}), **options}
    for key in ("out", "data_dir"):  # a pathlib.Path is what a Python user passes for a folder
        if isinstance(values.get(key), os.PathLike):
            values[key] = os.fspath(values[key])
    builder = None
    if model is not None:
        if isinstance(model, str):
            values["model"] = model
        else:
            builder, values["model"] = model, imports.python_object_label(model)
    datasets = None
    if data is not None:
        if isinstance(data, str):
            values["dataset"] = data
        else:
            datasets = data
            first = data[0] if isinstance(data, (tuple, list)) and data else data
            values["dataset"] = imports.python_object_label(type(first))
    checked = config_from_dict(values, where)
    loaded = None
    if datasets is not None:
        from lrlab.data.torch_datasets import from_datasets

        loaded = from_datasets(datasets, checked.dataset, image_size=checked.image_size, memory_budget=checked.memory_budget)
    return checked, builder, loaded


def train(config: RunConfig | None = None, *, model: Any = None, data: Any = None, resume: bool = False,
          overwrite: bool = False, **options: Any):
    """Train one model into `out` and return its `RunResult`.

    `config` (optional) is a RunConfig to start from; keywords override it:
    `lrlab.train(model=Net, data=(train_set, test_set), schedule="onecycle:max_lr=0.1", epochs=5, out="runs/one")`.
    """
    from lrlab.engine import train as train_run

    checked, builder, loaded = run_config(config, model, data, options, "lrlab.train")
    return train_run(checked, resume=resume, overwrite=overwrite, data=loaded, builder=builder)


def find_lr(config: RunConfig | None = None, *, model: Any = None, data: Any = None, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, mode: str = "exp", diverge: float = 4.0, repeats: int = 1, **options: Any) -> FoundLR:
    """The LR range test: train `steps` batches at an LR growing from `start` to `end` and read a starting
    LR off the loss curve, as `lrlab find-lr` does; writes lr_find.csv, .png and .json into `out`
    (default runs/lr_find). `repeats` runs it with that many seeds and takes the median.
    `lrlab.find_lr(model=Net, data=(train_set, test_set), optimizer="sgd:momentum=0.9").lr`
    """
    from lrlab.engine import find_lr as range_test

    checked, builder, loaded = run_config(config, model, data, options, "lrlab.find_lr",
                                          {"quiet": True, "epochs": 1, "out": "runs/lr_find"})
    record = range_test(checked, start, end, steps, mode, diverge, repeats, data=loaded, builder=builder)
    return FoundLR(float(record["pick"]), record["rule"], record["why"],
                   {rule: float(s["lr"]) for rule, s in record["suggestions"].items()}, list(record["notes"]),
                   Path(checked.out) / "lr_find.png")


def compare(
    model: Any = None,
    data: Any = None,
    *,
    schedules: Sequence[str | dict[str, str]] | None = None,
    preset: str | None = None,
    seeds: Iterable[int] | None = None,
    baseline: str | None = None,
    target_acc: float | None = None,  # percent
    lr: float | str | None = None,
    lrs: Sequence[float] | None = None,
    min_effect: float | None = None,
    backend: str = "local",
    workers: int = 1,
    cpus_per_run: float | None = None,
    gpus_per_run: float = 0,
    max_retries: int = 2,
    ray_address: str | None = None,
    storage: str | None = None,
    runs_per_pass: int | str = "auto",
    trials: int | None = None,
    search: str | Sequence[str] | None = None,
    tuning_seeds: Iterable[int] | None = None,
    sampler: str | None = None,
    prune: str | None = None,
    study_storage: str | None = None,
    max_seeds: int | None = None,
    config: RunConfig | None = None,
    overwrite: bool = False,
    **options: Any,
) -> ComparisonResult:
    """Train every schedule with every seed (paired: one seed, the same weights and batches) into `out`,
    then write the report; returns its summary.

    `schedules` are specs ("step:step_size=5,gamma=0.5") or mappings with `schedule`, and optionally
    `label` and `optimizer`; or name a `preset` ("article", "modern"). `baseline` is the label the
    others are compared with (default: the first). `lr` sets every run's LR ("auto": the LR range
    test's pick); `lrs` runs every schedule at each LR and judges each at its best on validation
    data. `min_effect` is the smallest difference you care about, in points of accuracy (default
    0.5): the report says how many seeds would resolve it. `runs_per_pass` runs of one seed train together
    in one pass over the data where they can (`auto`, a number, or 1: one at a time). Every RunConfig option is a keyword (`epochs`,
    `optimizer`, `out`, ...); the runs are always quiet, and `quiet=True` also hides the progress bar.
    A model or data set given as a Python object trains in this process; workers and Ray import
    theirs, so they need import paths ("nets.py:Net"). `overwrite=True` replaces a comparison already in
    `out` (its runs, summary and report) instead of continuing it.

    With `trials` or `search` the comparison is a study (lrlab.study): each schedule is first tuned
    with `trials` trials (default 8) over `search` ("lr=0.005:0.5:log" or "lr=auto") and any ranges in
    its spec ("step:step_size=2:8,gamma=0.1:0.7") on `tuning_seeds` (default [1000]), sampled by
    `sampler` ("qmc" or "tpe") and pruned by `prune` ("sha", "hyperband" or "none"), in an Optuna
    storage (`study_storage`, default SQLite in `out`); then each is confirmed at its best setting on
    `seeds`, and with `max_seeds` more seeds are added where a comparison is still undecided.
    """
    from lrlab.comparison import DEFAULT_MIN_EFFECT, PRESETS
    from lrlab.grid import comparison_lr, run_comparison
    from lrlab.executors import InProcess, build_executor
    from lrlab.report import build_report, summary_records, verdict
    from lrlab.runs import RunDirectory
    from lrlab.study import arms_from_variants, labelled, run_study, settings_from_options

    study = settings_from_options(trials, search, tuning_seeds, sampler, prune, study_storage, max_seeds)
    variants, defaults = _variants(labelled(schedules) if study else schedules, preset, PRESETS)
    seeds, target_acc, min_effect, lrs = _checked_options(seeds, target_acc, min_effect, lrs)
    min_effect = DEFAULT_MIN_EFFECT * 100 if min_effect is None else min_effect
    if lr is not None and lrs:
        raise UsageError("give either --lr (one LR for every run) or --lrs (a sweep), not both")
    if study and (lr is not None or lrs):
        raise UsageError("a study searches the LR itself; give --search lr=LOW:HIGH:log (or lr=auto) instead of --lr/--lrs")
    arms = arms_from_variants(variants) if study else None
    if "out" not in options and config is None:
        raise UsageError("a comparison needs out=, the folder for its runs and report (--out DIR)")
    for key in ("schedule", "seed"):
        if key in options:
            raise UsageError(f"a comparison takes {key}s= (a list), not {key}=")
    show_progress = not options.pop("quiet", False)
    base, builder, loaded = run_config(config, model, data, options, "lrlab.compare", {"quiet": True, **defaults})
    if builder is not None or loaded is not None:
        if backend != "local" or workers != 1:
            given = "model" if builder is not None else "data set"
            raise UsageError(f"the {given} was given as a Python object, which worker processes and Ray cannot import; "
                             f"drop --workers/--backend to train in this process, or name it by import path "
                             f"(model='nets.py:Net', data='nets.py:load_data')")
    if storage and not Path(base.out).is_absolute():
        base = replace(base, out=str(Path(storage) / base.out))
    executor = build_executor(backend, workers, cpus_per_run, gpus_per_run, max_retries, ray_address, storage_given=bool(storage))
    if builder is not None:
        executor = InProcess(executor.threads, builder)
    # Held from before lr="auto" writes its range test until the report is written: a second
    # comparison on the same folder is refused before it touches anything.
    with RunDirectory(base.out).locked():
        if overwrite:  # `out` is checked and locked: the earlier comparison goes, the user's files stay
            from lrlab.comparison import remove_comparison

            remove_comparison(Path(base.out))
        if lr is not None:
            base = replace(base, optimizer=comparison_lr(lr, base, loaded, builder))
        if study:
            outcomes = run_study(base, arms, seeds, base.out, study, baseline=baseline, target_acc=target_acc,
                                 min_effect=min_effect / 100, executor=executor, runs_per_pass=runs_per_pass,
                                 data=loaded, show_progress=show_progress)
        else:
            outcomes = run_comparison(base, variants, seeds, base.out, baseline, target_acc, show_progress=show_progress,
                                      executor=executor, runs_per_pass=runs_per_pass, lrs=list(lrs) if lrs else None,
                                      min_effect=min_effect / 100, data=loaded)
        comparison = build_report(base.out)
    out = Path(base.out)
    return ComparisonResult(out, summary_records(comparison), verdict(comparison), out / "report.html", comparison, outcomes)


def _checked_options(seeds: Any, target_acc: Any, min_effect: Any, lrs: Any) -> tuple[list[int], float | None, float | None, list[float] | None]:
    """The comparison's own options, checked as the command line checks them (one UsageError line for
    a wrong type too); numpy numbers count as the Python numbers they are."""
    if seeds is None:
        seeds = list(DEFAULT_SEEDS)
    elif isinstance(seeds, (str, bytes, numbers.Number)) or not isinstance(seeds, Iterable):
        raise UsageError(f"seeds should be a list of whole numbers, e.g. seeds=[0, 1, 2], got {_shown(seeds)}")
    else:
        seeds = list(seeds)
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
            raise UsageError(f"seeds should be whole numbers, got {_shown(seeds)}")
        seeds = [int(s) for s in seeds]
    target_acc = _number(target_acc, "--target-acc", "an accuracy in percent, e.g. 90")
    if target_acc is not None and not 1 < target_acc <= 100:
        hint = f"; {target_acc:g} looks like a fraction: give {100 * target_acc:g}" if 0 < target_acc <= 1 else ""
        raise UsageError(f"--target-acc {target_acc:g} should be an accuracy in percent, e.g. 90{hint}")
    target_acc = None if target_acc is None else target_acc / 100  # a fraction from here on, as comparison.json holds it
    min_effect = _number(min_effect, "--min-effect", "in points of accuracy, between 0 and 100 (e.g. 0.5)")
    if min_effect is not None and not 0 < min_effect < 100:
        raise UsageError(f"--min-effect {min_effect} should be in points of accuracy, between 0 and 100 (e.g. 0.5)")
    if lrs is not None:
        if isinstance(lrs, (str, bytes, numbers.Number)) or not isinstance(lrs, Iterable):
            raise UsageError(f"lrs should be a list of LRs, e.g. lrs=[0.01, 0.1], got {_shown(lrs)}")
        lrs = [_number(lr, "--lrs", "a positive number") for lr in lrs]
    return seeds, target_acc, min_effect, lrs


def _number(value: Any, option: str, wanted: str) -> float | None:
    """`value` as a float when it is a real, finite number (None stays None); else a UsageError."""
    if value is None:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise UsageError(f"{option} {_shown(value)} should be a number, {wanted}")
    return float(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _variants(schedules: Sequence[Any] | None, preset: str | None, presets: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The arms of the comparison, and the run options a preset sets unless given."""
    from lrlab.grid import label_for, variants_from_specs
    from lrlab.comparison import Variant, check_label

    if schedules is not None and not preset and isinstance(schedules, Sequence) and not isinstance(schedules, str) \
            and len(schedules) == 0:
        raise UsageError("schedules is empty; list the specs to compare, e.g. ['constant', 'step:step_size=5'], "
                         "or name a --preset")
    if bool(preset) == bool(schedules):
        raise UsageError("give either --preset NAME or --schedules SPEC ... (preset= or schedules= in Python), not both")
    if preset:
        if preset not in presets:
            raise UsageError(f"unknown preset {preset!r}{suggestion(preset, presets)}; known: {', '.join(presets)}")
        chosen = presets[preset]
        defaults = {"epochs": chosen.epochs}
        if chosen.val_fraction is not None:
            defaults["val_fraction"] = chosen.val_fraction
        return list(chosen.variants), defaults
    if isinstance(schedules, str) or not isinstance(schedules, Sequence):
        raise UsageError(f"schedules should be a list of specs, e.g. ['constant', 'step:step_size=5'], got {schedules!r}")
    if all(isinstance(s, str) for s in schedules):
        return variants_from_specs(list(schedules)), {}
    variants = []
    for item in schedules:
        item = {"schedule": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "schedule" not in item or set(item) - {"schedule", "label", "optimizer"}:
            raise UsageError(f"each schedule is a spec, or a mapping with schedule: and optionally label: and optimizer:; "
                             f"got {_shown(item)}")
        for key in ("schedule", "optimizer"):
            if key in item and not isinstance(item[key], str) and not (key == "optimizer" and item[key] is None):
                raise UsageError(f"a schedule's {key}: is a spec written as text, e.g. 'step:step_size=5' or "
                                 f"'sgd:lr=0.1', got {_shown(item[key])}")
        label = item.get("label")
        if isinstance(label, (int, float)) and not isinstance(label, bool):
            label = str(label)  # `label: 7` in YAML
        label = check_label(label) if label is not None else label_for(item["schedule"])
        variants.append(Variant(label, item["schedule"], item.get("optimizer")))
    if len({v.label for v in variants}) != len(variants):
        raise UsageError("two schedules have the same label; give each its own label:")
    return variants, {}
