"""Optimizer specs (`sgd:lr=0.05,momentum=0.9`) -> real torch or schedule-free optimizers."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from lrlab.errors import UsageError, clip
from lrlab.specs import check_arguments, parse_spec, suggestion

SCHEDULE_FREE = {"sgd-schedulefree": "SGDScheduleFree", "adamw-schedulefree": "AdamWScheduleFree"}
# torch optimizers the training loop cannot drive, and why.
UNSUPPORTED = {
    "lbfgs": "LBFGS needs a closure that re-evaluates the loss at every step, which lrlab's loop does not pass",
    "sparseadam": "SparseAdam only takes sparse gradients, and lrlab's models have dense ones",
}
# The LR is multiplied into float32 weights: one float32 cannot hold is a typo, not an LR.
MAX_LR = float(torch.finfo(torch.float32).max)


def optimizer_classes() -> dict[str, type]:
    """Every torch.optim optimizer by lower-case class name, plus the schedule-free ones."""
    found = {
        name.lower(): value
        for name, value in vars(torch.optim).items()
        if inspect.isclass(value) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer
    }
    try:
        import schedulefree
    except ImportError:
        return found
    for short, class_name in SCHEDULE_FREE.items():
        found[short] = getattr(schedulefree, class_name)
    return found


@dataclass(frozen=True)
class OptimizerSpec:
    """A checked optimizer spec: registry name and keyword arguments."""

    text: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def parse_optimizer(text: str) -> OptimizerSpec:
    """Parse and check an optimizer spec; `lr=auto` is kept for the LR finder to fill in."""
    spec = parse_spec(text, "optimizer")
    classes = optimizer_classes()
    name = spec.name.lower()
    if name not in classes:
        if name in SCHEDULE_FREE:
            raise UsageError(f"optimizer {spec.name!r} needs the schedulefree package: pip install schedulefree")
        raise UsageError(f"unknown optimizer {spec.name!r}{suggestion(name, classes)}; known: {', '.join(sorted(classes))}")
    if name in UNSUPPORTED:
        raise UsageError(f"optimizer {spec.name!r} cannot be used: {UNSUPPORTED[name]}; use sgd, adamw or another")
    checked = {k: v for k, v in spec.arguments.items() if not (k == "lr" and v == "auto")}
    check_arguments(classes[name], checked, f"optimizer {spec.name!r}", filled_by_lrlab=("params",))
    lr = spec.arguments.get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and not 0 < lr <= MAX_LR:
        raise UsageError(f"optimizer {spec.name!r}: lr={lr:g} should be positive and at most {MAX_LR:g}")
    return OptimizerSpec(text.strip(), name, dict(spec.arguments))


def build_optimizer(spec: OptimizerSpec, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer `spec` describes, over `parameters`."""
    if spec.arguments.get("lr") == "auto":
        raise UsageError("lr=auto must be resolved by the LR finder before the optimizer is built")
    try:
        return optimizer_classes()[spec.name](parameters, **spec.arguments)
    except (ValueError, TypeError) as error:
        raise UsageError(f"optimizer {clip(repr(spec.text), 60)}: {clip(error, 160)}") from None


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` trains at one point and is evaluated at another (its `train()` / `eval()` switch)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def set_training_mode(optimizer: torch.optim.Optimizer, training: bool) -> None:
    """Schedule-free optimizers keep two sets of weights; switch to the right one."""
    switch = getattr(optimizer, "train" if training else "eval", None)
    if callable(switch):
        switch()


def with_lr(spec_text: str, lr: float) -> str:
    """The same optimizer spec with its LR set to `lr` (used to fill in `lr=auto`)."""
    spec = parse_optimizer(spec_text)
    arguments = {**spec.arguments, "lr": lr}
    return f"{spec.name}:" + ",".join(f"{key}={value!r}" for key, value in arguments.items())
