"""What a run is: one dataclass, loaded from YAML or the command line, checked with clear errors."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from lrlab import imports
from lrlab.errors import UsageError, clip
from lrlab.specs import parse_arguments, suggestion

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
AUGMENTATIONS = ("none", "flip", "crop+flip", "crop")
DEFAULT_BUDGET_FRACTION = 0.25
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# What one machine can be asked for; beyond these a value is a typo, and refusing it at once beats
# a hang or an out-of-memory kill hours later. The README's "What lrlab guarantees" lists them.
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1  # the data order draws from seed * 1_000_003 + epoch, which must stay a 64-bit seed
MAX_IMAGE_SIZE = 4096
MAX_BATCH_SIZE = 2**20
MAX_CONFIG_BYTES = 1_000_000
# Fields that change how a run is carried out, not what it computes; a resume may change them.
RUNTIME_ONLY = ("device", "quiet", "tensorboard", "data_dir", "out", "memory_budget", "data_workers",
                "pause_at_epoch")
# Runtime-only fields lrlab no longer has: run directories written before still hold them, and still load.
RETIRED = ("graph_capture",)


@dataclass
class RunConfig:
    """Everything needed to repeat one training run."""

    dataset: str = "fashion-mnist"
    model: str = "cnn"
    model_args: str = ""
    width: int | None = None
    optimizer: str = "sgd:lr=0.05,momentum=0.9,weight_decay=5e-4"
    schedule: str = "constant"
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1024
    seed: int = 0
    augment: str = "none"
    label_smoothing: float = 0.0
    limit_train: int | None = None
    limit_test: int | None = None
    image_size: int | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    test_fraction: float = 0.1
    strict: bool = False
    memory_budget: str | None = None
    data_workers: int | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    deterministic: bool = False
    device: str = "auto"
    data_dir: str | None = None
    out: str = "runs/run"
    tensorboard: bool = False
    quiet: bool = False
    # Train only up to this epoch and stop, resumable, as "paused": a study's pruning rung. The
    # schedule still sees the full `epochs`, so the run is the same as one trained without a pause.
    pause_at_epoch: int | None = None

    def validate(self) -> RunConfig:
        """Check types, ranges and every spec; return self so calls chain."""
        hints = typing.get_type_hints(RunConfig)
        for field in fields(self):
            value = getattr(self, field.name)
            if not _fits(value, hints[field.name]):
                raise UsageError(f"{field.name}: {clip(repr(value), 60)} should be {_type_name(hints[field.name])}")
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(f"{field.name}: {clip(ascii(value), 60)} is not valid UTF-8; lrlab writes it into "
                                     f"its files and reports, so give a name in UTF-8") from None
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        for name in ("limit_train", "limit_test", "image_size", "width", "pause_at_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if self.data_workers is not None and self.data_workers < 0:
            raise UsageError(f"data_workers must be zero or positive, got {self.data_workers}")
        memory_budget_bytes(self.memory_budget)
        limits = {"epochs": MAX_EPOCHS, "seed": MAX_SEED, "image_size": MAX_IMAGE_SIZE, "batch_size": MAX_BATCH_SIZE,
                  "eval_batch_size": MAX_BATCH_SIZE, "split_seed": MAX_SEED}
        for name, limit in limits.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise UsageError(f"{name} {clip(value, 30)} is more than lrlab accepts ({limit}); give a smaller {name}")
        if self.seed < 0:
            raise UsageError(f"seed must be zero or positive, got {self.seed}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"val_fraction must be in [0, 1) (0: no validation split), got {self.val_fraction}")
        if not 0 < self.test_fraction < 1:
            raise UsageError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")
        if self.split_seed < 0:
            raise UsageError(f"split_seed must be zero or positive, got {self.split_seed}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name, allowed in (("augment", AUGMENTATIONS), ("device", DEVICES), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name}: {clip(repr(getattr(self, name)), 40)} is not one of {', '.join(allowed)}")
        from lrlab.optimizers import parse_optimizer
        from lrlab.schedules import parse_schedule

        parse_optimizer(self.optimizer)
        schedule = parse_schedule(self.schedule)
        if self.val_fraction == 0 and (schedule.monitor or "").startswith("val_"):
            raise UsageError(f"schedule {self.schedule!r} watches {schedule.monitor}, but --val-fraction 0 leaves no "
                             f"validation split; add monitor=test_loss to it (the article's protocol) or keep a split")
        parse_arguments(self.model_args, "--model-args")
        for name in ("model", "dataset"):
            value = getattr(self, name)
            if imports.is_import_path(value):
                imports.check_syntax(value, f"--{name}")
                # Recorded absolute, so a resume, a report or a worker elsewhere finds the same file.
                setattr(self, name, imports.canonical(value))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, other: RunConfig, ignore: tuple[str, ...] = RUNTIME_ONLY) -> list[str]:
        """Names of fields whose values differ, runtime-only fields aside."""
        return [f.name for f in fields(self) if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)]


def memory_budget_bytes(text: str | None) -> int:
    """`--memory-budget`: bytes with an optional K/M/G/T suffix (e.g. 8G), or a fraction of RAM (e.g. 0.25)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if text is None:
        return int(total * DEFAULT_BUDGET_FRACTION)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)B?\s*", str(text).upper())
    if not match:
        raise UsageError(f"--memory-budget {text!r} should be a size like 512M or 8G, or a fraction of RAM like 0.25")
    number, unit = float(match.group(1)), match.group(2)
    if not unit and number <= 1:
        return int(total * number)
    return int(number * UNITS[unit])


