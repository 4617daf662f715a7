"""What a study tunes, apart from running it: search ranges and the study's record.

A range is written `low:high` (linear) or `low:high:log`: `--search lr=0.005:0.5:log` for the LR,
and inside a schedule spec for the schedule's own arguments, `step:step_size=2:8,gamma=0.1:0.7`
(whole-number ends give whole-number values). The study (study.py) samples the ranges with Optuna
and writes study.json; the report reads study.json back without importing Optuna or the engine.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lrlab.errors import UsageError, clip

STUDY_RECORD = "study.json"
TUNING_FOLDER = "tuning"  # tuning/<arm>/trial-<n>: each trial an ordinary run folder
SAMPLERS = ("qmc", "tpe")
PRUNERS = ("sha", "hyperband", "none")
DEFAULT_TRIALS = 8
AUTO_LR_SPAN = math.sqrt(10)  # lr=auto searches a decade centred on the range test's pick
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"(?P<low>{_NUMBER}):(?P<high>{_NUMBER})(?::(?P<scale>log|linear))?")
# A range inside a spec: an argument whose value is low:high[:scale], ended by , ) @ or the end.
_ARGUMENT_RANGE = re.compile(rf"(?<=[:,(])\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<range>{_RANGE.pattern})\s*(?=[,)@]|$)")


@dataclass(frozen=True)
class Range:
    """One searched value: its name, ends, and whether it is searched on a log scale or in whole numbers."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def describe(self) -> str:
        return f"{self.name}={self.low:g}:{self.high:g}" + (":log" if self.log else "")


def parse_range(name: str, text: str, context: str) -> Range:
    """`low:high` or `low:high:log` as a Range, refused when empty, reversed or not positive on a log scale."""
    match = _RANGE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{context}: {name}={clip(text, 40)} is not a range; write low:high or low:high:log, "
                         f"e.g. lr=0.005:0.5:log")
    low_text, high_text = match.group("low"), match.group("high")
    integer = all(re.fullmatch(r"[-+]?\d+", end) for end in (low_text, high_text))
    low, high = (int(low_text), int(high_text)) if integer else (float(low_text), float(high_text))
    log = match.group("scale") == "log"
    if not all(math.isfinite(end) for end in (low, high)):
        raise UsageError(f"{context}: {name}={text} has an end that is not a finite number")
    if not low < high:
        raise UsageError(f"{context}: {name}={text} is {'empty' if low == high else 'reversed'}; give low < high, "
                         f"e.g. {name}={min(low, high)}:{max(low, high) if low != high else high * 10 or 1}")
    if log and low <= 0:
        raise UsageError(f"{context}: {name}={text} is on a log scale, so both ends must be positive")
    return Range(name, low, high, log, integer)


def parse_lr_search(texts: list[str] | None) -> Range | str | None:
    """`--search lr=LOW:HIGH[:log]` (a Range), `--search lr=auto` ("auto"), or None when not given."""
    if not texts:
        return None
    found: Range | str | None = None
    for text in texts:
        name, equals, value = str(text).partition("=")
        name = name.strip()
        if not equals:
            raise UsageError(f"--search {clip(text, 40)}: write name=low:high[:log], e.g. lr=0.005:0.5:log")
        if name != "lr":
            raise UsageError(f"--search {clip(text, 40)}: --search takes lr; search a schedule's own arguments in its "
                             f"spec instead, e.g. step:step_size=2:8,gamma=0.1:0.7")
        if found is not None:
            raise UsageError("--search names lr twice; give it once")
        found = "auto" if value.strip() == "auto" else parse_range("lr", value, "--search")
    if isinstance(found, Range) and found.low <= 0:
        raise UsageError(f"--search {found.describe()}: an LR must be positive")
    return found


def lr_range_around(pick: float) -> Range:
    """The LR range lr=auto searches: a decade on a log scale, centred on the range test's pick."""
    return Range("lr", pick / AUTO_LR_SPAN, pick * AUTO_LR_SPAN, log=True)


@dataclass(frozen=True)
class RangedSchedule:
    """A schedule spec with searched arguments: the spec with each range as a `{name}` field, and the ranges."""

    spec: str  # as the user wrote it
    template: str
    ranges: tuple[Range, ...]

    def at(self, values: dict[str, Any]) -> str:
        """The plain spec with each searched argument set to `values[name]`."""
        return self.template.format(**{r.name: _literal(values[r.name]) for r in self.ranges})

    def at_ends(self) -> list[str]:
        return [self.at({r.name: r.low for r in self.ranges}), self.at({r.name: r.high for r in self.ranges})]

    def with_range(self, replacement: Range) -> str:
        """The spec as written, with `replacement` in place of the range of the same name."""
        return self.template.format(**{r.name: range_text(replacement if r.name == replacement.name else r)
                                       for r in self.ranges})


def find_ranges(spec: str, reserved: tuple[str, ...] = ()) -> RangedSchedule:
    """The ranges in a schedule spec and the spec around them, read without checking the spec against torch
    (the report reads a study's specs back with it). `reserved` arguments are set by the study itself
    (the peak LR of one-cycle) and may not be ranged."""
    if not isinstance(spec, str):
        raise UsageError(f"a schedule should be a spec such as step:step_size=5, got {clip(repr(spec), 40)}")
    ranges: list[Range] = []
    pieces: list[str] = []
    end = 0
    for match in _ARGUMENT_RANGE.finditer(spec):
        name = match.group("name")
        if any(r.name == name for r in ranges):
            raise UsageError(f"schedule {clip(repr(spec), 60)}: {name} is ranged twice")
        if name in reserved:
            raise UsageError(f"schedule {clip(repr(spec), 60)}: {name} follows the searched LR in a study; "
                             f"search it with --search lr=LOW:HIGH instead")
        ranges.append(parse_range(name, match.group("range"), f"schedule {clip(repr(spec), 60)}"))
        pieces += [_escape(spec[end:match.start()]), f"{name}={{{name}}}"]
        end = match.end()
    pieces.append(_escape(spec[end:]))
    return RangedSchedule(spec, "".join(pieces), tuple(ranges))


