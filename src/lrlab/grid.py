"""Schedules side by side: the grid of ordinary runs (schedule x seed) behind `lrlab.compare` and
`lrlab compare`; `aggregate` reads the results back. (Named grid, not compare, so that `lrlab.compare`
is the function.)

Every run of one seed starts from the same weights and sees the same batches, so differences
between schedules are paired. A finished run is skipped and an unfinished one resumed, so a
comparison stopped half-way continues where it stopped.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from lrlab.comparison import (DEFAULT_MIN_EFFECT, LABEL_LIMIT, MANIFEST, Variant, check_label, read_manifest, run_path,
                              safe_folder_name)
from lrlab.config import RunConfig, config_from_dict
from lrlab.data.loader import batches_per_epoch
from lrlab.errors import UsageError, clip, first_names
from lrlab.executors import GridOutcome, GridProgress, GridTask, InProcess
from lrlab.preview import doctor, doctor_test_set
from lrlab.runs import RunDirectory
from lrlab.schedules import NO_SCHEDULE, parse_schedule


def label_for(spec: str) -> str:
    """A readable label for a schedule spec, written like the torch call: `StepLR(5, 0.5)` (its runs'
    folder gets a shell-safe name of its own: `comparison.safe_folder_name`)."""
    label = re.sub(r"[^A-Za-z0-9_.=,+()@* \-]+", "_", parse_schedule(spec).label).strip("_ ") or NO_SCHEDULE
    return clip(label, LABEL_LIMIT)


def variants_from_specs(specs: list[str]) -> list[Variant]:
    labels = [label_for(spec) for spec in specs]
    if len(set(labels)) != len(labels):
        raise UsageError("the same schedule is listed twice; give each schedule once")
    taken: set[str] = set()
    return [Variant(label, spec, folder=safe_folder_name(label, taken)) for label, spec in zip(labels, specs)]


# Schedules that set their own peak LR, ignoring the optimizer's: an LR sweep sets this argument too.
PEAK_LR_ARGUMENT = {"OneCycleLR": "max_lr", "CyclicLR": "max_lr"}


def at_lr(variant: Variant, lr: float, base_optimizer: str, lr_text: str | None = None) -> Variant:
    """`variant` run at `lr`: the optimizer's lr is `lr`, and so is the peak (max_lr) of a schedule
    that sets its own (OneCycleLR, CyclicLR); every other argument of the schedule stays as given.
    `lr_text` is how the label and folder write the LR (default `lr:g`)."""
    from lrlab.optimizers import with_lr

    schedule = variant.schedule
    argument = PEAK_LR_ARGUMENT.get(parse_schedule(schedule).class_name)
    if argument:
        schedule = re.sub(rf"\b{argument}=[^,@]+", f"{argument}={lr!r}", schedule)
    lr_text = lr_text or f"{lr:g}"
    folder = None if variant.folder is None else f"{variant.folder}/lr={lr_text}"
    return Variant(f"{variant.label}/lr={lr_text}", schedule, with_lr(variant.optimizer or base_optimizer, lr), lr=lr,
                   arm=variant.label, folder=folder)


def sweep(variants: list[Variant], lrs: list[float] | None, base_optimizer: str) -> list[Variant]:
    """Every variant at every LR of `lrs` (or each as it is, without `lrs`).

    Each LR gets its own label and folder: written `:g` (`lr=0.1`) unless two LRs would then read
    alike (0.1 and 0.1000001), when every LR is written in full."""
    if not lrs:
        return list(variants)
    shown = " ".join(clip(repr(lr), 20) for lr in lrs[:6])
    if not all(isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0 for lr in lrs):
        raise UsageError(f"--lrs {shown}: each LR should be a positive number")
    if len(set(lrs)) != len(lrs):
        raise UsageError(f"--lrs {shown}: give each LR once")
    lrs = sorted(float(lr) for lr in lrs)
    texts = [f"{lr:g}" for lr in lrs]
    if len(set(texts)) != len(texts):
        texts = [repr(lr) for lr in lrs]
    return [at_lr(variant, lr, base_optimizer, text) for variant in variants for lr, text in zip(lrs, texts)]


def run_config(base: RunConfig, variant: Variant, seed: int, out: Path) -> RunConfig:
    return replace(base, schedule=variant.schedule, optimizer=variant.optimizer or base.optimizer,
                   seed=seed, out=str(run_path(out, variant.folder_name, seed)), quiet=True)


def with_folders(arms: list[Variant], out: Path) -> list[Variant]:
    """`arms`, each with the folder its runs live in: the one an earlier attempt at the comparison in
    `out` gave it (a comparison written by an older lrlab keeps its runs under their labels), or
    else a new shell-safe name (`safe_folder_name`) that no other arm's folder takes."""
    earlier: dict[str, str | None] = {}
    if (out / MANIFEST).exists():
        for entry in read_manifest(out)["variants"]:
            variant = Variant(**entry)
            root = None if variant.folder is None else variant.folder.split("/")[0] if variant.arm else variant.folder
            earlier.setdefault(variant.arm_label, root)
    taken = {(root or label).split("/")[0].casefold() for label, root in earlier.items()}
    placed = []
    for arm in arms:
        if arm.label in earlier:
            placed.append(replace(arm, folder=earlier[arm.label]))
        elif arm.folder and arm.folder.casefold() not in taken and safe_folder_name(arm.folder, set()) == arm.folder:
            # named already (variants_from_specs), shell-safe and free
            taken.add(arm.folder.casefold())
            placed.append(arm)
        else:
            placed.append(replace(arm, folder=safe_folder_name(arm.label, taken)))
    return placed