def _fits(value: Any, hint: Any) -> bool:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option in (bool, str) and isinstance(value, option):
            return True
    return False


def _type_name(hint: Any) -> str:
    options = typing.get_args(hint) or (hint,)
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "empty"}
    return " or ".join(names.get(o, str(o)) for o in options)


def config_from_dict(values: dict[str, Any], where: str) -> RunConfig:
    """A RunConfig from a mapping; unknown keys are refused with the closest known one suggested."""
    known = [f.name for f in fields(RunConfig)]
    values = {k: v for k, v in values.items() if k != "versions" and k not in RETIRED}
    for key in values:
        if key not in known:
            raise UsageError(f"{where}: unknown key {clip(repr(key), 40)}{suggestion(str(key), known)}")
    config = RunConfig(**values)
    try:
        return config.validate()
    except UsageError as error:
        raise UsageError(f"{where}: {error}") from None


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without anchors and aliases: a config never needs them, and a few hundred
    bytes of nested aliases expand into gigabytes wherever the value is printed or compared."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: aliases (*name) are not accepted in lrlab configs; write the value out")
        return super().compose_node(parent, index)


def load_config(path: str | Path) -> RunConfig:
    """Read a run's YAML file (as written into every run directory, or by hand)."""
    return config_from_dict(read_yaml_mapping(path), str(path))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The `key: value` lines of a YAML file, with one-line errors for a missing or malformed file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UsageError(f"config {path} is not a regular file; give a YAML file")
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise UsageError(f"cannot read config {path}: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(f"config {path} is larger than {MAX_CONFIG_BYTES} bytes; a run's YAML is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"config {path} is not UTF-8 text; give a YAML file (restore it if lrlab wrote it)") from None
    try:
        values = yaml.load(text, Loader=_NoAliasLoader) or {}
    except (yaml.YAMLError, RecursionError) as error:
        raise UsageError(f"{path} is not valid YAML: {clip(str(error).splitlines()[0] if str(error) else type(error).__name__, 160)}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{path} should hold key: value lines, e.g. 'schedule: step:step_size=5'")
    return values


def config_yaml(config: RunConfig, versions: dict[str, str]) -> str:
    """The YAML written to a run directory: the config, then the versions that produced it."""
    return yaml.safe_dump({**config.to_dict(), "versions": versions}, sort_keys=False)
