"""Models and data sets named by import path: `path/to/file.py:Name` or `package.module:Name`.

An import path is what a run directory records for the user's own model or data set, so that
`--resume`, `lrlab report` and worker processes on other machines can import it again. Each module
is imported once per process; a file's folder goes on `sys.path` so that its own imports work.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from lrlab.errors import UsageError

# A Python object handed to the API has no import path; the run records `python:<its name>`.
PYTHON_OBJECT = "python:"
# Prefixes of lrlab's own names (`torchvision:resnet18`, `folder:PATH`), never modules to import.
BUILT_IN_PREFIXES = ("torchvision", "folder", "python")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_imported: dict[str, Any] = {}


def is_import_path(text: str) -> bool:
    """Whether `text` names something to import (`file.py:Name`, `package.module:Name`)."""
    where, colon, _ = text.partition(":")
    return bool(colon) and where not in BUILT_IN_PREFIXES and (where.endswith(".py") or _MODULE.fullmatch(where) is not None)


def is_python_object(text: str) -> bool:
    return text.startswith(PYTHON_OBJECT)


def canonical(text: str) -> str:
    """The import path with a file made absolute, so it still names the file from another folder."""
    where, _, name = text.partition(":")
    if where.endswith(".py"):
        return f"{Path(where).expanduser().resolve()}:{name}"
    return text


def check_syntax(text: str, what: str) -> None:
    """Refuse an import path that cannot be right, without importing anything."""
    where, _, name = text.partition(":")
    if not _NAME.fullmatch(name):
        raise UsageError(f"{what} {text!r}: after the colon comes the name to import, as in nets.py:Net")
    if not where.endswith(".py") and not _MODULE.fullmatch(where):
        raise UsageError(f"{what} {text!r}: before the colon comes a file (nets.py) or a module (package.nets)")


def load(text: str, what: str) -> Any:
    """The object an import path names; one line (a UsageError) for each way this can fail."""
    check_syntax(text, what)
    where, _, name = text.partition(":")
    module = _import_file(Path(where).expanduser(), what) if where.endswith(".py") else _import_module(where, text, what)
    found: Any = module
    for part in name.split("."):
        if not hasattr(found, part):
            public = [n for n in vars(module) if not n.startswith("_")]
            from lrlab.specs import suggestion

            raise UsageError(f"{what} {text!r}: {where} has no {name!r}{suggestion(name, public)}")
        found = getattr(found, part)
    return found


def _import_file(path: Path, what: str) -> Any:
    path = path.resolve()
    key = str(path)
    if key in _imported:
        return _imported[key]
    if not path.is_file():
        raise UsageError(f"{what}: {path} does not exist; give the file that defines it, as in nets.py:Net")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the file can import its neighbours
    # The file's own name where that is free, so classes defined in it pickle and print as expected.
    name = path.stem if path.stem not in sys.modules and path.stem.isidentifier() else \
        f"lrlab_user_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):  # a script's argparse error would read as lrlab's own
            spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # the user's code: any failure is theirs to fix, in one line
        del sys.modules[name]
        raise UsageError(f"{what}: importing {path} failed: {_one_line(error)}{_exit_hint(error, printed)}") from None
    sys.stderr.write(printed.getvalue())  # what a module that imported fine printed is the user's to see
    _imported[key] = module
    return module


def _import_module(where: str, text: str, what: str) -> Any:
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            module = importlib.import_module(where)
    except ModuleNotFoundError as error:
        raise UsageError(f"{what} {text!r}: no module named {error.name!r} "
                         f"(is the package installed, or is its folder on PYTHONPATH?)") from None
    except (Exception, SystemExit) as error:
        raise UsageError(f"{what} {text!r}: importing {where} failed: {_one_line(error)}{_exit_hint(error, printed)}") from None
    sys.stderr.write(printed.getvalue())
    return module


def source_digest(text: str) -> str | None:
    """The sha256 of the file defining import path `text` (`nets.py:Net`, `package.module:Net`); None for
    any other name, or a file that cannot be found or read."""
    if not is_import_path(text):
        return None
    where = text.partition(":")[0]
    try:
        path = Path(where).expanduser() if where.endswith(".py") else Path(importlib.util.find_spec(where).origin)
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (Exception, SystemExit):  # noqa: BLE001 - no digest; the import itself reports what is wrong
        return None


def _exit_hint(error: BaseException, printed: io.StringIO) -> str:
    """For a module that exits when imported (a script's argparse reading lrlab's command line, say):
    the fix, and the last line it printed."""
    if not isinstance(error, SystemExit):
        return ""
    said = printed.getvalue().strip().splitlines()
    return (" (it called sys.exit when imported; put its script part under if __name__ == '__main__':"
            + (f"; it said: {said[-1][:120]}" if said else "") + ")")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def python_object_label(thing: Any) -> str:
    """What a run records for a model or data set given as a Python object (not importable)."""
    name = getattr(thing, "__qualname__", None) or type(thing).__name__
    return PYTHON_OBJECT + re.sub(r"[^A-Za-z0-9_.<>]", "_", name)
