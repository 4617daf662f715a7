"""Schedule specs -> real `torch.optim.lr_scheduler` objects, stepped where each one needs.

lrlab never computes a learning rate itself: the torch scheduler objects do the maths, and
`ScheduleDriver` only decides when to call them (per optimizer step, per epoch, with a metric).
"""

from __future__ import annotations

import ast
import inspect
import math
import operator
import re
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch.optim import lr_scheduler

from lrlab.errors import UsageError, clip
from lrlab.specs import check_arguments, check_length, parse_arguments, parse_spec, suggestion

SHORT_NAMES = {
    "step": "StepLR",
    "multistep": "MultiStepLR",
    "exponential": "ExponentialLR",
    "cosine": "CosineAnnealingLR",
    "cosine-restarts": "CosineAnnealingWarmRestarts",
    "plateau": "ReduceLROnPlateau",
    "onecycle": "OneCycleLR",
    "cyclic": "CyclicLR",
    "linear": "LinearLR",
    "polynomial": "PolynomialLR",
    "constant-factor": "ConstantLR",
    "lambda": "LambdaLR",
    "multiplicative": "MultiplicativeLR",
    "wsd": "WarmupStableDecayLR",
}
NO_SCHEDULE = "constant"
PER_STEP_BY_DEFAULT = {"OneCycleLR", "CyclicLR", "WarmupStableDecayLR"}
COMBINATORS = {"SequentialLR", "ChainedScheduler"}
MONITORS = ("val_loss", "val_acc", "test_loss", "test_acc", "train_loss", "train_acc")
# Arguments lrlab fills in itself, so the user never passes an optimizer or a position.
FILLED_BY_LRLAB = ("optimizer", "last_epoch", "verbose")
# Lengths that default to the run's (after any warmup) when not given: the one of these a class
# reads, and the arguments that, when given, set its length instead.
RUN_LENGTH_ARGUMENTS = {
    "CosineAnnealingLR": ("T_max", ("T_max",)),
    "OneCycleLR": ("total_steps", ("total_steps", "epochs", "steps_per_epoch")),
    "WarmupStableDecayLR": ("total_steps", ("total_steps",)),
}


class WarmupStableDecayFactor:
    """The LR factor of warmup-stable-decay at step `step`: 1, then down to `min_factor` over the last
    `cooldown` of `total_steps`, linearly or as 1 - sqrt(progress) (Hugging Face's `get_wsd_schedule`).

    An object rather than a closure, so torch's `state_dict()` saves it (it stores the `__dict__` of
    callable objects) and a checkpoint loads with `weights_only=True`.
    """

    def __init__(self, total_steps: int, cooldown: float, shape: str, min_factor: float):
        self.total_steps = total_steps
        self.cooldown_steps = max(1, round(cooldown * total_steps))
        self.shape = shape
        self.min_factor = min_factor

    def __call__(self, step: int) -> float:
        progress = min(1.0, max(0.0, (step - (self.total_steps - self.cooldown_steps)) / self.cooldown_steps))
        decayed = progress if self.shape == "linear" else math.sqrt(progress)
        return self.min_factor + (1.0 - self.min_factor) * (1.0 - decayed)


class WarmupStableDecayLR(lr_scheduler.LambdaLR):
    """Warmup-stable-decay: the LR holds, then cools down over the last `cooldown` fraction of the run.

    Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations":
    a short cooldown (20%) with the 1-sqrt shape matches cosine, and the stable phase can be cut
    anywhere. Torch's LambdaLR does the stepping; the warmup is lrlab's `warmup(...)+` in front of it.
    `total_steps` is the run's length after the warmup, filled in by lrlab when not given.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int | None = None, cooldown: float = 0.2,
                 shape: Literal["linear", "1-sqrt"] = "1-sqrt", min_factor: float = 0.0, last_epoch: int = -1):
        if total_steps is None:
            raise ValueError("WarmupStableDecayLR needs total_steps, the steps of the schedule")
        if shape not in ("linear", "1-sqrt"):
            raise ValueError(f"shape={shape!r} should be linear or 1-sqrt")
        self.total_steps, self.cooldown, self.shape, self.min_factor = total_steps, cooldown, shape, min_factor
        super().__init__(optimizer, WarmupStableDecayFactor(total_steps, cooldown, shape, min_factor), last_epoch)


# Schedules lrlab adds, each built on a torch scheduler class that does the stepping.
LRLAB_CLASSES = {"WarmupStableDecayLR": WarmupStableDecayLR}


def scheduler_classes() -> dict[str, type]:
    """Every public scheduler class torch ships, by class name, and lrlab's own (LRLAB_CLASSES)."""
    found = {}
    for name, value in vars(lr_scheduler).items():
        if name.startswith("_") or not inspect.isclass(value) or name == "LRScheduler":
            continue
        if issubclass(value, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)):
            found[name] = value
    return {**found, **LRLAB_CLASSES}


