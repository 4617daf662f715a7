"""A comparison as a study: tune each schedule with an equal budget of trials on its own seeds, then
confirm each schedule's best setting on fresh seeds, judged once on the test set.

Tuning. Every schedule gets `trials` trials over its search space (the LR, and any ranges in its
spec), sampled by Optuna (quasi-random Sobol points by default, TPE as an option) and scored on
final validation accuracy. Losing trials are stopped at epoch rungs by Optuna's successive-halving
or Hyperband pruner. Trials are ordinary runs in tuning/<arm>/trial-<n>, trained by the comparison's
executor (in process, worker processes, Ray); only this process talks to the Optuna storage.

The pruner sees the trials in trial-number order at each rung, so its decisions are those of the
same study run one trial at a time, whatever the number of workers: the trials of a round train
side by side up to a rung, then are judged there one by one. A study stopped and started again
resumes: finished and pruned trials are kept, paused or interrupted ones resume from last.pt.

Confirmation. Each schedule's best trial is re-run with the confirmation seeds (`--seeds`), which
the tuning seeds never overlap, to the end with no pruning: the ordinary comparison (grid.py) that
the report judges on the test set. With `max_seeds`, seeds are added in rounds to the schedules
whose comparison with the baseline is still unresolved; see `sequential_decisions` for why looking
after every round keeps the false-"real" rate at its level.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lrlab.comparison import MANIFEST, Variant
from lrlab.config import RunConfig
from lrlab.errors import UsageError, clip, first_names
from lrlab.executors import GridOutcome, GridProgress, GridTask, InProcess
from lrlab.runs import RunDirectory
from lrlab.tuning import (
    DEFAULT_TRIALS,
    PRUNERS,
    SAMPLERS,
    STUDY_RECORD,
    TUNING_FOLDER,
    Range,
    RangedSchedule,
    TrialRecord,
    lr_range_around,
    read_record,
    write_record,
)

REDUCTION_FACTOR = 3  # successive halving keeps the best third at each rung
TPE_ROUND = 4  # TPE learns between rounds of this many trials (QMC needs no feedback: one round)
SAMPLER_SEED = 0
DEFAULT_TUNING_SEEDS = (1000,)
STORAGE_FILE = "study.db"
ALPHA = 0.05
PEAK_LR_ARGUMENTS = ("max_lr",)  # one-cycle's and cyclic's peak follows the searched LR (grid.at_lr)


@dataclass(frozen=True)
class StudyArm:
    """One schedule of a study: its label, its spec with searched ranges, and optionally its own optimizer."""

    label: str
    schedule: RangedSchedule
    optimizer: str | None = None


@dataclass(frozen=True)
class StudySettings:
    """How a study tunes and confirms (the `lrlab compare` options --trials ... --max-seeds)."""

    trials: int = DEFAULT_TRIALS
    lr_search: Range | str | None = None  # a Range, "auto", or None: a decade either side of the optimizer's LR
    sampler: str = "qmc"
    prune: str = "sha"
    tuning_seeds: tuple[int, ...] = DEFAULT_TUNING_SEEDS
    storage: str | None = None  # an Optuna storage URL; None: SQLite in the comparison folder
    max_seeds: int | None = None

    def check(self, seeds: list[int]) -> None:
        """Refuse settings that cannot make a study, before anything is written."""
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise UsageError(f"--trials {clip(self.trials, 20)} should be a whole number of at least 1 (trials per schedule)")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler {clip(self.sampler, 20)!r} is not one of {', '.join(SAMPLERS)}")
        if self.prune not in PRUNERS:
            raise UsageError(f"--prune {clip(self.prune, 20)!r} is not one of {', '.join(PRUNERS)}")
        if not self.tuning_seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.tuning_seeds):
            raise UsageError("--tuning-seeds should be one or more whole numbers of 0 or more")
        overlap = sorted(set(self.tuning_seeds) & set(seeds))
        if overlap:
            raise UsageError(f"seed(s) {', '.join(map(str, overlap))} are both tuning and confirmation seeds; a schedule "
                             f"must be confirmed on seeds it was not tuned on: change --tuning-seeds or --seeds")
        if self.max_seeds is not None and (isinstance(self.max_seeds, bool) or not isinstance(self.max_seeds, int)
                                           or self.max_seeds < len(seeds)):
            raise UsageError(f"--max-seeds {clip(self.max_seeds, 20)} should be a whole number no smaller than the "
                             f"{len(seeds)} seed(s) given to --seeds")


def rung_epochs(epochs: int, prune: str) -> list[int]:
    """The epochs at which trials pause to be judged: min_resource * 3**k below the run length,
    with min_resource = epochs // 9 (20 epochs: 2, 6, 18)."""
    if prune == "none":
        return []
    rungs, epoch = [], max(1, epochs // REDUCTION_FACTOR**2)
    while epoch < epochs:
        rungs.append(epoch)
        epoch *= REDUCTION_FACTOR
    return rungs


def _optuna():
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def _sampler(settings: StudySettings):
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QMCSampler is marked experimental
        if settings.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=SAMPLER_SEED, n_startup_trials=TPE_ROUND)
        return optuna.samplers.QMCSampler(scramble=True, seed=SAMPLER_SEED)


