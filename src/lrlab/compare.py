"""Schedules side by side: a grid of ordinary runs (schedule x seed); `aggregate` reads the results back.

Every run of one seed starts from the same weights and sees the same batches, so differences
between schedules are paired. A finished run is skipped and an unfinished one resumed, so a
comparison stopped half-way continues where it stopped.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lrlab.comparison import MANIFEST, Variant, read_manifest, run_path
from lrlab.config import RunConfig, config_from_dict
from lrlab.data.loader import batches_per_epoch
from lrlab.errors import UsageError
from lrlab.executors import GridOutcome, GridProgress, GridTask, InProcess
from lrlab.preview import doctor
from lrlab.runs import RunDirectory


def label_for(spec: str) -> str:
    """A short, file-system-safe label for a schedule spec."""
    return re.sub(r"[^A-Za-z0-9_.=,+\-]+", "_", spec).strip("_") or "constant"


def variants_from_specs(specs: list[str]) -> list[Variant]:
    labels = [label_for(spec) for spec in specs]
    if len(set(labels)) != len(labels):
        raise UsageError("the same schedule is listed twice; give each schedule once")
    return [Variant(label, spec) for label, spec in zip(labels, specs)]


def run_config(base: RunConfig, variant: Variant, seed: int, out: Path) -> RunConfig:
    return replace(base, schedule=variant.schedule, optimizer=variant.optimizer or base.optimizer,
                   seed=seed, out=str(run_path(out, variant.label, seed)), quiet=True)


def _write_manifest(out: Path, base: RunConfig, variants: list[Variant], seeds: list[int], baseline: str,
                    target_acc: float | None) -> None:
    manifest = {"base_config": {**base.to_dict(), "schedule": "constant", "seed": 0, "out": str(out)},
                "variants": [asdict(v) for v in variants], "seeds": seeds, "baseline": baseline, "target_acc": target_acc}
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
    RunDirectory(out).write_text(path, json.dumps(manifest, indent=2) + "\n")


def run_comparison(
    base: RunConfig,
    variants: list[Variant],
    seeds: list[int],
    out: str | Path,
    baseline: str | None = None,
    target_acc: float | None = None,
    show_progress: bool = True,
    executor: Any = None,
) -> list[GridOutcome]:
    """Train every variant with every seed into `out`, skipping finished runs and resuming the rest.

    `executor` (from `executors.build_executor`) says where the runs train; by default one after
    another in this process.
    """
    from lrlab.engine import load_run_data, split_for_run

    out = Path(out)
    if not variants or not seeds:
        raise UsageError("a comparison needs at least one schedule and one seed")
    if len(set(seeds)) != len(seeds):
        raise UsageError("a seed is listed twice; give each seed once")
    baseline = baseline or variants[0].label
    if baseline not in [v.label for v in variants]:
        raise UsageError(f"--baseline {baseline!r} is not one of the schedules: {', '.join(v.label for v in variants)}")
    tasks = [GridTask(v.label, s, run_config(base, v, s, out)) for v in variants for s in seeds]
    for task in tasks:
        task.config.validate()
    executor = executor or InProcess()
    RunDirectory(out).check_writable()
    with executor.session(out):
        _write_manifest(out, base, variants, seeds, baseline, target_acc)
        data = load_run_data(base)
        steps_per_epoch = _steps_per_epoch(base, split_for_run(data, base))
        for variant in variants:
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
        progress = GridProgress(tasks, base.epochs, show_progress)
        paths = {(task.label, task.seed): task.config.out for task in tasks}
        try:
            for outcome in executor.run(waiting, progress, data):
                outcomes[outcome.label, outcome.seed] = outcome
                if outcome.retries:
                    RunDirectory(paths[outcome.label, outcome.seed]).add_to_status(retries=outcome.retries)
                if outcome.state in ("diverged", "failed"):
                    progress.say(f"lrlab: {outcome.label} seed {outcome.seed} {outcome.state}: {outcome.reason}")
        finally:
            progress.close()
    return [outcomes[task.label, task.seed] for task in tasks]


def _steps_per_epoch(base: RunConfig, run_data) -> int:
    return max(1, batches_per_epoch(len(run_data.train_labels), base.batch_size))


