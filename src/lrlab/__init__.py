"""lrlab: train image classifiers and find out, with evidence, which learning-rate schedule to use."""

__version__ = "0.1.0"

import importlib

from lrlab.config import RunConfig, load_config
from lrlab.errors import UsageError

# These need torch, a second or more to import: loaded on first use, so `lrlab --help` answers at once.
_NEEDS_TORCH = {"RunResult": "lrlab.engine", "Trainer": "lrlab.engine", "train": "lrlab.engine",
                "build_schedule": "lrlab.schedules", "parse_schedule": "lrlab.schedules"}

__all__ = ["RunConfig", "RunResult", "Trainer", "UsageError", "build_schedule", "load_config", "parse_schedule", "train"]


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    raise AttributeError(f"module 'lrlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