def parse_ranged_schedule(spec: str, reserved: tuple[str, ...] = ()) -> RangedSchedule:
    """Find the ranges in a schedule spec (`find_ranges`) and check the spec at both ends of every range as
    any spec is checked (argument names against the torch class, torch's value rules)."""
    from lrlab.schedules import parse_schedule

    ranged = find_ranges(spec, reserved)
    for plain in ranged.at_ends() if ranged.ranges else [spec]:
        parse_schedule(plain)
    return ranged


# A pick within the outer 5% of its range, on the range's own scale, may have wanted to go further.
EDGE_FRACTION = 0.05
# How far a range is widened past an end its pick sat at: a quarter of its width, on its own scale.
WIDEN_FRACTION = 0.25


def end_reached(value: float, searched: Range) -> str | None:
    """"low" or "high" when `value` lies within the outer EDGE_FRACTION of `searched` on its scale (log or
    linear), else None."""
    if searched.log:
        position = math.log(value / searched.low) / math.log(searched.high / searched.low)
    else:
        position = (value - searched.low) / (searched.high - searched.low)
    if position <= EDGE_FRACTION:
        return "low"
    if position >= 1 - EDGE_FRACTION:
        return "high"
    return None


def widened(searched: Range, end: str) -> Range | None:
    """`searched` with its `end` ("low" or "high") moved out by WIDEN_FRACTION of its width, or None where
    that end cannot move. A range of positive values stays positive (an LR, a step size) and a schedule's
    argument ranged inside [0, 1] stays inside it (a decay factor, a fraction of the run): past those, a
    spec is not a schedule. The LR, though searched inside [0, 1] too, is no fraction and may pass 1."""
    edge = searched.low if end == "low" else searched.high
    outward = -1 if end == "low" else 1
    if searched.log:
        moved = edge * (searched.high / searched.low) ** (outward * WIDEN_FRACTION)
    else:
        moved = edge + outward * (searched.high - searched.low) * WIDEN_FRACTION
    if searched.integer:
        moved = edge + outward * max(1, abs(round(moved - edge)))  # whole numbers move by at least one
    else:
        moved = _typed_outward(moved, edge, outward)
    if end == "low" and searched.low > 0 and moved <= 0:
        moved = 1 if searched.integer else searched.low / 2
    if end == "low" and searched.low >= 0:
        moved = max(moved, 0)
    if end == "high" and searched.name != "lr" and 0 <= searched.low and searched.high <= 1 and not searched.integer:
        moved = min(moved, 1.0)
    if moved == edge:
        return None
    low, high = (moved, searched.high) if end == "low" else (searched.low, moved)
    return Range(searched.name, low, high, searched.log, searched.integer)


def _typed_outward(value: float, edge: float, outward: int) -> float:
    """`value` with the fewest significant digits (two or more) that still lies beyond `edge`: a number a person types."""
    for digits in (2, 3, 4):
        rounded = float(f"{value:.{digits}g}")
        if (rounded - edge) * outward > 0:
            return rounded
    return value


def range_text(searched: Range) -> str:
    """`low:high[:log]` as a person writes it back; a range of decimals keeps a decimal point, so that
    reading it again does not make it a range of whole numbers."""
    def end_text(value: float) -> str:
        if searched.integer:
            return str(int(value))
        text = f"{float(value):g}"
        return text if any(mark in text for mark in ".en") else f"{text}.0"

    return f"{end_text(searched.low)}:{end_text(searched.high)}" + (":log" if searched.log else "")


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _literal(value: Any) -> str:
    return str(int(value)) if isinstance(value, int) else repr(float(value))


@dataclass
class TrialRecord:
    """One tuning trial as the report shows it: what it tried, how far it went, and how it ended."""

    number: int
    seed: int
    lr: float
    params: dict[str, Any]  # the schedule's searched arguments
    state: str  # complete | pruned | failed | running
    epochs: int  # trained
    val_acc: list[float]  # at each trained epoch
    path: str  # relative to the comparison folder

    @property
    def final_val_acc(self) -> float:
        return self.val_acc[-1] if self.val_acc else math.nan


def write_record(out: Path, record: dict[str, Any]) -> None:
    """study.json, with each arm's trials as plain dictionaries."""
    from lrlab.runs import RunDirectory

    plain = json.loads(json.dumps(record, default=lambda value: asdict(value)))
    RunDirectory(out).write_text(Path(out) / STUDY_RECORD, json.dumps(plain, indent=2) + "\n")


def read_record(out: Path) -> dict[str, Any] | None:
    """study.json of the comparison in `out` (None when it was not a study), trials as TrialRecords."""
    path = Path(out) / STUDY_RECORD
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise UsageError(f"{path} is damaged or not lrlab's; run the same lrlab compare again to rewrite it") from None
    try:
        for arm in record["arms"].values():
            arm["trials"] = [TrialRecord(**trial) for trial in arm["trials"]]
    except (KeyError, TypeError, AttributeError):
        raise UsageError(f"{path} is damaged or not lrlab's; run the same lrlab compare again to rewrite it") from None
    return record
