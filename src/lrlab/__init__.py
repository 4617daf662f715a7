"""lrlab: train image classifiers and find out, with evidence, which learning-rate schedule to use."""

__version__ = "0.1.0"

from lrlab.config import RunConfig, load_config
from lrlab.engine import RunResult, Trainer, train
from lrlab.errors import UsageError
from lrlab.schedules import build_schedule, parse_schedule

__all__ = ["RunConfig", "RunResult", "Trainer", "UsageError", "build_schedule", "load_config", "parse_schedule", "train"]
