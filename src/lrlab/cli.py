"""Command line: argument parsing only; every command calls the library API."""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from lrlab.config import RunConfig, config_from_dict, load_config
from lrlab.errors import UsageError

HELP = {
    "dataset": "data set: fashion-mnist, mnist, cifar10, cifar100, digits, synthetic or folder:PATH",
    "model": "model: mlp, cnn, resnet or torchvision:<name> (e.g. torchvision:resnet18)",
    "width": "base width of mlp/cnn/resnet (default: the model's own)",
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
    "val_fraction": "for folder:PATH without train/test folders, the fraction held out for testing",
    "strict": "stop at the first unreadable image instead of skipping it",
    "precision": "auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16",
    "channels_last": "channels-last memory format (default: on for CUDA)",
    "device": "auto, cpu, cuda or mps",
    "data_dir": "folder to look for data files in first (also $LRLAB_DATA)",
    "out": "run directory",
    "tensorboard": "also write TensorBoard events into the run directory",
    "quiet": "no progress bar or per-epoch lines",
}

TRAIN_EXAMPLES = """examples:
  lrlab train --dataset fashion-mnist --model cnn --optimizer sgd:lr=0.05,momentum=0.9,weight_decay=5e-4 \\
      --schedule step:step_size=5,gamma=0.5 --epochs 20 --seed 0 --out runs/step
  lrlab train --out runs/step --resume          # continue a stopped run
  lrlab train --config configs/step.yaml        # the same run from a YAML file
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(RunConfig)
    for field in fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not MISSING else None
        help_text = f"{HELP[field.name]} (default: {default})"
        options = [o for o in typing.get_args(hints[field.name]) if o is not type(None)] or [hints[field.name]]
        if options[0] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=options[0], default=argparse.SUPPRESS, help=help_text, metavar=field.name.upper())


def build_parser() -> Parser:
    parser = Parser(prog="lrlab", description="Train image classifiers and find out which learning-rate schedule to use.")
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

    commands.add_parser("schedules", help="list every schedule name and how it is stepped",
                        epilog="example:\n  lrlab schedules", formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def config_from_arguments(arguments: argparse.Namespace) -> RunConfig:
    """Defaults, then the --config file (or the run being resumed), then options on the command line."""
    given = {f.name: getattr(arguments, f.name) for f in fields(RunConfig) if hasattr(arguments, f.name)}
    base: dict = {}
    if arguments.config:
        base = load_config(arguments.config).to_dict()
    elif arguments.resume:
        saved = Path(given.get("out", RunConfig.out)) / "config.yaml"
        if saved.exists():
            base = load_config(saved).to_dict()
    return config_from_dict({**base, **given}, "command line")


def _train(arguments: argparse.Namespace) -> int:
    from lrlab.engine import train

    config = config_from_arguments(arguments)
    result = train(config, resume=arguments.resume, overwrite=arguments.overwrite)
    summary = (f"{result.state}: {result.epochs_completed} epochs, best test accuracy {result.best_test_acc:.2%} "
               f"(epoch {result.best_epoch}), final {result.final_test_acc:.2%}, {result.seconds:.1f} s -> {result.path}")
    print(summary)
    return 0 if result.state == "finished" else 1


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
    for short, class_name, stepping in rows:
        print(f"{short:<{widths[0]}}  {class_name:<{widths[1]}}  {stepping}")
    print("\nany spec may start with warmup(linear|constant,epochs=E)+ and end with @step or @epoch")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lrlab` command; returns the exit status."""
    arguments = build_parser().parse_args(argv)
    handlers = {"train": _train, "datasets": _datasets, "schedules": _schedules}
    try:
        return handlers[arguments.command](arguments)
    except UsageError as error:
        print(f"lrlab {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