@dataclass(frozen=True)
class WarmupSpec:
    """A warmup placed in front of another schedule; it always steps per batch."""

    kind: str  # "linear" ramps up to the schedule's LR, "constant" holds a fraction of it
    epochs: float | None = None
    steps: int | None = None
    start_factor: float = 0.01

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, round(self.epochs * steps_per_epoch))

    @property
    def length_as_given(self) -> str:
        """The warmup's length in the unit it was written in: '30 epochs' or '200 steps'."""
        if self.steps is not None:
            return f"{self.steps} step{'s' if self.steps != 1 else ''}"
        return f"{self.epochs:g} epoch{'s' if self.epochs != 1 else ''}"


@dataclass(frozen=True)
class ScheduleSpec:
    """A parsed, checked schedule: the torch class, its arguments and where it is stepped."""

    text: str
    class_name: str | None  # None means a fixed LR
    arguments: dict[str, Any] = field(default_factory=dict)
    per_step: bool = False
    monitor: str | None = None
    warmup: WarmupSpec | None = None

    @property
    def is_plateau(self) -> bool:
        return self.class_name == "ReduceLROnPlateau"

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return self.warmup.total_steps(steps_per_epoch) if self.warmup else 0

    @property
    def length_from_run(self) -> str | None:
        """The argument that takes the run's length because the spec did not give it (T_max, total_steps), or None."""
        if self.class_name not in RUN_LENGTH_ARGUMENTS:
            return None
        filled, setters = RUN_LENGTH_ARGUMENTS[self.class_name]
        return None if set(setters) & set(self.arguments) else filled

    @property
    def depends_on_run_length(self) -> str | None:
        """Why the LR at a given step changes with the run's length (so a finished run cannot simply
        be trained longer), or None when it does not."""
        if self.length_from_run:
            return f"its {self.length_from_run} is the run's length"
        if self.class_name == "OneCycleLR":
            return "one-cycle ends its cycle at its total_steps and cannot step past it"
        return None

    def main_length(self, epochs: int, steps_per_epoch: int) -> int:
        """How long the schedule after the warmup runs: in steps if it steps per batch, else in whole epochs."""
        warmup_steps = self.warmup_steps(steps_per_epoch)
        if self.per_step:
            return epochs * steps_per_epoch - warmup_steps
        return epochs - (math.ceil(warmup_steps / steps_per_epoch) if steps_per_epoch else 0)

    @property
    def label(self) -> str:
        """A readable name written like the torch call, e.g. `StepLR(5, 0.5)` for `step:step_size=5,gamma=0.5`.

        Values are positional while they follow the class signature without a gap, keywords after it.
        """
        if self.class_name is None:
            main = NO_SCHEDULE
        else:
            parameters = [p for p in inspect.signature(scheduler_classes()[self.class_name]).parameters if p not in FILLED_BY_LRLAB]
            shown, gap = [], False
            for name in parameters:
                if name not in self.arguments:
                    gap = True
                elif gap:
                    shown.append(f"{name}={self.arguments[name]}")
                else:
                    shown.append(str(self.arguments[name]))
            if self.monitor is not None:
                shown.append(f"monitor={self.monitor}")
            main = f"{self.class_name}({', '.join(shown)})"
        if self.class_name is not None and self.per_step != (self.class_name in PER_STEP_BY_DEFAULT):
            main += "@step" if self.per_step else "@epoch"
        if self.warmup is None:
            return main
        length = f"epochs={self.warmup.epochs}" if self.warmup.steps is None else f"steps={self.warmup.steps}"
        start = "" if self.warmup.start_factor == 0.01 else f", start_factor={self.warmup.start_factor}"
        return f"warmup({self.warmup.kind}, {length}{start})+{main}"


