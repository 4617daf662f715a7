"""Where the runs of a comparison train: in this process, in a pool of local processes, or as Ray tasks.

Executors schedule passes: a pass is one run, or a group of runs that share their batches and
train together (`group.train_group`). Every pass trains ordinary run directories, so `lrlab report`
cannot tell them apart, and a worker that dies (killed, out of memory, node lost) is started again:
the new attempt resumes each run of its pass from that run's last checkpoint.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from lrlab.config import RunConfig
from lrlab.errors import UsageError, clip
from lrlab.runs import RunDirectory, RunInUse

BACKENDS = ("local", "ray")
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class GridTask:
    """One run of a comparison: a schedule label, a seed, and the run's full config."""

    label: str
    seed: int
    config: RunConfig


@dataclass
class GridOutcome:
    label: str
    seed: int
    state: str
    reason: str = ""
    retries: int = 0


def train_pass(configs: list[RunConfig], threads: int | None = None, take_over_lock: bool = False,
               data: Any = None, on_epoch: list[Callable | None] | None = None, builder: Callable | None = None,
               where: str = "") -> list[tuple[str, str]]:
    """Train (or resume, from what an earlier attempt left) one pass: one run alone, or a group of runs
    in one pass; each run's final state and reason.

    `builder` is a model given as a Python object (in process only); `where` starts a failure's
    reason, to say which machine it happened on.
    """
    from lrlab.engine import ENDED, train

    if threads:
        torch.set_num_threads(threads)
    runs = [RunDirectory(config.out) for config in configs]
    on_epoch = on_epoch or [None] * len(configs)
    try:
        if len(configs) == 1:
            train(configs[0], resume=runs[0].holds_run(), data=data, builder=builder, on_epoch=on_epoch[0],
                  take_over_lock=take_over_lock)
        else:
            from lrlab.group import train_group

            train_group(configs, data, on_epoch, take_over_lock, builder=builder)
    except RunInUse as error:
        return [("failed", f"{where}{error}") for _ in runs]  # another process's run: nothing of it is ours to mark
    except UsageError as error:
        reason = f"{where}{error}"
        for run in runs:
            if run.path.exists() and run.read_status().get("state") not in ENDED:  # a refusal never touches an ended run
                run.write_status("failed", reason=reason)
        return [("failed", reason) for _ in runs]
    return [(status.get("state", "unknown"), status.get("reason", "")) for status in (run.read_status() for run in runs)]