def _pruner(settings: StudySettings, epochs: int):
    optuna = _optuna()
    rungs = rung_epochs(epochs, settings.prune)
    if not rungs:
        return optuna.pruners.NopPruner()
    if settings.prune == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=rungs[0], max_resource=epochs, reduction_factor=REDUCTION_FACTOR)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=rungs[0], reduction_factor=REDUCTION_FACTOR)


def open_storage(url: str):
    """The Optuna storage at `url`; one line naming the URL when it cannot be opened."""
    optuna = _optuna()
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # sqlalchemy and its drivers raise many kinds; all mean the same to the user
        why = clip(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__, 160)
        raise UsageError(f"--study-storage {clip(url, 80)}: cannot open it ({why}); give a database URL such as "
                         f"sqlite:///path/study.db") from None


def storage_url(settings: StudySettings, out: Path) -> str:
    return settings.storage or f"sqlite:///{(out / STORAGE_FILE).resolve()}"


@dataclass
class _Trial:
    """A trial being trained: the arm, its Optuna trial, its run config and record."""

    arm: StudyArm
    trial: Any  # optuna.trial.Trial
    config: RunConfig
    record: TrialRecord

    @property
    def run(self) -> RunDirectory:
        return RunDirectory(self.config.out)


class Study:
    """The tuning phase of one comparison: an Optuna study per schedule, in one storage."""

    def __init__(self, base: RunConfig, arms: list[StudyArm], out: Path, settings: StudySettings, lr_range: Range):
        self.base, self.arms, self.out, self.settings, self.lr_range = base, arms, out, settings, lr_range
        self.storage = open_storage(storage_url(settings, out))
        optuna = _optuna()
        self.studies = {}
        for arm in arms:
            study = optuna.create_study(study_name=arm.label, storage=self.storage, sampler=_sampler(settings),
                                        pruner=_pruner(settings, base.epochs), direction="maximize", load_if_exists=True)
            known = study.user_attrs.get("lrlab_space")
            if known is None:
                study.set_user_attr("lrlab_space", self.space(arm))
            elif known != self.space(arm):
                raise UsageError(f"the study storage already holds a study of {arm.label!r} with another search space "
                                 f"({clip(known, 80)}); use another --out or --study-storage")
            self.studies[arm.label] = study
        self.records: dict[str, dict[int, TrialRecord]] = {arm.label: {} for arm in arms}
        self.folders = tuning_folders(arms)

    def space(self, arm: StudyArm) -> str:
        return f"{self.lr_range.describe()}; {arm.schedule.spec}; {self.base.epochs} epochs; prune {self.settings.prune}"

    def trial_path(self, arm: StudyArm, number: int) -> Path:
        return self.out / TUNING_FOLDER / self.folders[arm.label] / f"trial-{number}"

    def progress_tasks(self) -> list[GridTask]:
        return [GridTask(arm.label, number, replace(self.base, out=str(self.trial_path(arm, number))))
                for arm in self.arms for number in range(self.settings.trials)]

    def rounds(self) -> Iterator[range]:
        size = self.settings.trials if self.settings.sampler == "qmc" else TPE_ROUND
        for start in range(0, self.settings.trials, size):
            yield range(start, min(start + size, self.settings.trials))

    def tune(self, executor: Any, progress: GridProgress, data: Any) -> None:
        """Every arm's trials, round by round; each round trained rung by rung and judged in trial order."""
        for numbers in self.rounds():
            pending = [trial for arm in self.arms for number in numbers if (trial := self._open(arm, number))]
            for target in [*rung_epochs(self.base.epochs, self.settings.prune), self.base.epochs]:
                waiting = [t for t in pending if self._epochs_done(t) < target]
                passes = [[GridTask(f"{t.arm.label} trial {t.trial.number}", t.config.seed,
                                    replace(t.config, pause_at_epoch=target if target < self.base.epochs else None))]
                          for t in waiting]
                executor.run(passes, progress, data)
                pending = [t for t in pending if self._judge(t, target)]
                self.write_record()

    def _open(self, arm: StudyArm, number: int) -> _Trial | None:
        """Trial `number` of `arm`, asked from the sampler the first time, or None when it has ended."""
        optuna = _optuna()
        study = self.studies[arm.label]
        known = {t.number: t for t in study.get_trials(deepcopy=False)}
        frozen = known.get(number)
        if frozen is not None and frozen.state.is_finished():
            self.records[arm.label][number] = self._record(arm, frozen.number, frozen.params, _STATES[frozen.state.name])
            return None
        if frozen is None:
            if len(known) != number:
                raise UsageError(f"the study storage holds {len(known)} trials of {arm.label!r} where {number} were "
                                 f"expected; use another --out or --study-storage")
            trial = study.ask()
        else:
            trial = optuna.trial.Trial(study, frozen._trial_id)
        params = {"lr": trial.suggest_float("lr", self.lr_range.low, self.lr_range.high, log=self.lr_range.log)}
        for searched in arm.schedule.ranges:
            suggest = trial.suggest_int if searched.integer else trial.suggest_float
            params[searched.name] = suggest(searched.name, searched.low, searched.high, log=searched.log)
        config = replace(self.base, schedule=self._schedule(arm, params), optimizer=self._optimizer(arm, params["lr"]),
                         seed=self.settings.tuning_seeds[number % len(self.settings.tuning_seeds)],
                         out=str(self.trial_path(arm, number)), quiet=True)
        record = self._record(arm, number, params, "running")
        self.records[arm.label][number] = record
        opened = _Trial(arm, trial, config, record)
        try:
            config.validate()
        except UsageError as error:  # a sampled combination the schedule refuses: the trial is spent, and failed
            opened.run.write_status("failed", reason=str(error))
            self._tell(opened, "failed")
            return None
        return opened

    def _schedule(self, arm: StudyArm, params: dict[str, Any]) -> str:
        from lrlab.grid import at_lr

        plain = arm.schedule.at(params)
        return at_lr(Variant(arm.label, plain), params["lr"], self.base.optimizer).schedule

    def _optimizer(self, arm: StudyArm, lr: float) -> str:
        from lrlab.optimizers import with_lr

        return with_lr(arm.optimizer or self.base.optimizer, lr)

    @staticmethod
    def _epochs_done(trial: _Trial) -> int:
        return len(trial.run.read_metrics()) if trial.run.metrics_path.exists() else 0

    def _judge(self, trial: _Trial, target: int) -> bool:
        """Report what the trial trained up to `target`; end it (finished, diverged, pruned) or keep it going."""
        rows = trial.run.read_metrics() if trial.run.metrics_path.exists() else []
        reported = trial.trial.storage.get_trial(trial.trial._trial_id).intermediate_values
        # Only up to the rung: a trial that a stopped study left beyond it is judged where the
        # uninterrupted study judged it.
        for row in rows:
            epoch = int(row["epoch"])
            if epoch <= target and epoch not in reported and not math.isnan(row.get("val_acc", math.nan)):
                trial.trial.report(row["val_acc"], epoch)
        trial.record.epochs = len(rows)
        trial.record.val_acc = [row.get("val_acc", math.nan) for row in rows]
        state = trial.run.read_status().get("state")
        if state == "pruned":  # judged before a stop, not yet told
            self._tell(trial, "pruned")
        elif state in ("diverged", "failed"):
            self._tell(trial, "failed")
        elif state == "finished" or target >= self.base.epochs:
            self._tell(trial, "complete" if state == "finished" else "failed")
        elif trial.trial.should_prune():  # paused here, or stopped (interrupted) beyond the rung: judged alike
            trial.run.write_status("pruned", epoch=len(rows), reason=f"pruned at epoch {len(rows)}: validation accuracy "
                                                                     f"below the best third of the trials there")
            self._tell(trial, "pruned")
        else:
            return True
        return False

    def _tell(self, trial: _Trial, state: str) -> None:
        optuna = _optuna()
        study = self.studies[trial.arm.label]
        trial.record.state = state
        if state == "complete":
            study.tell(trial.trial, trial.record.final_val_acc)
        else:
            study.tell(trial.trial, state=optuna.trial.TrialState.PRUNED if state == "pruned" else optuna.trial.TrialState.FAIL)

    def _record(self, arm: StudyArm, number: int, params: dict[str, Any], state: str) -> TrialRecord:
        path = self.trial_path(arm, number)
        run = RunDirectory(path)
        rows = run.read_metrics() if run.metrics_path.exists() else []
        return TrialRecord(number=number, seed=self.settings.tuning_seeds[number % len(self.settings.tuning_seeds)],
                           lr=float(params.get("lr", math.nan)), params={k: v for k, v in params.items() if k != "lr"},
                           state=state, epochs=len(rows), val_acc=[row.get("val_acc", math.nan) for row in rows],
                           path=str(path.relative_to(self.out)))

    def picks(self) -> dict[str, TrialRecord]:
        """Each arm's best complete trial (highest final validation accuracy; the lower number on a tie)."""
        chosen = {}
        for arm in self.arms:
            complete = [r for r in sorted(self.records[arm.label].values(), key=lambda r: r.number) if r.state == "complete"]
            if not complete:
                raise UsageError(f"no tuning trial of {arm.label!r} finished (all pruned, diverged or failed: see "
                                 f"{self.trial_path(arm, 0).parent}); narrow its search range or lower the LR range")
            chosen[arm.label] = max(complete, key=lambda r: (r.final_val_acc, -r.number))
        return chosen

    def confirmed_variants(self) -> list[Variant]:
        variants = []
        picks = self.picks()
        for arm in self.arms:
            pick = picks[arm.label]
            params = {"lr": pick.lr, **pick.params}
            variants.append(Variant(arm.label, self._schedule(arm, params), self._optimizer(arm, pick.lr)))
        return variants

    def write_record(self, extra: dict[str, Any] | None = None) -> None:
        settings = self.settings
        arms = {}
        for arm in self.arms:
            trials = sorted(self.records[arm.label].values(), key=lambda r: r.number)
            arms[arm.label] = {"spec": arm.schedule.spec, "trials": trials,
                               "epochs_trained": sum(t.epochs for t in trials),
                               "pruned": sum(t.state == "pruned" for t in trials),
                               "failed": sum(t.state == "failed" for t in trials)}
        previous = read_record(self.out) or {}
        write_record(self.out, {**{k: v for k, v in previous.items() if k != "arms"},
                                "settings": settings_record(settings, self.arms, self.base.epochs), "lr_range": self.lr_range.describe(),
                                "rungs": rung_epochs(self.base.epochs, settings.prune), "arms": arms, **(extra or {})})