class LrLambda:
    """An `lr_lambda` written as arithmetic in `epoch` (e.g. `0.95**epoch`).

    A class rather than a closure so that torch's `state_dict()` can save it (it stores the
    `__dict__` of callable objects) and a checkpoint loads with `weights_only=True`. It is
    evaluated by walking its syntax tree in floats, never by `eval`: an expression is at most
    MAX_LENGTH characters and MAX_DEPTH deep, and a power that would overflow a float fails at once
    instead of computing a number with millions of digits.
    """

    MAX_LENGTH = 200
    MAX_DEPTH = 20
    FUNCTIONS: ClassVar[dict[str, Any]] = {
        **{n: getattr(math, n) for n in ("cos", "sin", "exp", "log", "sqrt")}, "min": min, "max": max, "abs": abs,
    }
    CONSTANTS: ClassVar[dict[str, float]] = {"pi": math.pi}
    OPERATORS: ClassVar[dict[type, Any]] = {
        ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv,
        ast.USub: operator.neg, ast.UAdd: operator.pos,
        ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    }

    def __init__(self, expression: str):
        self.expression = expression
        self._check()

    def _check(self) -> None:
        shown = clip(repr(self.expression), 60)
        if len(self.expression) > self.MAX_LENGTH:
            raise UsageError(f"lr_lambda {shown} is {len(self.expression)} characters long; "
                             f"lrlab takes at most {self.MAX_LENGTH}")
        try:
            tree = ast.parse(self.expression, mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            raise UsageError(f"lr_lambda {shown} is not a valid expression") from None
        self._check_node(tree.body, 1)
        factor = self(0)
        if not math.isfinite(factor) or factor <= 0:
            raise UsageError(f"lr_lambda {shown} gives {factor:g} at epoch 0; the schedule multiplies the LR by it, "
                             "so it must be a positive, finite number (an LR of zero or below trains nothing)")

    def _check_node(self, node: ast.AST, depth: int) -> None:
        shown = clip(repr(self.expression), 60)
        if depth > self.MAX_DEPTH:
            raise UsageError(f"lr_lambda {shown} nests deeper than {self.MAX_DEPTH} levels; write it more simply")
        allowed = f"only arithmetic in 'epoch' and {', '.join([*self.FUNCTIONS, *self.CONSTANTS])} is allowed"
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise UsageError(f"lr_lambda {shown}: {clip(repr(node.value), 30)} is not a number; {allowed}")
            return
        if isinstance(node, ast.Name):
            if node.id != "epoch" and node.id not in self.CONSTANTS:
                raise UsageError(f"lr_lambda {shown}: unknown name {clip(node.id, 30)!r}; use 'epoch'")
            return
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id not in self.FUNCTIONS:
                raise UsageError(f"lr_lambda {shown}: unknown name {clip(node.func.id, 30)!r}; {allowed}")
            if not isinstance(node.func, ast.Name) or node.keywords:
                raise UsageError(f"lr_lambda {shown}: {allowed}")
            children = node.args
        elif isinstance(node, ast.BinOp) and type(node.op) in self.OPERATORS:
            children = [node.left, node.right]
        elif isinstance(node, ast.UnaryOp) and type(node.op) in self.OPERATORS:
            children = [node.operand]
        elif isinstance(node, ast.Compare) and all(type(op) in self.OPERATORS for op in node.ops):
            children = [node.left, *node.comparators]
        elif isinstance(node, ast.IfExp):
            children = [node.test, node.body, node.orelse]
        else:
            raise UsageError(f"lr_lambda {shown}: {allowed}")
        for child in children:
            self._check_node(child, depth + 1)

    def _evaluate(self, node: ast.AST, epoch: float) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return float(epoch) if node.id == "epoch" else self.CONSTANTS[node.id]
        if isinstance(node, ast.Call):
            return float(self.FUNCTIONS[node.func.id](*(self._evaluate(a, epoch) for a in node.args)))
        if isinstance(node, ast.BinOp):
            result = self.OPERATORS[type(node.op)](self._evaluate(node.left, epoch), self._evaluate(node.right, epoch))
            if isinstance(result, complex):
                raise ValueError("a negative number to a fractional power is not a real number")
            return result
        if isinstance(node, ast.UnaryOp):
            return self.OPERATORS[type(node.op)](self._evaluate(node.operand, epoch))
        if isinstance(node, ast.Compare):
            left = self._evaluate(node.left, epoch)
            for op, right_node in zip(node.ops, node.comparators):
                right = self._evaluate(right_node, epoch)
                if not self.OPERATORS[type(op)](left, right):
                    return 0.0
                left = right
            return 1.0
        return self._evaluate(node.body if self._evaluate(node.test, epoch) else node.orelse, epoch)

    def __call__(self, epoch: int) -> float:
        tree = ast.parse(self.expression, mode="eval")
        try:
            return float(self._evaluate(tree.body, epoch))
        except OverflowError:
            raise UsageError(f"lr_lambda {clip(repr(self.expression), 60)} fails at epoch {epoch}: "
                             "a number grows beyond a float's range") from None
        except (ArithmeticError, ValueError, TypeError) as error:
            raise UsageError(f"lr_lambda {clip(repr(self.expression), 60)} fails at epoch {epoch}: {clip(error, 80)}") from None


def _positive(value: float) -> bool:
    return value > 0


def _at_least_one(value: float) -> bool:
    return value >= 1


def _not_negative(value: float) -> bool:
    return value >= 0


def _fraction(value: float) -> bool:
    return 0 < value <= 1


# The values each torch class rejects, or accepts and later divides by (or raises to a negative
# power): checked when the spec is parsed, so a bad value fails in one line before any training
# instead of as a ZeroDivisionError epochs in. Each rule says what torch does with the value.
VALUE_RULES: dict[str, dict[str, tuple[Callable[[float], bool], str]]] = {
    "StepLR": {"step_size": (_at_least_one, "at least 1 (StepLR takes the epoch modulo step_size)"),
               "gamma": (_positive, "positive (the LR is multiplied by it)")},
    "MultiStepLR": {"gamma": (_positive, "positive (the LR is multiplied by it)"),
                    "milestones": (_at_least_one, "epochs of at least 1")},
    "ExponentialLR": {"gamma": (_positive, "positive (the LR is multiplied by it every epoch)")},
    "CosineAnnealingLR": {"T_max": (_at_least_one, "at least 1 (CosineAnnealingLR divides by T_max)"),
                          "eta_min": (_not_negative, "zero or positive (it is the lowest LR)")},
    "CosineAnnealingWarmRestarts": {"T_0": (_at_least_one, "at least 1 (torch: T_0 must be a positive integer)"),
                                    "T_mult": (_at_least_one, "at least 1 (torch: T_mult must be an integer >= 1)"),
                                    "eta_min": (_not_negative, "zero or positive (it is the lowest LR)")},
    "ReduceLROnPlateau": {"factor": (lambda v: 0 < v < 1, "between 0 and 1 (torch: factor should be < 1.0; "
                                     "the LR is multiplied by it)"),
                          "patience": (_not_negative, "zero or more epochs"),
                          "cooldown": (_not_negative, "zero or more epochs"),
                          "min_lr": (_not_negative, "zero or positive (it is the lowest LR)"),
                          "threshold": (_not_negative, "zero or positive"),
                          "eps": (_not_negative, "zero or positive")},
    "OneCycleLR": {"max_lr": (_positive, "positive (it is the peak LR)"),
                   "total_steps": (_at_least_one, "at least 1 (torch: expected a positive integer total_steps)"),
                   "epochs": (_at_least_one, "at least 1 (torch: expected a positive integer epochs)"),
                   "steps_per_epoch": (_at_least_one, "at least 1 (torch: expected a positive integer steps_per_epoch)"),
                   "pct_start": (lambda v: 0 <= v <= 1, "between 0 and 1 (torch: expected a float between 0 and 1)"),
                   "div_factor": (_positive, "positive (OneCycleLR divides max_lr by it)"),
                   "final_div_factor": (_positive, "positive (OneCycleLR divides by it)")},
    "CyclicLR": {"base_lr": (_positive, "positive (it is the lowest LR)"),
                 "max_lr": (_positive, "positive (it is the highest LR)"),
                 "step_size_up": (_at_least_one, "at least 1 (CyclicLR divides by the steps of the cycle)"),
                 "step_size_down": (_at_least_one, "at least 1 (CyclicLR divides by the steps of the cycle)"),
                 "gamma": (_positive, "positive (the LR is multiplied by it)")},
    "LinearLR": {"start_factor": (_fraction, "in (0, 1] (torch: starting multiplicative factor expected to be "
                                  "greater than 0 and less or equal to 1)"),
                 "end_factor": (lambda v: 0 <= v <= 1, "in [0, 1] (torch: ending multiplicative factor expected "
                                "to be between 0 and 1)"),
                 "total_iters": (_at_least_one, "at least 1 (LinearLR divides by total_iters)")},
    "ConstantLR": {"factor": (_fraction, "in (0, 1] (ConstantLR divides the LR by factor when it ends)"),
                   "total_iters": (_not_negative, "zero or more")},
    "WarmupStableDecayLR": {"total_steps": (_at_least_one, "at least 1 (the cooldown is a share of it)"),
                            "cooldown": (_fraction, "in (0, 1], the share of the run spent cooling down (e.g. 0.2)"),
                            "min_factor": (lambda v: 0 <= v <= 1, "in [0, 1], the LR's last value as a share of its start")},
    "PolynomialLR": {"total_iters": (_at_least_one, "at least 1 (PolynomialLR divides by total_iters)"),
                     "power": (_not_negative, "zero or positive (PolynomialLR raises 0 to this power at its end)")},
}


def _check_values(class_name: str, arguments: dict[str, Any], context: str) -> None:
    for name, (holds, rule) in VALUE_RULES.get(class_name, {}).items():
        value = arguments.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for number in values:
            if isinstance(number, (int, float)) and not isinstance(number, bool) and not holds(number):
                raise UsageError(f"{context}: {name}={clip(repr(value), 40)} should be {rule}")


def _parse_warmup(text: str) -> WarmupSpec:
    match = re.fullmatch(r"warmup\((.*)\)", text.strip())
    if not match:
        raise UsageError(f"warmup {clip(repr(text), 60)} should look like warmup(linear,epochs=2)")
    kind, _, rest = match.group(1).partition(",")
    kind = kind.strip()
    if kind not in ("linear", "constant"):
        raise UsageError(f"warmup kind {kind!r} is not known; use linear or constant")
    arguments = parse_arguments(rest, "warmup")
    unknown = set(arguments) - {"epochs", "steps", "start_factor"}
    if unknown:
        raise UsageError(f"warmup: unknown argument {min(unknown)!r}; it takes epochs, steps, start_factor")
    if ("epochs" in arguments) == ("steps" in arguments):
        raise UsageError("warmup needs exactly one of epochs=E or steps=N")
    epochs, steps = arguments.get("epochs"), arguments.get("steps")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0):
        raise UsageError(f"warmup epochs={epochs!r} should be a positive number")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise UsageError(f"warmup steps={steps!r} should be a positive whole number")
    start_factor = arguments.get("start_factor", 0.01)
    if isinstance(start_factor, bool) or not isinstance(start_factor, (int, float)) or not 0 < start_factor <= 1:
        raise UsageError(f"warmup start_factor={start_factor!r} should be in (0, 1]")
    return WarmupSpec(kind, epochs, steps, float(start_factor))


