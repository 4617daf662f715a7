"""lrlab: train image classifiers and find out, with evidence, which learning-rate schedule to use."""

__version__ = "0.1.0"

import importlib

from lrlab.config import RunConfig, load_config
from lrlab.errors import UsageError

# These need torch, a second or more to import: loaded on first use, so `lrlab --help` answers at once.
_NEEDS_TORCH = {"RunResult": ("lrlab.engine", "RunResult"), "Trainer": ("lrlab.engine", "Trainer"),
                "train": ("lrlab.api", "train"), "compare": ("lrlab.api", "compare"),
                "find_lr": ("lrlab.api", "find_lr"), "FoundLR": ("lrlab.api", "FoundLR"),
                "ComparisonResult": ("lrlab.api", "ComparisonResult"), "Schedule": ("lrlab.schedules", "ScheduleDriver"),
                "parse_schedule": ("lrlab.schedules", "parse_schedule")}

__all__ = ["ComparisonResult", "FoundLR", "RunConfig", "RunResult", "Schedule", "Trainer", "UsageError", "compare", "find_lr", "load_config",
           "parse_schedule", "train"]


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        module, attribute = _NEEDS_TORCH[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'lrlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