def tuning_folders(arms: list[StudyArm]) -> dict[str, str]:
    """Each arm's shell-safe folder under tuning/, named from its label as the comparison names its runs' folders."""
    from lrlab.comparison import safe_folder_name

    taken: set[str] = set()
    return {arm.label: safe_folder_name(arm.label, taken) for arm in arms}


def settings_record(settings: StudySettings, arms: list[StudyArm], epochs: int) -> dict[str, Any]:
    """What makes a study the same study when its command is run again."""
    lr = settings.lr_search.describe() if isinstance(settings.lr_search, Range) else settings.lr_search
    return {"trials": settings.trials, "search_lr": lr, "sampler": settings.sampler, "prune": settings.prune,
            "tuning_seeds": list(settings.tuning_seeds), "storage": settings.storage,
            "schedules": {arm.label: arm.schedule.spec for arm in arms}, "epochs": epochs}


_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "running"}


def check_folder(out: Path, labels: list[str], settings_record: dict[str, Any]) -> None:
    """A study goes into an empty folder, or one holding the same study; refused otherwise, before anything is written."""
    folder = RunDirectory(out)
    folder.check_writable()
    previous = read_record(out) if out.is_dir() else None
    if previous is not None and previous.get("settings") != settings_record:
        changed = sorted(k for k in set(settings_record) | set(previous.get("settings", {}))
                         if settings_record.get(k) != previous.get("settings", {}).get(k))
        raise UsageError(f"{out} holds a study with different {', '.join(changed)}; run it with its own settings or "
                         f"use another --out")
    ours = {TUNING_FOLDER, STUDY_RECORD, STORAGE_FILE, MANIFEST, "lr_find", "summary.csv", "summary.md", "report.html",
            "plots", *labels}
    foreign = [name for name in folder.foreign_files() if name not in ours and not name.startswith(STORAGE_FILE)]
    if foreign:
        raise UsageError(f"{out} holds files lrlab did not make ({first_names(foreign)}); choose an empty or new --out "
                         f"for the study")