def resolve_class_name(name: str) -> str | None:
    """Short name or class name (any case) -> torch class name; None for a fixed LR."""
    if name == NO_SCHEDULE:
        return None
    classes = scheduler_classes()
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    by_lower = {c.lower(): c for c in classes}
    if name.lower() in by_lower:
        resolved = by_lower[name.lower()]
        if resolved in COMBINATORS:
            raise UsageError(
                f"{resolved} combines other schedules; write the combination as a spec, "
                "e.g. warmup(linear,epochs=2)+cosine:T_max=18"
            )
        return resolved
    choices = [NO_SCHEDULE, *SHORT_NAMES, *(c for c in classes if c not in COMBINATORS)]
    raise UsageError(f"unknown schedule {name!r}{suggestion(name, choices)}; run 'lrlab schedules' to list them")


def parse_schedule(text: str) -> ScheduleSpec:
    """Parse and check a schedule spec such as `warmup(linear,epochs=2)+cosine:T_max=18@step`."""
    if not isinstance(text, str):
        raise UsageError(f"a schedule spec is text, e.g. constant or step:step_size=5,gamma=0.5; got {type(text).__name__} "
                         f"{clip(repr(text), 40)}")
    if not text.strip():
        raise UsageError("empty schedule spec; use e.g. constant or step:step_size=5,gamma=0.5")
    check_length(text, "schedule")
    body = text.strip()
    stepping = None
    if body.endswith(("@step", "@epoch")):
        body, _, stepping = body.rpartition("@")
    warmup = None
    if body.startswith("warmup("):
        close = body.find(")")
        if close < 0 or body[close + 1 : close + 2] != "+":
            raise UsageError(f"schedule {clip(repr(text), 60)}: a warmup is written warmup(linear,epochs=2)+<schedule>")
        warmup = _parse_warmup(body[: close + 1])
        body = body[close + 2 :]
    spec = parse_spec(body, "schedule")
    class_name = resolve_class_name(spec.name)
    arguments = dict(spec.arguments)
    monitor = arguments.pop("monitor", None)
    context = f"schedule {spec.name!r}"
    if class_name is None:
        if arguments or monitor:
            raise UsageError(f"{context} takes no arguments")
        if stepping:
            raise UsageError(f"{context} has nothing to step; drop @{stepping}")
        return ScheduleSpec(text.strip(), None, {}, False, None, warmup)
    cls = scheduler_classes()[class_name]
    if class_name in ("LambdaLR", "MultiplicativeLR") and isinstance(arguments.get("lr_lambda"), (int, float)):
        arguments["lr_lambda"] = str(arguments["lr_lambda"])
    check_arguments(cls, arguments, context, FILLED_BY_LRLAB, may_be_omitted=RUN_LENGTH_ARGUMENTS.get(class_name, ("",))[:1])
    _check_values(class_name, arguments, context)
    if "lr_lambda" in arguments:
        LrLambda(arguments["lr_lambda"])
    if class_name == "ReduceLROnPlateau":
        monitor = monitor or "val_loss"
        if monitor not in MONITORS:
            raise UsageError(f"{context}: monitor={monitor!r} should be one of {', '.join(MONITORS)}")
        wants_max = monitor.endswith("_acc")
        if "mode" not in arguments:
            arguments["mode"] = "max" if wants_max else "min"
        elif (arguments["mode"] == "max") != wants_max:
            raise UsageError(
                f"{context}: mode={arguments['mode']} with monitor={monitor} would cut the LR while "
                f"the run improves; use mode={'max' if wants_max else 'min'}"
            )
        if stepping == "step":
            raise UsageError(f"{context} needs an epoch's metric; it cannot step per batch (drop @step)")
    elif monitor is not None:
        raise UsageError(f"{context}: monitor= only applies to plateau (ReduceLROnPlateau)")
    per_step = class_name in PER_STEP_BY_DEFAULT if stepping is None else stepping == "step"
    return ScheduleSpec(text.strip(), class_name, arguments, per_step, monitor, warmup)