def _manifest(out: Path, base: RunConfig, variants: list[Variant], seeds: list[int], baseline: str,
              target_acc: float | None, min_effect: float) -> dict[str, Any]:
    """comparison.json for this comparison, merged with what `out` holds of an earlier attempt; a
    UsageError where `out` holds a different comparison. Nothing is written."""
    manifest = {"base_config": {**base.to_dict(), "schedule": "constant", "seed": 0, "out": str(out)},
                "variants": [v.as_manifest_entry() for v in variants], "seeds": seeds, "baseline": baseline,
                "target_acc": target_acc, "min_effect": min_effect}
    path = out / MANIFEST
    if path.exists():
        existing = read_manifest(out)
        changed = config_from_dict(existing["base_config"], str(path)).differences(config_from_dict(manifest["base_config"], "--"))
        if changed:
            raise UsageError(f"{out} holds a comparison with different {', '.join(changed)}; use another --out")
        known = {v["label"]: v for v in existing["variants"]}
        for variant in manifest["variants"]:
            if variant["label"] in known and known[variant["label"]] != variant:
                raise UsageError(f"{out} already has a different schedule labelled {variant['label']!r}; use another --out")
            known[variant["label"]] = variant
        manifest["variants"] = list(known.values())
        manifest["seeds"] = sorted(set(existing["seeds"]) | set(seeds))
    return manifest