def resolve_lr_range(settings: StudySettings, base: RunConfig, out: Path, data: Any, builder: Any) -> Range:
    """The LR range the study searches: as given, around the range test's pick (lr=auto, recorded so a
    resumed study reuses it), or a decade either side of the optimizer's LR."""
    from lrlab.optimizers import parse_optimizer

    if isinstance(settings.lr_search, Range):
        return settings.lr_search
    if settings.lr_search == "auto":
        previous = read_record(out) if out.is_dir() else None
        if previous and isinstance(previous.get("lr_auto_pick"), (int, float)):
            return lr_range_around(previous["lr_auto_pick"])
        from lrlab.engine import find_lr

        record = find_lr(replace(base, out=str(out / "lr_find")), data=data, builder=builder)
        return lr_range_around(record["pick"])
    lr = parse_optimizer(base.optimizer).arguments.get("lr")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise UsageError(f"the optimizer {base.optimizer!r} sets no LR to search around; give --search lr=LOW:HIGH:log")
    return Range("lr", lr / 10, lr * 10, log=True)


def run_study(base: RunConfig, arms: list[StudyArm], seeds: list[int], out: str | Path, settings: StudySettings, *,
              baseline: str | None = None, target_acc: float | None = None, min_effect: float, executor: Any = None,
              runs_per_pass: int | str = "auto", data: Any = None, show_progress: bool = True) -> list[GridOutcome]:
    """Tune every arm, then confirm each at its best setting with `seeds` (see the module's docstring);
    returns how each confirmation run ended."""
    from lrlab.assembly import load_run_data, run_model_factory
    from lrlab.grid import run_comparison

    out = Path(out)
    settings.check(seeds)
    if base.val_fraction <= 0:
        raise UsageError("a study tunes on validation data; keep a validation split (--val-fraction 0.1, the default)")
    labels = [arm.label for arm in arms]
    if len(set(labels)) != len(labels):
        raise UsageError("two schedules have the same label; give each its own label")
    if TUNING_FOLDER in labels:
        raise UsageError(f"a schedule is labelled {TUNING_FOLDER!r}, the study's own folder; give it another label")
    if baseline is not None and baseline not in labels:
        raise UsageError(f"--baseline {baseline!r} is not one of the schedules: {', '.join(labels)}")
    executor = executor or InProcess()
    folder = RunDirectory(out)
    with folder.locked():
        check_folder(out, [*labels, *tuning_folders(arms).values()], settings_record(settings, arms, base.epochs))
        data = data if data is not None else load_run_data(base)
        builder = getattr(executor, "builder", None)
        run_model_factory(base, data, builder)  # a model that cannot work stops here, before any trial
        lr_range = resolve_lr_range(settings, base, out, data, builder)
        study = Study(base, arms, out, settings, lr_range)
        extra = {"lr_auto_pick": math.sqrt(lr_range.low * lr_range.high)} if settings.lr_search == "auto" else {}
        study.write_record(extra)
        progress = GridProgress(study.progress_tasks(), base.epochs, show_progress)
        progress.bar.set_description("tuning")
        rungs = rung_epochs(base.epochs, settings.prune)
        progress.say(f"lrlab: tuning {len(arms)} schedule(s), {settings.trials} trial(s) each on tuning seed(s) "
                     f"{', '.join(map(str, settings.tuning_seeds))}, LR in {lr_range.describe()}, "
                     + (f"pruned at epochs {', '.join(map(str, rungs))}" if rungs else "no pruning"))
        try:
            with executor.session(out):
                study.tune(executor, progress, data)
        finally:
            progress.close()
        variants = study.confirmed_variants()
        picks = study.picks()
        study.write_record({**extra, "confirmed": {
            variant.label: {"trial": picks[variant.label].number, "schedule": variant.schedule, "optimizer": variant.optimizer}
            for variant in variants}})
        for arm, variant in zip(arms, variants):
            pick = picks[arm.label]
            print(f"lrlab: {arm.label}: confirmed at {variant.optimizer}, {variant.schedule} (trial {pick.number}, "
                  f"validation accuracy {pick.final_val_acc:.2%})", file=sys.stderr)
        outcomes = run_comparison(base, variants, seeds, out, baseline, target_acc, show_progress=show_progress,
                                  executor=executor, runs_per_pass=runs_per_pass, min_effect=min_effect, data=data)
        if settings.max_seeds and settings.max_seeds > len(seeds):
            outcomes += add_seeds(base, variants, seeds, out, settings, baseline or labels[0], target_acc, min_effect,
                                  executor, runs_per_pass, data, show_progress)
    return outcomes