def _fill_run_length(spec: ScheduleSpec, main_steps: int) -> dict[str, Any]:
    """A length the spec left out (cosine's T_max, one-cycle's total_steps) is the run's, after any warmup."""
    arguments = dict(spec.arguments)
    if spec.length_from_run:
        arguments[spec.length_from_run] = max(1, main_steps)
    if "lr_lambda" in arguments:
        arguments["lr_lambda"] = LrLambda(arguments["lr_lambda"])
    return arguments


class ScheduleDriver:
    """Steps a torch scheduler (and an optional warmup in front of it) at the right moments.

    Call `after_step()` after every optimizer step and `after_epoch(metrics)` after every
    evaluation. The warmup's own torch scheduler ramps the LR towards where the main schedule
    starts; when it ends, the main schedule's LR is restored exactly, so the main schedule runs
    as if the warmup had not been there (which lets ReduceLROnPlateau follow a warmup, something
    torch's SequentialLR cannot do).
    """

    def __init__(self, spec: ScheduleSpec | str, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
        if not isinstance(spec, ScheduleSpec):
            spec = parse_schedule(spec)  # text, or a UsageError saying what a spec is
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise UsageError(f"a schedule drives a torch.optim optimizer, not a {type(optimizer).__name__}")
        for name, value, least in (("epochs", epochs, 1), ("steps_per_epoch", steps_per_epoch, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UsageError(f"{name}={value!r} should be a whole number of at least {least}")
        self.spec = spec
        self.optimizer = optimizer
        self.warmup_steps = spec.warmup_steps(steps_per_epoch)
        self.step_count = 0
        self.steps_at_last_epoch_end = 0
        self.main = None
        if spec.class_name is not None:
            arguments = _fill_run_length(spec, spec.main_length(epochs, steps_per_epoch))
            cls = scheduler_classes()[spec.class_name]
            try:
                self.main = cls(optimizer, **arguments)
            except (ValueError, TypeError, KeyError) as error:
                raise UsageError(f"schedule {clip(repr(spec.text), 60)}: {clip(error, 160)}") from None
        self.main_lrs = [group["lr"] for group in optimizer.param_groups]
        self.warmup = None
        if spec.warmup:
            if spec.warmup.kind == "linear":
                self.warmup = lr_scheduler.LinearLR(
                    optimizer, start_factor=spec.warmup.start_factor, end_factor=1.0, total_iters=self.warmup_steps
                )
            else:
                self.warmup = lr_scheduler.ConstantLR(
                    optimizer, factor=spec.warmup.start_factor, total_iters=self.warmup_steps
                )

    def after_step(self) -> None:
        """Call once after each optimizer step."""
        self.step_count += 1
        if self.step_count <= self.warmup_steps:
            self.warmup.step()
            if self.step_count == self.warmup_steps:
                for group, lr in zip(self.optimizer.param_groups, self.main_lrs):
                    group["lr"] = lr
        elif self.main is not None and self.spec.per_step:
            self.main.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        """Call once after each epoch's evaluation, with that epoch's metrics."""
        epoch_began_after_warmup = self.steps_at_last_epoch_end >= self.warmup_steps
        self.steps_at_last_epoch_end = self.step_count
        if self.main is None or self.spec.per_step or not epoch_began_after_warmup:
            return
        if self.spec.is_plateau:
            if not isinstance(metrics, dict) or self.spec.monitor not in metrics:
                raise UsageError(f"schedule {self.spec.text!r} monitors {self.spec.monitor}; pass it to after_epoch, "
                                 f"as in after_epoch({{'{self.spec.monitor}': value}})")
            self.main.step(metrics[self.spec.monitor])
        else:
            self.main.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "steps_at_last_epoch_end": self.steps_at_last_epoch_end,
            "main_lrs": list(self.main_lrs),
            "main": self.main.state_dict() if self.main is not None else None,
            "warmup": self.warmup.state_dict() if self.warmup is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        self.steps_at_last_epoch_end = state["steps_at_last_epoch_end"]
        self.main_lrs = list(state["main_lrs"])
        if self.main is not None:
            self.main.load_state_dict(state["main"])
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])


def describe_arguments(class_name: str) -> str:
    """`name=default, ...` for what a schedule takes; a required argument shows `(required)`, a length
    lrlab fills in shows `<run length>`."""
    filled = RUN_LENGTH_ARGUMENTS.get(class_name, ("",))[0]
    shown = []
    for name, parameter in inspect.signature(scheduler_classes()[class_name]).parameters.items():
        if name in FILLED_BY_LRLAB or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name == filled:
            shown.append(f"{name}=<run length>")
        elif parameter.default is inspect.Parameter.empty:
            shown.append(f"{name} (required)")
        else:
            shown.append(f"{name}={parameter.default!r}".replace("'", ""))
    if class_name == "ReduceLROnPlateau":
        shown.append(f"monitor=val_loss (one of {', '.join(MONITORS)})")
    return ", ".join(shown) or "no arguments"


def describe_schedules() -> list[tuple[str, str, str, str]]:
    """(short name, class, stepping, arguments with defaults) for every schedule lrlab knows, for `lrlab schedules`."""
    rows = [(NO_SCHEDULE, "-", "fixed LR", "no arguments")]
    short_for = {v: k for k, v in SHORT_NAMES.items()}
    for class_name in sorted(scheduler_classes()):
        if class_name in COMBINATORS:
            continue
        stepping = "per batch" if class_name in PER_STEP_BY_DEFAULT else "per epoch"
        if class_name == "ReduceLROnPlateau":
            stepping += ", with monitor"
        rows.append((short_for.get(class_name, class_name.lower()), class_name, stepping, describe_arguments(class_name)))
    return rows
