"""Parse `name:key=value,...` specs and check their arguments against a real signature."""

from __future__ import annotations

import ast
import difflib
import inspect
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lrlab.errors import UsageError, clip

MAX_SPEC_LENGTH = 1000  # characters; a spec is a name and a few numbers


@dataclass(frozen=True)
class Spec:
    """A name and its keyword arguments, as written by the user."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


def suggestion(name: str, choices: Iterable[str]) -> str:
    """' (did you mean x?)' when a close match exists, else ''."""
    matches = difflib.get_close_matches(name, list(choices), n=2, cutoff=0.6)
    if not matches:
        matches = [c for c in choices if c.lower() == name.lower()]
    return f" (did you mean {' or '.join(repr(m) for m in matches)}?)" if matches else ""


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on `separator` outside brackets, so `milestones=[5,10]` stays whole."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                raise UsageError(f"unbalanced brackets in {clip(repr(text), 60)}")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise UsageError(f"unbalanced brackets in {clip(repr(text), 60)}")
    parts.append("".join(current))
    return parts


def parse_value(text: str) -> Any:
    """A Python literal where the text is one (0.5, 5, [5, 10], True), else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return text.strip()


def parse_arguments(text: str, context: str) -> dict[str, Any]:
    """`a=1,b=[2,3]` -> {'a': 1, 'b': [2, 3]}; `context` names the spec in errors."""
    arguments: dict[str, Any] = {}
    if not text.strip():
        return arguments
    for item in split_top_level(text):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or not value.strip():
            raise UsageError(f"{context}: expected key=value, got {clip(repr(item.strip()), 40)}")
        if key in arguments:
            raise UsageError(f"{context}: argument {key!r} is given twice")
        arguments[key] = parse_value(value)
    return arguments


def check_length(text: str, kind: str) -> None:
    """Refuse a spec longer than MAX_SPEC_LENGTH before any parsing work."""
    if len(text) > MAX_SPEC_LENGTH:
        raise UsageError(f"{kind} spec {clip(repr(text), 40)} is {len(text)} characters long; "
                         f"lrlab takes at most {MAX_SPEC_LENGTH}")


def parse_spec(text: str, kind: str) -> Spec:
    """`step:step_size=5,gamma=0.5` -> Spec('step', {...}); `kind` is 'schedule', 'optimizer', ..."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"empty {kind} spec; write it as name:key=value,...")
    check_length(text, kind)
    name, _, rest = text.strip().partition(":")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name.strip()):
        raise UsageError(f"{kind} spec {clip(repr(text), 60)} must start with a name, as in name:key=value")
    return Spec(name.strip(), parse_arguments(rest, f"{kind} {name.strip()!r}"))


def _accepts(annotation: str, value: Any) -> bool:
    """Whether `value` fits a torch-style string annotation such as 'float | list[float]'."""
    literal = re.search(r"Literal\[(.*?)\]", annotation)
    if literal:
        allowed = ast.literal_eval(f"[{literal.group(1)}]")
        return value in allowed
    words = set(re.findall(r"[A-Za-z_]+", annotation))
    if not words or words & {"Any", "object"}:
        return True
    if value is None:
        return "None" in words or "Optional" in words
    if isinstance(value, bool):
        return "bool" in words
    if isinstance(value, int):
        return bool(words & {"int", "float", "Tensor"})
    if isinstance(value, float):
        return bool(words & {"float", "Tensor"})
    if isinstance(value, (list, tuple)):
        return bool({w.lower() for w in words} & {"list", "tuple", "iterable", "sequence"})
    if isinstance(value, str):
        return bool(words & {"str", "Callable"})
    return False


def _describe(annotation: str) -> str:
    literal = re.search(r"Literal\[(.*?)\]", annotation)
    if literal:
        return "one of " + literal.group(1).replace("'", "")
    # A Tensor cannot be written in a spec, so it is left out of what the user is told to give.
    options = [o.strip() for o in annotation.split("|")]
    shown = [o for o in options if o and not re.fullmatch(r"(torch\.)?Tensor", o)]
    return " or ".join(shown) or annotation


def check_arguments(
    target: Callable,
    arguments: dict[str, Any],
    context: str,
    filled_by_lrlab: Iterable[str] = (),
    may_be_omitted: Iterable[str] = (),
) -> None:
    """Refuse names the real signature lacks and values its annotations rule out.

    `may_be_omitted` names required arguments lrlab fills in when they are not given (a length that
    defaults to the run's).
    """
    parameters = dict(inspect.signature(target).parameters)
    reserved = set(filled_by_lrlab)
    known = [n for n, p in parameters.items() if n not in reserved and p.kind is not p.VAR_KEYWORD]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())  # **kwargs: any keyword is the callable's to judge
    for key, value in arguments.items():
        if key in reserved:
            raise UsageError(f"{context}: {key!r} is set by lrlab and cannot be given")
        if key not in known and takes_any:
            continue
        if key not in parameters:
            raise UsageError(
                f"{context}: unknown argument {key!r}{suggestion(key, known)}; "
                f"it takes {', '.join(known) or 'no arguments'}"
            )
        annotation = parameters[key].annotation
        if annotation is inspect.Parameter.empty:
            default = parameters[key].default
            if default is inspect.Parameter.empty or default is None:
                continue
            annotation = type(default).__name__
        if not isinstance(annotation, str):
            annotation = annotation.__name__ if isinstance(annotation, type) else str(annotation)
        if not _accepts(annotation, value):
            raise UsageError(f"{context}: {key}={clip(repr(value), 40)} should be {_describe(annotation)}")
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(n, float) and not math.isfinite(n) for n in numbers):
            raise UsageError(f"{context}: {key}={clip(repr(value), 40)} should be a finite number")
    missing = [
        n
        for n, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and n not in reserved
        and n not in arguments
        and n not in set(may_be_omitted)
    ]
    if missing:
        raise UsageError(f"{context}: missing required argument {', '.join(missing)}")