def looks(initial_seeds: int, max_seeds: int | None) -> list[int]:
    """The seed counts after which the comparisons are judged: the initial seeds, then rounds of as many
    again, the last capped at `max_seeds` (3 seeds up to 10: 3, 6, 9, 10)."""
    counts = [initial_seeds]
    while max_seeds is not None and counts[-1] < max_seeds:
        counts.append(min(max_seeds, counts[-1] + initial_seeds))
    return counts


def sequential_level(initial_seeds: int, max_seeds: int | None, alpha: float = ALPHA) -> float:
    """The level each look tests at: alpha split evenly over the looks (Bonferroni over looks). The
    chance of any false "real" over all looks is at most the sum of the per-look chances, alpha,
    however the looks depend on each other; with Holm over the arms inside each look, the family-wise
    rate over arms and looks stays at most alpha."""
    return alpha / len(looks(initial_seeds, max_seeds))


def sequential_decisions(p_values: dict[str, float], equivalence_p_values: dict[str, float], level: float) -> dict[str, str]:
    """At one look: "real" where Holm's step-down at `level` rejects no difference, "equivalent" where the
    two one-sided tests reject a difference of at least the minimum effect at `level`, else "open"."""
    from lrlab.stats import holm

    labels = list(p_values)
    decisions = {label: "open" for label in labels}
    for label, adjusted in zip(labels, holm([p_values[label] for label in labels])):
        if adjusted < level:
            decisions[label] = "real"
    for label, p in equivalence_p_values.items():
        if decisions.get(label) == "open" and not math.isnan(p) and p < level:
            decisions[label] = "equivalent"
    return decisions


