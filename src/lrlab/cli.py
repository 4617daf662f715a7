"""Command line: parses the arguments, calls the library API for each command and prints what it returns."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from lrlab import __version__
from lrlab.comparison import PRESETS
from lrlab.config import RunConfig, config_from_dict, load_config, read_yaml_mapping
from lrlab.errors import MESSAGE_LIMIT, UsageError, clip

HELP = {
    "dataset": "data set: fashion-mnist, mnist, cifar10, cifar100, digits, synthetic, folder:PATH, or your own: "
               "FILE.py:NAME or package.module:NAME, where NAME() returns (train, test) torch Datasets of (image, label)",
    "model": "model: mlp, cnn, convnet, resnet, torchvision:<name> (e.g. torchvision:resnet18), or your own: "
             "FILE.py:NAME or package.module:NAME, an nn.Module class or a function returning one",
    "model_args": "keyword arguments for the model, e.g. width=16,depth=3 (checked against its signature)",
    "width": "base width of mlp/cnn/convnet/resnet (default: the model's own)",
    "optimizer": "optimizer spec, e.g. sgd:lr=0.05,momentum=0.9 or adamw-schedulefree:lr=0.01",
    "schedule": "schedule spec, e.g. step:step_size=5,gamma=0.5 or warmup(linear,epochs=2)+cosine:T_max=18",
    "epochs": "number of epochs",
    "batch_size": "training batch size",
    "eval_batch_size": "evaluation batch size",
    "seed": "seed for the initial weights and the data order",
    "augment": "batch augmentation: none, flip, crop or crop+flip",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "limit_train": "train on a fixed random subset of N images",
    "limit_test": "evaluate on a fixed random subset of N images",
    "image_size": "resize images to N x N pixels",
    "val_fraction": "fraction of the training images held out for validation, stratified by class; it picks the best "
                    "epoch, feeds plateau and picks each schedule's LR; 0: none (the article's protocol, choices made on test data)",
    "split_seed": "seed of the fixed data splits (validation, --limit-* subsets), the same for every run of a comparison",
    "test_fraction": "for folder:PATH without train/test folders, the fraction held out for testing",
    "strict": "stop at the first unreadable image or non-image file instead of skipping it",
    "memory_budget": "folder data sets and your own Datasets larger than this in memory are read batch by batch "
                     "instead: a size (512M, 8G) or a fraction of RAM (default 0.25)",
    "data_workers": "worker processes reading a streamed data set (default: min(4, cores))",
    "precision": "auto (bf16 autocast on CPU and CUDA, fp32 on MPS), fp32 or bf16",
    "channels_last": "channels-last memory format (default: on for CPU and CUDA)",
    "deterministic": "bit-identical results on CUDA too (slower there; the CPU is deterministic already)",
    "device": "auto, cpu, cuda or mps",
    "data_dir": "folder to look for data files in first (also $LRLAB_DATA)",
    "out": "run directory",
    "tensorboard": "also write TensorBoard events into the run directory",
    "quiet": "no progress bar or per-epoch lines",
    "pause_at_epoch": "stop after this epoch, to continue later with --resume (the schedule still plans for --epochs)",
}

TRAIN_EXAMPLES = """examples:
  lrlab train --dataset fashion-mnist --model cnn --optimizer sgd:lr=0.05,momentum=0.9,weight_decay=5e-4 \\
      --schedule step:step_size=5,gamma=0.5 --epochs 20 --seed 0 --out runs/step
  lrlab train --out runs/step --resume          # continue a stopped run
  lrlab train --config configs/step.yaml        # the same run from a YAML file
  lrlab train --model nets.py:Net --model-args width=16 --dataset nets.py:load_data --out runs/mine
