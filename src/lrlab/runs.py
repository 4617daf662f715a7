"""The run directory: config, per-epoch and per-step metrics, status, atomic checkpoints."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import socket
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy
import torch

from lrlab.errors import UsageError, clip

# val_loss and val_acc stay empty in a run without a validation split.
METRIC_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds",
                  "elapsed_seconds")
STEP_COLUMNS = ("step", "epoch", "lr", "loss")
# The metrics every row has; the others (val_*) may be empty, or absent from an older run's header.
REQUIRED_METRIC_COLUMNS = tuple(c for c in METRIC_COLUMNS if not c.startswith("val_"))
# paused: stopped at a study's rung, to be resumed or pruned; pruned: a study stopped it there for good.
WRITTEN_STATES = ("running", "finished", "diverged", "failed", "interrupted", "paused", "pruned")
# What readers say of a run whose status.json is absent or damaged (unknown), or that has no folder yet (missing).
STATES = (*WRITTEN_STATES, "unknown", "missing")
LOCK_NAME = "run.lock"
# The names a run folder may hold before lrlab starts a run in it: what a refused or killed attempt
# leaves (its lock, lr=auto's range test, half-written temporaries). Anything else is the user's.
LEFT_BY_AN_EARLIER_ATTEMPT = (LOCK_NAME, "lr_find.json", "lr_find.csv", "lr_find.png")
# Lock files this process holds, with how many holders: one process may assemble several Trainers
# for one folder (lr=auto, benchmarks), and only another process is refused.
_HELD: dict[str, int] = {}


class RunInUse(UsageError):
    """Another live process holds the folder's lock; nothing of its run may be written."""


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over `path`."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp makes it 0600; a run's files are as readable as the user's others
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class RunDirectory:
    """One run's folder on disk. Writers append; nothing is rewritten except atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.csv"
        self.steps_path = self.path / "steps.csv"
        self.status_path = self.path / "status.json"
        self.best_path = self.path / "best.pt"
        self.last_path = self.path / "last.pt"
        self.correctness_path = self.path / "correct.npz"
        self.log_path = self.path / "log.txt"  # plain text, one line per epoch and per change of state

    @contextlib.contextmanager
    def locked(self, take_over: bool = False) -> Iterator[None]:
        """Hold `run.lock` (our pid and host) while a process writes here; a dead owner's lock is taken over.

        `take_over` is for an executor retrying a run whose worker it knows is dead, possibly on
        another machine, where the pid cannot be checked.
        """
        release = self.acquire_lock(take_over)
        try:
            yield
        finally:
            release()

    def acquire_lock(self, take_over: bool = False) -> Callable[[], None]:
        """Take `run.lock` (creating the folder if need be); returns the function that gives it back.

        Giving it back removes the folders the lock created when nothing else was written in them,
        so a run refused before training leaves no empty folder behind.
        """
        lock = self.path / LOCK_NAME
        key = os.path.realpath(lock)
        if key in _HELD:
            _HELD[key] += 1
            return _once(lambda: self._let_go(key, lock, []))
        created = self._make_folder()
        while True:
            try:
                handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
                break
            except FileExistsError:
                if lock.is_symlink() or not lock.is_file():
                    _remove_empty(created)
                    raise UsageError(f"{lock} is not lrlab's lock file (it is a folder or a link); "
                                     f"move it away, then run again") from None
                pid, host = _lock_owner(lock)
                owner = f"process {pid}" + (f" on {host}" if host != socket.gethostname() else "")
                if not take_over and pid is not None:
                    if host != socket.gethostname():
                        raise RunInUse(f"{self.path} is in use by {owner}; if that run is gone, delete {lock}") from None
                    if _process_alive(pid):
                        raise RunInUse(f"{self.path} is in use by {owner}; wait for it to end or stop it") from None
                print(f"lrlab: taking over the stale lock of {self.path} ({owner} is gone)", file=sys.stderr)
                lock.unlink(missing_ok=True)
            except OSError as error:
                _remove_empty(created)
                raise UsageError(f"cannot write to {self.path}: {error.strerror}; choose another --out") from None
        with os.fdopen(handle, "w") as out:
            out.write(f"{os.getpid()} {socket.gethostname()}\n")
        _HELD[key] = 1
        return _once(lambda: self._let_go(key, lock, created))

    def _make_folder(self) -> list[Path]:
        """Create the folder and its missing parents; returns those created, deepest first."""
        missing = []
        for folder in (self.path, *self.path.parents):
            if folder.exists() or folder.is_symlink():
                break
            missing.append(folder)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            _remove_empty(missing)
            raise UsageError(f"cannot write to {self.path}: {error.strerror}; choose another --out") from None
        return missing

    @staticmethod
    def _let_go(key: str, lock: Path, created: list[Path]) -> None:
        _HELD[key] -= 1
        if _HELD[key] > 0:
            return
        del _HELD[key]
        lock.unlink(missing_ok=True)
        _remove_empty(created)

    def foreign_files(self) -> list[str]:
        """Names in the folder that no lrlab run put there (checked before a fresh run starts)."""
        if not self.path.is_dir():
            return []
        return sorted(entry.name for entry in self.path.iterdir()
                      if entry.name not in LEFT_BY_AN_EARLIER_ATTEMPT and not _is_partial_write(entry.name))

    def holds_run(self) -> bool:
        return self.config_path.exists()

    def check_writable(self) -> None:
        """Create the folder and prove a file can be written there, before any work starts."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as error:
            raise UsageError(f"cannot write to {self.path}: {error.strerror}; choose another --out") from None

    def clear(self) -> None:
        """Remove the files a run writes (for --overwrite); anything else in the folder stays."""
        for path in (self.config_path, self.metrics_path, self.steps_path, self.status_path, self.best_path, self.last_path,
                     self.correctness_path, self.log_path):
            path.unlink(missing_ok=True)
        for events in self.path.glob("events.out.tfevents.*"):
            events.unlink()

    def remove_partial_writes(self) -> None:
        """Delete temporary files a killed process left half-written; the files they were replacing are intact."""
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)

    def write_text(self, path: Path, text: str) -> None:
        write_atomically(path, lambda out: out.write(text.encode()))

    def write_status(self, state: str, **details: Any) -> None:
        assert state in WRITTEN_STATES
        record = {"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **details}
        self.write_text(self.status_path, json.dumps(record, indent=2) + "\n")
        if state != "running":  # a running run's epochs have lines of their own
            reason = f": {details['reason']}" if details.get("reason") else ""
            self.append_log(f"{state} at epoch {details.get('epoch', '?')}{reason}")

    def append_log(self, line: str) -> None:
        """Add a time-stamped line to log.txt, the run's plain-text record (what a terminal would have shown)."""
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")

    def add_to_status(self, **details: Any) -> None:
        """Record more about how the run went without changing its state."""
        record = {**self.read_status(), **details}
        self.write_text(self.status_path, json.dumps(record, indent=2) + "\n")

    def read_status(self) -> dict[str, Any]:
        """status.json as written; {'state': 'unknown'} before the first one. A damaged one is refused."""
        try:
            text = self.status_path.read_bytes()
        except FileNotFoundError:
            return {"state": "unknown"}
        except OSError as error:
            raise UsageError(f"cannot read {self.status_path}: {error.strerror}") from None
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("state"), str):
            raise UsageError(f"{self.status_path} is damaged (not a JSON object with a state); delete it and run "
                             f"again with --resume: the run continues from last.pt") from None
        return record

    def _append(self, path: Path, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> None:
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            if new:
                writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())

    def append_metrics(self, row: dict[str, Any]) -> None:
        self._append(self.metrics_path, METRIC_COLUMNS, [row])

    def append_steps(self, rows: list[dict[str, Any]]) -> None:
        """steps.csv gains a momentum column when the optimizer has one (SGD's momentum, Adam's first beta);
        rows appended to a file begun without it (an older run resumed) keep its header."""
        columns = STEP_COLUMNS + (("momentum",) if rows and "momentum" in rows[0] else ())
        written = self.step_columns()
        if written and tuple(written) != columns:
            rows = [{name: row.get(name, "") for name in written} for row in rows]
            columns = tuple(written)
        self._append(self.steps_path, columns, rows)

    def step_columns(self) -> list[str]:
        """The header of steps.csv as written; empty if none."""
        return _header(self.steps_path)

    def metric_columns(self) -> list[str]:
        """The header of metrics.csv as written (older runs lack the val columns); empty if none."""
        return _header(self.metrics_path)

    def read_metrics(self) -> list[dict[str, float]]:
        return read_rows(self.metrics_path, REQUIRED_METRIC_COLUMNS)

    def read_steps(self) -> list[dict[str, float]]:
        return read_rows(self.steps_path, STEP_COLUMNS)

    def truncate_to_epoch(self, epoch: int) -> None:
        """Drop rows after `epoch` (a run stopped mid-epoch may have written some) before resuming."""
        for path, columns, required in ((self.metrics_path, METRIC_COLUMNS, REQUIRED_METRIC_COLUMNS),
                                        (self.steps_path, STEP_COLUMNS, STEP_COLUMNS)):
            rows = read_rows(path, required)
            kept = [row for row in rows if row["epoch"] <= epoch]
            if not kept:  # the next rows write the header, with the columns they have (steps.csv's momentum)
                self.write_text(path, "")
                continue
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=[*columns, *(k for k in (rows[0] if rows else {}) if k not in columns)])
            writer.writeheader()
            writer.writerows({k: _plain(v) for k, v in row.items()} for row in kept)
            self.write_text(path, text.getvalue())

    def write_correctness(self, final_epoch: int, best_epoch: int, **correct: torch.Tensor) -> None:
        """correct.npz: for `final_<split>` and `best_<split>`, which images (in the split's fixed order)
        that epoch's model got right, one bit per image."""
        arrays = {"final_epoch": numpy.array(final_epoch), "best_epoch": numpy.array(best_epoch)}
        for name, right in correct.items():
            arrays[name] = numpy.packbits(right.numpy())
            arrays[f"{name}_count"] = numpy.array(len(right))
        write_atomically(self.correctness_path, lambda out: numpy.savez_compressed(out, **arrays))

    def read_correctness(self) -> dict[str, Any]:
        """What correct.npz holds: boolean tensors per `final_<split>` / `best_<split>`, and the two epochs;
        empty when the run has none (not started, or trained under torchrun)."""
        try:
            with numpy.load(self.correctness_path) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            arrays = {}
        try:
            record: dict[str, Any] = {"final_epoch": int(arrays.pop("final_epoch")), "best_epoch": int(arrays.pop("best_epoch"))}
            for name in [n for n in arrays if not n.endswith("_count")]:
                count = int(arrays[f"{name}_count"])
                record[name] = torch.from_numpy(numpy.unpackbits(arrays[name])[:count].astype(bool))
        except (KeyError, ValueError, TypeError):
            raise UsageError(f"{self.correctness_path} is damaged (not the arrays lrlab writes); restore it, "
                             "or start the run afresh with --overwrite") from None
        return record

    def save_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        write_atomically(path, lambda out: torch.save(state, out))

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Load with weights_only=True: a checkpoint can never run code."""
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UsageError(f"{path} does not exist; nothing to resume (drop --resume to start afresh)") from None
        except Exception as error:  # noqa: BLE001 - torch raises many types for damaged or hostile files
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"{path} cannot be loaded safely ({clip(first_line, 160)}); it is damaged or not an lrlab checkpoint") from None


def _once(function: Callable[[], None]) -> Callable[[], None]:
    done = []

    def call() -> None:
        if not done:
            done.append(True)
            function()

    return call


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds while empty


def _is_partial_write(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _lock_owner(lock: Path) -> tuple[int | None, str]:
    """The pid and host a lock names; an unreadable lock names nobody (and is stale)."""
    try:
        fields = lock.read_text().split()
        return int(fields[0]), fields[1] if len(fields) > 1 else socket.gethostname()
    except (OSError, ValueError, IndexError):
        return None, socket.gethostname()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else value


def _header(path: Path) -> list[str]:
    """The first row of a CSV file; empty when there is none."""
    try:
        with open(path, newline="") as handle:
            return next(csv.reader(handle), [])
    except OSError:
        return []


def read_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, float]]:
    """The rows of a run's CSV file, each value a number; a last row cut off mid-write is dropped
    (its epoch was not finished, and a resume redoes it). Anything else amiss is refused in one line."""
    fix = "restore it, or start the run afresh with --overwrite"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text, so not as lrlab wrote it; {fix}") from None
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as error:
        raise UsageError(f"{path} is not valid CSV ({error}); {fix}") from None
    if not rows:
        return []
    header = rows[0]
    missing = [c for c in columns if c not in header]
    if missing or len(set(header)) != len(header):
        raise UsageError(f"{path} does not have lrlab's header (it lacks {', '.join(missing) or 'unique names'}); {fix}")
    body = rows[1:]
    if body and (not text.endswith("\n") or len(body[-1]) != len(header)
                 or any(value == "" for name, value in zip(header, body[-1]) if name in columns)):
        body = body[:-1]
    parsed = []
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UsageError(f"{path} line {line} has {len(row)} values for {len(header)} columns; {fix}")
        values = {}
        for name, value in zip(header, row):
            number = _number(value)
            if number is None and (name in columns or value.strip()):
                raise UsageError(f"{path} line {line}: {name}={clip(value, 40)!r} is not a number; {fix}")
            values[name] = math.nan if number is None else number
        parsed.append(values)
    return parsed


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


class FollowerRun(RunDirectory):
    """The run directory as a torchrun rank other than 0 sees it: read for resuming, never written."""

    @contextlib.contextmanager
    def locked(self, take_over: bool = False) -> Iterator[None]:
        yield

    def acquire_lock(self, take_over: bool = False) -> Callable[[], None]:
        return lambda: None

    def check_writable(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def remove_partial_writes(self) -> None:
        pass

    def write_text(self, path: Path, text: str) -> None:
        pass

    def _append(self, path: Path, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> None:
        pass

    def append_log(self, line: str) -> None:
        pass

    def truncate_to_epoch(self, epoch: int) -> None:
        pass

    def save_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        pass