def add_seeds(base: RunConfig, variants: list[Variant], seeds: list[int], out: Path, settings: StudySettings,
              baseline: str, target_acc: float | None, min_effect: float, executor: Any, runs_per_pass: int | str,
              data: Any, show_progress: bool) -> list[GridOutcome]:
    """Rounds of more confirmation seeds for the schedules whose comparison with the baseline is still open."""
    from lrlab.aggregate import aggregate
    from lrlab.grid import run_comparison
    from lrlab.stats import equivalence_p

    counts = looks(len(seeds), settings.max_seeds)
    level = sequential_level(len(seeds), settings.max_seeds)
    used = set(seeds) | set(settings.tuning_seeds)
    spare = (seed for seed in range(2**31) if seed not in used)
    all_seeds = list(seeds)
    outcomes: list[GridOutcome] = []
    open_labels = {v.label for v in variants if v.label != baseline}
    history = []
    for count in counts[1:]:
        comparison = aggregate(out)
        p_values, equivalence = {}, {}
        for result in comparison.results:
            if result.label in open_labels and result.difference is not None:
                p_values[result.label] = result.difference.p_value
                equivalence[result.label] = equivalence_p(result.difference, min_effect)
        decisions = sequential_decisions(p_values, equivalence, level)
        history.append({"seeds": len(all_seeds), "decisions": decisions})
        open_labels = {label for label in open_labels if decisions.get(label, "open") == "open"}
        if not open_labels:
            break
        new = [next(spare) for _ in range(count - len(all_seeds))]
        all_seeds += new
        chosen = [v for v in variants if v.label in open_labels or v.label == baseline]
        print(f"lrlab: {', '.join(sorted(open_labels))} still undecided at level {level:.4g}; adding seed(s) "
              f"{', '.join(map(str, new))}", file=sys.stderr)
        outcomes += run_comparison(base, chosen, new, out, baseline, target_acc, show_progress=show_progress,
                                   executor=executor, runs_per_pass=runs_per_pass, min_effect=min_effect, data=data)
    record = read_record(out) or {}
    write_record(out, {**record, "sequential": {"looks": counts, "level": level, "history": history}})
    return outcomes