"""


COMPARE_EXAMPLES = """examples:
  lrlab compare --preset article --dataset fashion-mnist --seeds 0 1 2 --out runs/article
  lrlab compare --schedules constant "step:step_size=5,gamma=0.5" "onecycle:max_lr=0.1" \\
      --epochs 20 --seeds 0 1 2 --dataset digits --out runs/mine
  lrlab compare --model nets.py:Net --model-args width=16 --dataset nets.py:load_data \\
      --schedules constant "cosine:T_max=20" --epochs 20 --out runs/mine   # your own model and data
  lrlab compare --config comparison.yaml                          # schedules:, seeds:, baseline:, run options
  lrlab compare ... --workers 2                                   # two runs at once on this machine
  lrlab compare --schedules constant "step:step_size=2:8,gamma=0.1:0.7" --search lr=0.005:0.5:log \
      --trials 8 --seeds 0 1 2 --out runs/study                   # tune each schedule, then confirm on fresh seeds
  lrlab compare --preset article --seeds 0 1 2 3 4 --backend ray --ray-address auto --storage /mnt/shared --out runs/big
"""
PREVIEW_EXAMPLES = """example:
  lrlab preview "cosine:T_max=50" "exponential:gamma=0.95" --epochs 20 --lr 0.05 \\
      --steps-per-epoch 235 --plot lr.png --csv lr.csv
"""
FIND_LR_EXAMPLES = """examples:
  lrlab find-lr --dataset fashion-mnist --model cnn --optimizer sgd:momentum=0.9 --out runs/lr
  lrlab find-lr --dataset digits --repeats 3 --out runs/lr-digits      # median and spread over 3 seeds
  lrlab train ... --optimizer sgd:lr=auto,momentum=0.9                 # range test first, then train at its pick
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_config_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), help_for: dict[str, str] | None = None) -> None:
    """One option per RunConfig field; `help_for` replaces a field's help where the command uses it differently."""
    hints = typing.get_type_hints(RunConfig)
    for field in fields(RunConfig):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = (help_for or {}).get(field.name) or _with_default(HELP[field.name], field.default)
        options = [o for o in typing.get_args(hints[field.name]) if o is not type(None)] or [hints[field.name]]
        if options[0] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=options[0], default=argparse.SUPPRESS, help=help_text, metavar=field.name.upper())


def _with_default(help_text: str, default: object) -> str:
    """The help with its default appended, unless it states one already or there is none to state."""
    if "default" in help_text or default is None or default is MISSING:
        return help_text
    return f"{help_text} (default: {default})"