class GridProgress:
    """One progress bar over every epoch of the grid, read from the run directories themselves,
    so it works the same whether the runs train here, in other processes or on other machines."""

    def __init__(self, tasks: list[GridTask], epochs: int, show: bool):
        self.runs = [RunDirectory(task.config.out) for task in tasks]
        self.epochs = epochs
        self.bar = tqdm(total=len(tasks) * epochs, initial=self.epochs_done(), desc="comparison", unit="epoch",
                        disable=not show or not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True)

    def epochs_done(self) -> int:
        done = 0
        for run in self.runs:
            try:
                rows = run.metrics_path.read_bytes().count(b"\n") - 1
            except OSError:
                continue
            ended_early = rows < self.epochs and run.read_status().get("state") in ("diverged", "failed", "pruned")
            done += self.epochs if ended_early else min(max(rows, 0), self.epochs)
        return done

    def refresh(self, note: str = "") -> None:
        self.bar.n = self.epochs_done()
        if note:
            self.bar.set_postfix_str(note, refresh=False)
        self.bar.refresh()

    def say(self, line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.refresh()
        self.bar.close()


class InProcess:
    """One run after another in this process: the default, and the only one that shares loaded data
    and can train a model given as a Python object (`builder`)."""

    def __init__(self, threads: int | None = None, builder: Callable | None = None):
        self.threads, self.builder = threads, builder

    @contextmanager
    def session(self, out: Path) -> Iterator[None]:
        saved = torch.get_num_threads()
        try:
            yield
        finally:
            torch.set_num_threads(saved)

    def run(self, passes: list[list[GridTask]], progress: GridProgress, data: Any = None) -> list[GridOutcome]:
        outcomes = []
        for index, tasks in enumerate(passes, start=1):
            where = f"pass {index}/{len(passes)}: " + (f"{tasks[0].label} seed {tasks[0].seed}" if len(tasks) == 1 else
                                                       f"{len(tasks)} runs of seed {tasks[0].seed}")

            def on_epoch(epoch: int, metrics: dict[str, float], where: str = where) -> None:
                progress.refresh(f"{where}, epoch {epoch}, test acc {metrics['test_acc']:.2%}")

            progress.refresh(where)
            ends = train_pass([task.config for task in tasks], self.threads, data=data, on_epoch=[on_epoch] * len(tasks),
                              builder=self.builder)
            outcomes += [GridOutcome(task.label, task.seed, state, reason) for task, (state, reason) in zip(tasks, ends)]
        return outcomes


def _train_in_worker(configs: list[RunConfig], threads: int, take_over_lock: bool) -> None:
    """A pool worker's whole life: SIGTERM is treated like Ctrl-C, so its runs are marked interrupted."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        train_pass(configs, threads, take_over_lock)
    except KeyboardInterrupt:
        sys.exit(130)


class LocalProcesses:
    """Up to `workers` passes at once, each in its own process with `threads` torch threads."""

    def __init__(self, workers: int, threads: int, max_retries: int):
        self.workers, self.threads, self.max_retries = workers, threads, max_retries

    @contextmanager
    def session(self, out: Path) -> Iterator[None]:
        yield

    def run(self, passes: list[list[GridTask]], progress: GridProgress, data: Any = None) -> list[GridOutcome]:
        # spawn, not fork: a forked child would inherit torch's thread pools and any locks they hold.
        context = multiprocessing.get_context("spawn")
        pending: deque[tuple[list[GridTask], int]] = deque((tasks, 0) for tasks in passes)
        running: dict[Any, tuple[Any, list[GridTask], int]] = {}
        outcomes: dict[tuple[str, int], GridOutcome] = {}
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    tasks, attempt = pending.popleft()
                    process = context.Process(target=_train_in_worker, args=([t.config for t in tasks], self.threads, attempt > 0),
                                              name=f"lrlab {tasks[0].label} seed {tasks[0].seed}" + (f" +{len(tasks) - 1}" if len(tasks) > 1 else ""))
                    process.start()
                    running[process.sentinel] = (process, tasks, attempt)
                for sentinel in multiprocessing.connection.wait(list(running), timeout=POLL_SECONDS):
                    process, tasks, attempt = running.pop(sentinel)
                    process.join()
                    statuses = [RunDirectory(task.config.out).read_status() for task in tasks]
                    # A signal, or an exit that left a run marked running, means the worker died
                    # under the runs rather than the runs ending; only those runs get another attempt.
                    unended = [task for task, status in zip(tasks, statuses) if status.get("state") in ("running", "unknown", "interrupted")]
                    for task, status in zip(tasks, statuses):
                        if task not in unended:
                            outcomes[task.label, task.seed] = GridOutcome(task.label, task.seed, status["state"],
                                                                          status.get("reason", ""), attempt)
                    if unended:
                        why = f"worker exited with {_exit_description(process.exitcode)}"
                        given_up = _retry_or_give_up(unended, attempt, why, self.max_retries, progress)
                        if given_up is None:
                            pending.append((unended, attempt + 1))
                        else:
                            outcomes.update({(o.label, o.seed): o for o in given_up})
                progress.refresh(f"{len(running)} running, {len(pending)} waiting")
        finally:
            # After Ctrl-C the workers, in our process group, got it too and are saving their runs
            # as interrupted; give them the time to, then stop whatever is left.
            for process, _, _ in running.values():
                process.join(timeout=15)
                if process.is_alive():
                    process.terminate()
                    process.join()
        return [outcomes[task.label, task.seed] for tasks in passes for task in tasks]


def _exit_description(exitcode: int) -> str:
    if exitcode < 0:
        return f"signal {signal.Signals(-exitcode).name}"
    return f"status {exitcode}"


def _retry_or_give_up(tasks: list[GridTask], attempt: int, why: str, max_retries: int,
                      progress: GridProgress) -> list[GridOutcome] | None:
    """After a worker died under `tasks`: None when they should be started again, else their failed outcomes."""
    if attempt < max_retries:
        for task in tasks:
            progress.say(f"lrlab: {task.label} seed {task.seed}: {why}; retrying from its last checkpoint "
                         f"(attempt {attempt + 2} of {max_retries + 1})")
        return None
    reason = f"{why}, and no retries were left (--max-retries {max_retries})"
    for task in tasks:
        RunDirectory(task.config.out).write_status("failed", reason=reason)
    return [GridOutcome(task.label, task.seed, "failed", reason, attempt) for task in tasks]


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--backend ray needs Ray, which is not installed: pip install 'lrlab[ray]'") from None
    return ray


def _unreachable(address: str | None, seconds: float = 10) -> str | None:
    """Why nothing answers at a Ray address written HOST:PORT (or ray://HOST:PORT), within `seconds`;
    None when something does, or for any other address (`auto`, none)."""
    host, colon, port = (address or "").removeprefix("ray://").rpartition(":")
    if not (host and colon and port.isdigit()):
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


class RayTasks:
    """Each run a Ray task with its own CPU (and GPU) request; joins `address`, or starts a local Ray."""

    def __init__(self, address: str | None, cpus_per_run: float, gpus_per_run: float, max_retries: int,
                 storage_given: bool):
        self.ray = import_ray()
        self.address, self.cpus, self.gpus = address, cpus_per_run, gpus_per_run
        self.max_retries, self.storage_given = max_retries, storage_given

    @contextmanager
    def session(self, out: Path) -> Iterator[None]:
        ray = self.ray
        started_here = not ray.is_initialized()
        if started_here:
            unreachable = _unreachable(self.address)
            if unreachable:  # ray.init would retry for minutes
                raise UsageError(f"cannot join the Ray cluster at {self.address} ({unreachable}); "
                                 f"start it with `ray start --head` or drop --ray-address")
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level="WARNING")
            except ConnectionError as error:
                raise UsageError(f"cannot join the Ray cluster at {self.address} ({str(error).split('.')[0]}); "
                                 f"start it with `ray start --head` or drop --ray-address") from None
        try:
            self.check_storage(out)
            yield
        finally:
            if started_here:
                ray.shutdown()

    def check_storage(self, out: Path) -> None:
        """On a cluster, the run directories must be on storage every node sees; prove it with a token."""
        nodes = [node for node in self.ray.nodes() if node["Alive"]]
        if len(nodes) < 2:
            return
        refusal = shared_storage_refusal(out, self.storage_given, len(nodes))
        if refusal:
            raise UsageError(refusal)
        token = secrets.token_hex(8)
        marker = Path(out).resolve() / f".lrlab-storage-check-{token}"
        marker.write_text(token)
        try:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            probe = self.ray.remote(num_cpus=0)(_reads_token)
            seen = self.ray.get([
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(marker), token)
                for node in nodes
            ])
        finally:
            marker.unlink(missing_ok=True)
        blind = [node.get("NodeManagerAddress", node["NodeID"]) for node, ok in zip(nodes, seen) if not ok]
        if blind:
            raise UsageError(f"{out} is not visible from node(s) {', '.join(blind)}; put the runs on storage every node "
                             f"mounts (NFS, a shared volume) and pass it as --storage")

    def run(self, passes: list[list[GridTask]], progress: GridProgress, data: Any = None) -> list[GridOutcome]:
        ray = self.ray
        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(_train_on_ray_node)
        threads = max(1, int(self.cpus))

        def submit(tasks: list[GridTask], attempt: int) -> Any:
            absolute = [replace(task.config, out=str(Path(task.config.out).resolve())) for task in tasks]
            return remote.remote(absolute, threads, attempt > 0)

        in_flight = {submit(tasks, 0): (tasks, 0) for tasks in passes}
        outcomes: dict[tuple[str, int], GridOutcome] = {}
        try:
            while in_flight:
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_SECONDS)
                for ref in done:
                    tasks, attempt = in_flight.pop(ref)
                    try:
                        ends = ray.get(ref)
                    except ray.exceptions.RayTaskError as error:  # our code raised: a bug, not a lost worker
                        reason = clip(str(error).strip().splitlines()[-1], 300)
                        ends = [("failed", reason)] * len(tasks)
                    except ray.exceptions.RayError as error:  # the worker or its node died under the runs
                        why = f"{type(error).__name__}: {clip(str(error).strip().splitlines()[0], 200)}"
                        statuses = [RunDirectory(task.config.out).read_status() for task in tasks]
                        unended = [task for task, status in zip(tasks, statuses) if status.get("state") not in ("finished", "diverged", "paused", "pruned")]
                        ends = [(status.get("state"), status.get("reason", "")) for task, status in zip(tasks, statuses)
                                if task not in unended]
                        given_up = _retry_or_give_up(unended, attempt, why, self.max_retries, progress) if unended else []
                        if given_up is None:
                            in_flight[submit(unended, attempt + 1)] = (unended, attempt + 1)
                        else:
                            outcomes.update({(o.label, o.seed): o for o in given_up})
                        tasks = [task for task in tasks if task not in unended]
                    for task, (state, reason) in zip(tasks, ends):
                        outcomes.setdefault((task.label, task.seed), GridOutcome(task.label, task.seed, state, reason, attempt))
                progress.refresh(f"{len(in_flight)} Ray task(s) left")
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)
        return [outcomes[task.label, task.seed] for tasks in passes for task in tasks]


def _train_on_ray_node(configs: list[RunConfig], threads: int, take_over_lock: bool) -> list[tuple[str, str]]:
    """A Ray task: one pass, whose failures name the node (a model file the driver imports may be missing there)."""
    return train_pass(configs, threads, take_over_lock, where=f"on node {socket.gethostname()}: ")


def _reads_token(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def shared_storage_refusal(out: Path, storage_given: bool, nodes: int) -> str | None:
    """Why `out` cannot hold the runs of a cluster of `nodes` machines, or None when it might."""
    if nodes > 1 and not storage_given and not Path(out).is_absolute():
        return (f"--out {out} is a path on this machine only, and the Ray cluster has {nodes} nodes; pass --storage DIR, "
                f"a folder every node mounts (NFS, a shared volume), and the runs go to DIR/{out}")
    return None


def build_executor(backend: str = "local", workers: int = 1, cpus_per_run: float | None = None, gpus_per_run: float = 0,
                   max_retries: int = 2, ray_address: str | None = None, storage_given: bool = False):
    """The executor the compare options ask for, after checking that they make sense together."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if workers < 1:
        raise UsageError(f"--workers {workers} should be at least 1")
    if max_retries < 0:
        raise UsageError(f"--max-retries {max_retries} should be 0 or more")
    if cpus_per_run is not None and cpus_per_run <= 0:
        raise UsageError(f"--cpus-per-run {cpus_per_run} should be positive")
    if gpus_per_run < 0:
        raise UsageError(f"--gpus-per-run {gpus_per_run} should be 0 or more")
    if backend == "local":
        for given, flag in ((ray_address, "--ray-address"), (gpus_per_run, "--gpus-per-run"), (storage_given, "--storage")):
            if given:
                raise UsageError(f"{flag} is for --backend ray; drop it or add --backend ray")
        if workers == 1:
            return InProcess(int(cpus_per_run) if cpus_per_run else None)
        threads = int(cpus_per_run) if cpus_per_run else max(1, (os.cpu_count() or 1) // workers)
        return LocalProcesses(workers, threads, max_retries)
    if workers != 1:
        raise UsageError("--workers is for --backend local; Ray runs as many tasks as the cluster has room for "
                         "(set --cpus-per-run to size each)")
    return RayTasks(ray_address, cpus_per_run or 1, gpus_per_run, max_retries, storage_given)