def settings_from_options(trials: Any = None, search: Any = None, tuning_seeds: Any = None, sampler: Any = None,
                          prune: Any = None, study_storage: Any = None, max_seeds: Any = None) -> StudySettings | None:
    """The study the comparison options ask for: None without --trials and --search (an ordinary
    comparison), which then may not take the other study options either."""
    from lrlab.tuning import parse_lr_search

    if trials is None and search is None:
        given = [flag for flag, value in (("--tuning-seeds", tuning_seeds), ("--sampler", sampler), ("--prune", prune),
                                          ("--study-storage", study_storage), ("--max-seeds", max_seeds)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} belong(s) to a study; add --trials N (and --search lr=LOW:HIGH:log) "
                             f"to tune each schedule first")
        return None
    if isinstance(search, str):
        search = [search]
    if search is not None and (not isinstance(search, (list, tuple)) or not all(isinstance(s, str) for s in search)):
        raise UsageError(f"search should be text such as 'lr=0.005:0.5:log', got {clip(repr(search), 40)}")
    if tuning_seeds is not None:
        if isinstance(tuning_seeds, (str, bytes, int)) or not isinstance(tuning_seeds, (list, tuple)):
            raise UsageError(f"tuning seeds should be a list of whole numbers, e.g. [1000], got {clip(repr(tuning_seeds), 40)}")
        tuning_seeds = tuple(int(s) if hasattr(s, "__index__") and not isinstance(s, bool) else s for s in tuning_seeds)
    if study_storage is not None and not isinstance(study_storage, str):
        raise UsageError(f"--study-storage should be a database URL such as sqlite:///study.db, got {clip(repr(study_storage), 40)}")
    return StudySettings(trials=DEFAULT_TRIALS if trials is None else trials, lr_search=parse_lr_search(search),
                         sampler=sampler or "qmc", prune=prune or "sha",
                         tuning_seeds=tuning_seeds or DEFAULT_TUNING_SEEDS, storage=study_storage, max_seeds=max_seeds)


def arm_label(spec: Any) -> str:
    """A study arm's default label: the spec's usual label, or `<Class> tuned` when it searches its arguments."""
    from lrlab.grid import label_for
    from lrlab.schedules import parse_schedule
    from lrlab.tuning import parse_ranged_schedule

    ranged = parse_ranged_schedule(spec, reserved=PEAK_LR_ARGUMENTS)
    if not ranged.ranges:
        return label_for(spec)
    return f"{parse_schedule(ranged.at_ends()[0]).class_name} tuned"


def labelled(schedules: Any) -> Any:
    """The schedules of a study with a label on each spec (ranged specs cannot take the usual one)."""
    if isinstance(schedules, str) or not isinstance(schedules, (list, tuple)):
        return schedules
    return [{"label": arm_label(item), "schedule": item} if isinstance(item, str)
            else {**item, "label": arm_label(item["schedule"])} if isinstance(item, dict) and "label" not in item
            and isinstance(item.get("schedule"), str) else item for item in schedules]


def arms_from_variants(variants: list[Variant]) -> list[StudyArm]:
    from lrlab.tuning import parse_ranged_schedule

    return [StudyArm(v.label, parse_ranged_schedule(v.schedule, reserved=PEAK_LR_ARGUMENTS), v.optimizer) for v in variants]