def build_parser() -> Parser:
    parser = Parser(prog="lrlab", description="Train image classifiers and find out which learning-rate schedule to use.")
    parser.add_argument("--version", action="version", version=f"lrlab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = commands.add_parser("train", help="train one model", epilog=TRAIN_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML file with any of the options below; options given here override it")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    _add_config_options(train)

    datasets = commands.add_parser("datasets", help="list the data sets and where they are",
                                   epilog="example:\n  lrlab datasets --data-dir ~/data",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    datasets.add_argument("--data-dir", help="also look here")
    _add_quiet(datasets)

    compare = commands.add_parser("compare", help="train several schedules x seeds and report which is better",
                                  epilog=COMPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("--preset", choices=sorted(PRESETS), help=f"a ready set of schedules ({', '.join(PRESETS)})")
    compare.add_argument("--schedules", nargs="+", metavar="SPEC", help="schedule specs to compare (instead of --preset)")
    compare.add_argument("--seeds", nargs="+", type=int, help="seeds; each is one paired run per schedule (default: 0 1 2)")
    compare.add_argument("--baseline", help="label of the schedule the others are compared with (default: the first)")
    compare.add_argument("--target-acc", type=float, help="accuracy in percent for 'epochs to target', e.g. 90 (default: the baseline's final mean)")
    compare.add_argument("--lr", help="the optimizer's LR for every run, or 'auto' to run the LR range test once first")
    compare.add_argument("--min-effect", type=float, metavar="POINTS",
                         help="the smallest accuracy difference you care about, in points; the report says how many seeds "
                              "would resolve it (default: 0.5)")
    compare.add_argument("--lrs", nargs="+", type=float, metavar="LR",
                         help="run every schedule at each of these LRs and judge each at the one with the best mean validation "
                              "accuracy; an LR sets the optimizer's lr, and max_lr of OneCycleLR and CyclicLR")
    compare.add_argument("--overwrite", action="store_true",
                         help="replace the comparison in --out (its runs, summary and report) instead of continuing it")
    compare.add_argument("--config", help="YAML file with schedules:, seeds:, baseline: and any training option; "
                         "options given here override it")
    study = compare.add_argument_group(
        "a study: tune each schedule with an equal, pruned budget of trials, then confirm its best setting on --seeds")
    study.add_argument("--trials", type=int, help="tuning trials per schedule; turns the comparison into a study (default 8 "
                       "when --search is given)")
    study.add_argument("--search", nargs="+", metavar="lr=LOW:HIGH[:log]",
                       help="the LR range to search, e.g. lr=0.005:0.5:log, or lr=auto (a decade around the range test's "
                            "pick); default: a decade either side of the optimizer's LR. Ranges of a schedule's own "
                            "arguments go in its spec: step:step_size=2:8,gamma=0.1:0.7")
    study.add_argument("--tuning-seeds", nargs="+", type=int, metavar="SEED",
                       help="seeds the trials train with, never used to confirm (default: 1000)")
    study.add_argument("--sampler", choices=("qmc", "tpe"), help="Optuna's quasi-random Sobol points (qmc, the default) or TPE")
    study.add_argument("--prune", choices=("sha", "hyperband", "none"),
                       help="stop losing trials at epoch rungs: successive halving (sha, the default), hyperband, or none")
    study.add_argument("--study-storage", metavar="URL", help="Optuna storage URL (default: sqlite in --out: study.db)")
    study.add_argument("--max-seeds", type=int, metavar="N",
                       help="add confirmation seeds in rounds, up to N, only to comparisons still undecided")
    where = compare.add_argument_group("where the runs train")
    where.add_argument("--backend", choices=("local", "ray"), default="local", help="local (this machine, the default) or ray")
    where.add_argument("--workers", type=int, default=1, help="local: runs at once, each in its own process (default: 1, in this process)")
    where.add_argument("--cpus-per-run", type=float, help="torch threads for each run (local default: cores / workers; "
                       "ray: the CPUs each task asks for, default 1)")
    where.add_argument("--gpus-per-run", type=float, default=0, help="ray: GPUs each task asks for (default: 0)")
    where.add_argument("--runs-per-pass", default="auto", metavar="auto|N",
                       help="runs of one seed trained together in one pass over the data (default: auto, as many as a "
                            "few timed steps show faster per run than one alone; on a CPU that is usually one)")
    where.add_argument("--max-retries", type=int, default=2, help="times a run is restarted from its last checkpoint when its worker dies (default: 2)")
    where.add_argument("--ray-address", help="ray: the cluster to join (e.g. auto, or ray://head:10001); default: start Ray here")
    where.add_argument("--storage", help="ray: a folder every node mounts; a relative --out is placed under it")
    _add_config_options(compare, skip=("schedule", "seed"),
                        help_for={"out": "folder for the comparison's runs, summary and report (required)",
                                  "quiet": "no progress bar"})

    find_lr = commands.add_parser("find-lr", help="LR range test: which starting LR to use",
                                  epilog=FIND_LR_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    find_lr.add_argument("--start", type=float, default=1e-7, help="first LR of the sweep (default: 1e-7)")
    find_lr.add_argument("--end", type=float, default=10.0, help="last LR of the sweep (default: 10)")
    find_lr.add_argument("--steps", type=int, default=100, help="batches in the sweep (default: 100)")
    find_lr.add_argument("--mode", default="exp", help="exp (geometric, default) or linear LR growth")
    find_lr.add_argument("--diverge", type=float, default=4.0, help="stop when the median of the last 5 losses exceeds this times its lowest (default: 4)")
    find_lr.add_argument("--repeats", type=int, default=1, help="run the test with N seeds and report the median and spread")
    find_lr.add_argument("--config", help="YAML file with the training options; options given here override it")
    _add_config_options(find_lr, skip=("schedule", "epochs", "tensorboard"),
                        help_for={"out": "folder for lr_find.csv, .png and .json (required)",
                                  "quiet": "print only the picked LR (lr=...), not the suggestions and notes"})

    report = commands.add_parser("report", help="rebuild the report of a comparison from its runs",
                                 epilog="example:\n  lrlab report runs/article", formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("out", help="the comparison's folder")
    _add_quiet(report)

    preview = commands.add_parser("preview", help="the LR of schedules at every step, without training",
                                  epilog=PREVIEW_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    preview.add_argument("specs", nargs="+", metavar="SPEC", help="schedule specs")
    preview.add_argument("--epochs", type=int, default=20, help="run length in epochs (default: 20)")
    _add_steps_per_epoch(preview)
    preview.add_argument("--lr", type=float, default=0.1, help="the optimizer's LR (default: 0.1)")
    preview.add_argument("--metric", help="assumed monitored metric per epoch for plateau, comma-separated (default: flat)")
    preview.add_argument("--plot", help="write a plot here (.png or .svg)")
    preview.add_argument("--csv", help="write spec,step,epoch,lr rows here")
    _add_quiet(preview)

    doctor = commands.add_parser("doctor", help="warn where a schedule will not do what you probably expect",
                                 epilog='example:\n  lrlab doctor "cosine:T_max=50" --epochs 20', formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("specs", nargs="+", metavar="SPEC", help="schedule specs")
    doctor.add_argument("--epochs", type=int, default=20, help="run length in epochs (default: 20)")
    _add_steps_per_epoch(doctor)
    doctor.add_argument("--test-images", type=int, metavar="N", help="also say whether a test set of N images can resolve --min-effect")
    doctor.add_argument("--min-effect", type=float, default=0.5, metavar="POINTS",
                        help="the smallest accuracy difference you care about, in points (default: 0.5)")
    _add_quiet(doctor)

    schedules = commands.add_parser("schedules", help="list every schedule name and how it is stepped",
                                    epilog="example:\n  lrlab schedules", formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_quiet(schedules)
    return parser


def _add_steps_per_epoch(parser: argparse.ArgumentParser) -> None:
    """--steps-per-epoch, or the options of a run it is worked out from, as training would."""
    parser.add_argument("--steps-per-epoch", type=int,
                        help="optimizer steps per epoch (default: those of a run on --dataset with --batch-size)")
    parser.add_argument("--dataset", default=RunConfig.dataset, help=f"the run's data set (default: {RunConfig.dataset})")
    parser.add_argument("--batch-size", type=int, default=RunConfig.batch_size, help=f"the run's batch size (default: {RunConfig.batch_size})")
    parser.add_argument("--val-fraction", type=float, default=RunConfig.val_fraction,
                        help=f"the run's validation fraction (default: {RunConfig.val_fraction})")
    parser.add_argument("--limit-train", type=int, help="the run's --limit-train")
    parser.add_argument("--data-dir", help="folder to look for data files in first (for folder and your own data sets)")


def _steps_per_epoch(arguments: argparse.Namespace) -> tuple[int, str]:
    """--steps-per-epoch as given, else the steps of an epoch on the run's data set, and the line that
    says where they came from (printed once the command has succeeded, so an error stays one line)."""
    if arguments.steps_per_epoch is not None:
        return arguments.steps_per_epoch, ""
    from lrlab.data import steps_per_epoch

    config = config_from_dict({"dataset": arguments.dataset, "batch_size": arguments.batch_size,
                               "val_fraction": arguments.val_fraction, "limit_train": arguments.limit_train}, "command line")
    steps, images = steps_per_epoch(config.dataset, config.batch_size, config.val_fraction, config.limit_train, arguments.data_dir)
    said = "" if arguments.quiet else (f"steps per epoch: {steps} ({config.dataset}: {images:,} training images in batches "
                                       f"of {config.batch_size}; --steps-per-epoch sets it)")
    return steps, said


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """--quiet on a command that prints only its result, so a script can pass it to every command."""
    parser.add_argument("--quiet", action="store_true", help="accepted by every command; this one prints only its result")


def config_from_arguments(arguments: argparse.Namespace, defaults: dict | None = None) -> RunConfig:
    """Defaults, then the --config file (or the run being resumed), then options on the command line."""
    given = {f.name: getattr(arguments, f.name) for f in fields(RunConfig) if hasattr(arguments, f.name)}
    base: dict = dict(defaults or {})
    if arguments.config:
        base.update(load_config(arguments.config).to_dict())
    elif getattr(arguments, "resume", False):
        saved = Path(given.get("out", RunConfig.out)) / "config.yaml"
        if saved.exists():
            base = load_config(saved).to_dict()
    return config_from_dict({**base, **given}, "command line")


def _train(arguments: argparse.Namespace) -> int:
    from lrlab.distributed import from_environment
    from lrlab.engine import train

    config = config_from_arguments(arguments)
    result = train(config, resume=arguments.resume, overwrite=arguments.overwrite)
    if not from_environment().main:
        return 0 if result.state == "finished" else 1
    chosen = "best validation epoch" if result.selected_on == "validation" else "best test epoch (chosen on test data)"
    summary = (f"{result.state}: {result.epochs_completed} epochs, test accuracy {result.best_test_acc:.2%} at the {chosen} "
               f"{result.best_epoch}, final {result.final_test_acc:.2%}, {result.seconds:.1f} s -> {result.path}")
    print(summary)
    return 0 if result.state == "finished" else 1


def _compare(arguments: argparse.Namespace) -> int:
    from lrlab.api import COMPARISON_KEYS, compare

    plan = _comparison_file(arguments.config) if arguments.config else {}
    given = {f.name: getattr(arguments, f.name) for f in fields(RunConfig) if hasattr(arguments, f.name)}
    if arguments.preset or arguments.schedules:  # the command line's choice of arms replaces the file's
        plan.pop("preset", None)
        plan.pop("schedules", None)
    for key in COMPARISON_KEYS:
        if getattr(arguments, key) is not None:
            plan[key] = getattr(arguments, key)
    quiet = getattr(arguments, "quiet", False)
    if plan.get("preset") in PRESETS and not plan.get("schedules") and not quiet:
        print(f"preset {plan['preset']}: {PRESETS[plan['preset']].description}", file=sys.stderr)
    result = compare(**plan, **given, backend=arguments.backend, workers=arguments.workers,
                     cpus_per_run=arguments.cpus_per_run, gpus_per_run=arguments.gpus_per_run,
                     max_retries=arguments.max_retries, ray_address=arguments.ray_address, storage=arguments.storage,
                     runs_per_pass=arguments.runs_per_pass, overwrite=arguments.overwrite)
    print(result.verdict)
    for outcome in result.outcomes:
        if outcome.retries:
            print(f"retried: {outcome.label} seed {outcome.seed}, {outcome.retries} time(s), then {outcome.state}")
    print(f"report: {result.report_path}  table: {result.out / 'summary.md'}")
    return 0 if all(o.state == "finished" for o in result.outcomes) else 1


def _comparison_file(path: str) -> dict:
    """A comparison's YAML: schedules:, seeds:, baseline:, ... and any run option, each checked here."""
    from lrlab.api import COMPARISON_KEYS
    from lrlab.specs import suggestion

    values = read_yaml_mapping(path)
    known = [*COMPARISON_KEYS, *(f.name for f in fields(RunConfig))]
    for key in values:
        if key not in known:
            raise UsageError(f"{path}: unknown key {key!r}{suggestion(key, known)}")
    for key in ("schedule", "seed"):
        if key in values:
            raise UsageError(f"{path}: a comparison takes {key}s: (a list), not {key}:")
    run_options = {k: v for k, v in values.items() if k not in COMPARISON_KEYS}
    config_from_dict(run_options, path)  # a bad run option is reported against the file
    return values


def _find_lr(arguments: argparse.Namespace) -> int:
    from lrlab.engine import find_lr

    if not hasattr(arguments, "out"):
        raise UsageError("find-lr needs --out DIR for lr_find.csv, .png and .json")
    config = config_from_arguments(arguments, {"quiet": True, "epochs": 1})
    record = find_lr(config, arguments.start, arguments.end, arguments.steps, arguments.mode, arguments.diverge, arguments.repeats)
    if not getattr(arguments, "quiet", False):
        _say_lr_suggestions(record, config)
    print(f"lr={record['pick']:.6g}")
    return 0


def _say_lr_suggestions(record: dict, config: RunConfig) -> None:
    for rule, suggestion in record["suggestions"].items():
        spread = record["spread"][rule]
        extra = f" (seeds agree within x{spread['spread_factor']:.2f})" if record["repeats"] > 1 else ""
        print(f"{rule:>10}: {suggestion['lr']:.4g}{extra}  {suggestion['rule']}", file=sys.stderr)
    for note in record["notes"]:
        print(f"lrlab: note: {note}", file=sys.stderr)
    print(f"auto takes {record['rule']}: {record['why']}; plot: {Path(config.out) / 'lr_find.png'}", file=sys.stderr)


def _report(arguments: argparse.Namespace) -> int:
    from lrlab.report import build_report, verdict

    comparison = build_report(arguments.out)
    print(verdict(comparison))
    print(f"report: {Path(arguments.out) / 'report.html'}")
    return 0


def _preview(arguments: argparse.Namespace) -> int:
    from lrlab.preview import plot_previews, preview, previews_csv

    metric = None
    if arguments.metric:
        try:
            metric = [float(v) for v in arguments.metric.split(",")]
        except ValueError:
            raise UsageError("--metric should be numbers separated by commas, one per epoch") from None
    arguments.steps_per_epoch, said = _steps_per_epoch(arguments)
    previews = {spec: preview(spec, arguments.epochs, arguments.steps_per_epoch, arguments.lr, metric) for spec in arguments.specs}
    if said:
        print(said, file=sys.stderr)
    if arguments.csv:
        _write_output(arguments.csv, previews_csv(previews))
    if arguments.plot:
        plot_previews(previews, arguments.plot, epochs=arguments.epochs, steps_per_epoch=arguments.steps_per_epoch,
                      lr=arguments.lr, metric_given=metric is not None)
    for spec, rows in previews.items():
        epoch_starts = [r.lr for r in rows if (r.step - 1) % arguments.steps_per_epoch == 0]
        shown = ", ".join(f"{lr:.4g}" for lr in epoch_starts[:6]) + (", ..." if len(epoch_starts) > 6 else "")
        print(f"{spec}: epoch-start LR {shown}; final {rows[-1].lr:.4g} ({rows[-1].lr / arguments.lr:.3g} of --lr)")
    return 0


def _write_output(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror}") from None


def _doctor(arguments: argparse.Namespace) -> int:
    from lrlab.preview import doctor, doctor_test_set

    found = 0
    steps, said = _steps_per_epoch(arguments)
    reports = [(spec, doctor(spec, arguments.epochs, steps)) for spec in arguments.specs]
    if said:
        print(said, file=sys.stderr)
    for spec, lines in reports:
        found += len(lines)
        for line in lines:
            print(f"warning: {line}")
        if not lines:
            print(f"ok: {spec}")
    if arguments.test_images is not None:
        if arguments.test_images < 1 or not 0 < arguments.min_effect < 100:
            raise UsageError("--test-images should be at least 1 and --min-effect between 0 and 100 points")
        lines = doctor_test_set(arguments.test_images, arguments.min_effect / 100)
        found += len(lines)
        for line in lines:
            print(f"warning: {line}")
    return 1 if found else 0


def _datasets(arguments: argparse.Namespace) -> int:
    from lrlab.data import describe_datasets

    rows = describe_datasets(arguments.data_dir)
    width = max(len(name) for name, _ in rows)
    for name, where in rows:
        print(f"{name:<{width}}  {where}")
    return 0


def _schedules(arguments: argparse.Namespace) -> int:
    from lrlab.schedules import describe_schedules

    rows = describe_schedules()
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for short, class_name, stepping, takes in rows:
        print(f"{short:<{widths[0]}}  {class_name:<{widths[1]}}  {stepping}")
        print(f"{'':<{widths[0]}}  {takes}")
    print("\nwrite a spec as name:key=value,... (e.g. step:step_size=5,gamma=0.5); <run length> is filled in from --epochs "
          "when left out (in steps for a schedule stepped per batch)")
    print("any spec may start with warmup(linear|constant,epochs=E or steps=N)+ and end with @step or @epoch")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is marked interrupted and can be resumed."""


def _raise_terminated(signal_number: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lrlab` command; returns the exit status."""
    arguments = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    handlers = {"train": _train, "compare": _compare, "find-lr": _find_lr, "report": _report, "preview": _preview, "doctor": _doctor,
                "datasets": _datasets, "schedules": _schedules}
    try:
        return handlers[arguments.command](arguments)
    except UsageError as error:
        print(clip(f"lrlab {arguments.command}: error: {error}", MESSAGE_LIMIT), file=sys.stderr)
        return 2
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