def run_comparison(
    base: RunConfig,
    variants: list[Variant],
    seeds: list[int],
    out: str | Path,
    baseline: str | None = None,
    target_acc: float | None = None,
    show_progress: bool = True,
    executor: Any = None,
    runs_per_pass: int | str = "auto",
    lrs: list[float] | None = None,
    min_effect: float = DEFAULT_MIN_EFFECT,
    data: Any = None,
) -> list[GridOutcome]:
    """Train every variant with every seed (and at every LR of `lrs`) into `out`, skipping finished
    runs and resuming the rest.

    `executor` (from `executors.build_executor`) says where the passes train; by default one after
    another in this process. `runs_per_pass` is how many runs of one seed train together in one
    pass over the data (`auto`: as many as a few timed steps show faster per run than one alone, within
    a GPU's free memory; 1: one at a time).
    With `lrs` the report picks each schedule's LR on validation data (see `at_lr` for which
    argument an LR sets). `min_effect` is the smallest accuracy difference (0-1) the user cares
    about: the report says how many seeds would resolve it.
    `data` is the loaded data set, when the caller has it already.
    """
    from lrlab.assembly import load_run_data, run_model_factory, split_for_run

    out = Path(out)
    parse_runs_per_pass(runs_per_pass)
    if not variants or not seeds:
        raise UsageError("a comparison needs at least one schedule and one seed")
    if len(set(seeds)) != len(seeds):
        raise UsageError("a seed is listed twice; give each seed once")
    for variant in variants:
        check_label(variant.label)
    if len({v.label for v in variants}) != len(variants):
        raise UsageError("two schedules have the same label; give each its own label:")
    baseline = baseline or variants[0].label
    if baseline not in [v.label for v in variants]:
        raise UsageError(f"--baseline {baseline!r} is not one of the schedules: {', '.join(v.label for v in variants)}")
    for variant in sweep(variants, lrs, base.optimizer):
        for seed in seeds:
            run_config(base, variant, seed, out).validate()  # every run option checked before the folder is made
    executor = executor or InProcess()
    folder = RunDirectory(out)
    with folder.locked():  # held from before anything is decided about the folder until every run has ended
        arms = with_folders(variants, out)
        variants = sweep(arms, lrs, base.optimizer)
        tasks = [GridTask(v.label, s, run_config(base, v, s, out)) for v in variants for s in seeds]
        _refuse_foreign_files(folder, variants)
        manifest = _manifest(out, base, variants, seeds, baseline, target_acc, min_effect)
        # Nothing is written until every check has passed, the data and the model included: a
        # refused comparison leaves nothing that would refuse the corrected command.
        data = data if data is not None else load_run_data(base)
        builder = getattr(executor, "builder", None)  # a model given as a Python object (in process only)
        run_model_factory(base, data, builder)  # a model that cannot work stops here, once
        run_data = split_for_run(data, base)
        steps_per_epoch = _steps_per_epoch(base, run_data)
        with executor.session(out):
            folder.write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
            for line in doctor_test_set(len(run_data.test_labels), min_effect):
                print(f"lrlab: note: {line}", file=sys.stderr)
            for variant in arms:
                for line in doctor(variant.schedule, base.epochs, steps_per_epoch):
                    print(f"lrlab: note: {line}", file=sys.stderr)
            outcomes = {}
            waiting = []
            for task in tasks:
                status = RunDirectory(task.config.out).read_status()
                if status.get("state") in ("finished", "diverged"):
                    outcomes[task.label, task.seed] = GridOutcome(task.label, task.seed, status["state"], status.get("reason", ""))
                else:
                    waiting.append(task)
            passes, plan = plan_passes(waiting, runs_per_pass, base, data, builder)
            progress = GridProgress(tasks, base.epochs, show_progress)
            for line in plan:
                progress.say(line)
            paths = {(task.label, task.seed): task.config.out for task in tasks}
            try:
                for outcome in executor.run(passes, progress, data):
                    outcomes[outcome.label, outcome.seed] = outcome
                    if outcome.retries:
                        RunDirectory(paths[outcome.label, outcome.seed]).add_to_status(retries=outcome.retries)
                    if outcome.state in ("diverged", "failed"):
                        progress.say(f"lrlab: {outcome.label} seed {outcome.seed} {outcome.state}: {outcome.reason}")
            finally:
                progress.close()
    return [outcomes[task.label, task.seed] for task in tasks]


def _refuse_foreign_files(folder: RunDirectory, variants: list[Variant]) -> None:
    """A new comparison goes only into an empty folder, or one holding what an earlier attempt left."""
    folder.check_writable()
    if (folder.path / MANIFEST).exists():
        return
    # A study's tuning phase writes its trials, record and storage here before the comparison starts.
    ours = {"lr_find", "tuning", "study.json", "study.db", *(v.folder_name.split("/")[0] for v in variants)}
    foreign = [name for name in folder.foreign_files() if name not in ours]
    if foreign:
        raise UsageError(f"{folder.path} holds files lrlab did not make ({first_names(foreign)}); choose an empty or new "
                         "--out for the comparison")


def parse_runs_per_pass(text: str | int) -> int | str:
    """`auto` or a whole number of at least 1, as --runs-per-pass takes it."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or str(text).strip() != str(value):
        raise UsageError(f"--runs-per-pass {text!r} should be auto or a whole number of at least 1 (1 trains one run at a time)")
    return value


def plan_passes(tasks: list[GridTask], runs_per_pass: int | str, base: RunConfig, data,
                builder: Any = None) -> tuple[list[list[GridTask]], list[str]]:
    """The passes that train `tasks` (runs of one seed that can share their batches go together,
    at most `runs_per_pass` a pass), and the lines that tell the user how they were grouped."""
    from lrlab.group import alone_reason, choose_runs_per_pass, group_key

    runs_per_pass = parse_runs_per_pass(runs_per_pass)
    if runs_per_pass == "auto":
        sharing = Counter(key for key in (group_key(task.config) for task in tasks) if key is not None)
        choice = choose_runs_per_pass(base, data, builder, could_share=max(sharing.values(), default=1))
        size, why = choice.runs, choice.why
    else:
        size, why = runs_per_pass, "asked for"
    notes = []
    if size > 1 and len(tasks) > 1 and data is not None:  # without the data no blank batch can be shaped
        problem = _why_not_stacked(base, data, builder)
        if problem:
            size = 1
            notes.append(f"lrlab: note: this model cannot train in groups under torch.func.vmap ({problem}); "
                         f"each run trains alone")
    together: dict[Any, list[GridTask]] = {}
    alone: list[GridTask] = []
    for task in tasks:
        key = group_key(task.config) if size > 1 else None
        (alone if key is None else together.setdefault(key, [])).append(task)
    passes = [[task] for task in alone]
    for members in together.values():
        count = math.ceil(len(members) / size)
        passes += [members[index::count] for index in range(count)]  # even passes: 5 runs at 4 a pass go 3 + 2
    order = {id(task): index for index, task in enumerate(tasks)}
    passes.sort(key=lambda members: order[id(members[0])])
    if not tasks:
        return passes, []
    if size == 1:
        spread = "; --workers N spreads runs over the cores" if runs_per_pass == "auto" else ""
        return passes, [f"lrlab: {_count(len(tasks), 'run')}, one at a time ({why}){spread}", *notes]
    grouped = sum(len(members) for members in passes if len(members) > 1)
    lines = [f"lrlab: {_count(len(tasks), 'run')} in {_count(len(passes), 'pass', 'passes')} over the data; {grouped} of them "
             f"share a pass with other runs of their seed (up to {size} a pass, {why})"]
    reasons: dict[str, list[str]] = {}
    for task in alone:
        labels = reasons.setdefault(alone_reason(task.config), [])
        if task.label not in labels:
            labels.append(task.label)
    for reason, labels in reasons.items():
        lines.append(f"lrlab: note: {', '.join(labels)} train{'s' if len(labels) == 1 else ''} one run at a time: {reason}")
    return passes, lines


def _why_not_stacked(base: RunConfig, data, builder: Any = None) -> str | None:
    """Why two copies of the model cannot take a training step together under vmap (a data-dependent
    `if`, `.item()`), tried on two blank images; None when they can. The random generator is left as it was."""
    import torch
    from torch import nn

    from lrlab.assembly import run_model_factory
    from lrlab.optimizers import parse_optimizer
    from lrlab.step import StackedStep
    from lrlab.vectorized import ArmOptimizer

    factory = run_model_factory(base, data, builder, check=False)
    with torch.random.fork_rng(devices=[]):
        try:
            models = [factory(), factory()]
            optimizers = [ArmOptimizer(parse_optimizer("sgd:lr=0.1"), model.parameters()) for model in models]
            StackedStep(models, optimizers, nn.CrossEntropyLoss()).train(torch.zeros(2, data.channels, *data.image_size),
                                                                         torch.zeros(2, dtype=torch.long))
        except Exception as error:  # noqa: BLE001 - the user's model: say what vmap found, then train alone
            return clip(f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}", 160)
    return None


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number} {one if number == 1 else many or one + 's'}"


def _steps_per_epoch(base: RunConfig, run_data) -> int:
    return max(1, batches_per_epoch(len(run_data.train_labels), base.batch_size))


def comparison_lr(lr: str | float, base: RunConfig, data: Any = None, builder: Any = None) -> str:
    """The optimizer spec every run of the comparison uses, with --lr applied (`data`, `builder`: the
    data set and model when given as Python objects)."""
    from lrlab.engine import find_lr
    from lrlab.optimizers import with_lr

    if lr == "auto":
        record = find_lr(replace(base, out=str(Path(base.out) / "lr_find")), data=data, builder=builder)
        print(f"lrlab: --lr auto picked {record['pick']:.4g} for every run ({record['why']})", file=sys.stderr)
        return with_lr(base.optimizer, record["pick"])
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise UsageError(f"--lr {lr!r} should be a number or auto") from None
    if value <= 0:
        raise UsageError(f"--lr {lr} should be positive")
    return with_lr(base.optimizer, value)
