"""The one training loop, over a group of runs that share their batches (a run alone is the group of one).

`train_epoch` and `evaluate` have the shape of the PyTorch quickstart's `train()` and `test()`, for
every arm of a `step.Step` at once; `fit_runs` carries runs out epoch by epoch and ends each its own
way; `Trainer` is one run: assembled from its config, with its run directory, checkpoints and resume.
`train` is the entry point for one run: it checks the folder, resolves lr=auto and prints doctor's notes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from lrlab import __version__, distributed
from lrlab.assembly import (bf16_and_channels_last, check_footprint, load_run_data, resolve_device, run_model_factory,
                            split_for_run, versions)
from lrlab.config import RUNTIME_ONLY, RunConfig, config_yaml, load_config
from lrlab.data import BatchLoader, ImageData
from lrlab.errors import UsageError, clip, first_names
from lrlab.models import check_model, model_source, model_source_change, seed_generators
from lrlab.optimizers import build_optimizer, parse_optimizer, with_lr
from lrlab.preview import doctor
from lrlab.runs import FollowerRun, RunDirectory
from lrlab.schedules import ScheduleDriver, parse_schedule
from lrlab.step import PlainStep, Step

if TYPE_CHECKING:
    from lrlab import lrfinder  # imported where a range test runs: it brings scipy.signal, a second to import

CHECKPOINT_FORMAT = 1
RANGE_TEST_START = 1e-7  # the smallest LR an LR range test tries, unless told otherwise
# What restore() reads from last.pt, and the type each must have.
CHECKPOINT_FIELDS = {
    "config": dict, "epoch": int, "best_selection_acc": (int, float), "best_epoch": int, "elapsed_seconds": (int, float),
    "model": dict, "optimizer": dict, "schedule": dict, "rng": dict,
}


class Diverged(Exception):
    """The loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}")
        self.step, self.loss = step, loss


@dataclass
class RunResult:
    """How a run ended and its headline numbers."""

    path: str
    state: str
    epochs_completed: int
    best_test_acc: float  # test accuracy at the best epoch, which `selected_on` chose
    best_epoch: int
    final_test_acc: float
    seconds: float
    selected_on: str = "validation"  # or "test" without a validation split (the article's protocol)


@dataclass
class EpochTotals:
    """What one epoch of training gave each arm of a step (indexed like the arms at the epoch's start)."""

    train_loss: list[float]
    train_acc: list[float]
    step_lrs: list[list[float]]
    step_momenta: list[list[float | None]]
    step_losses: list[list[float]]
    diverged: dict[int, Diverged] = field(default_factory=dict)


def momentum_of(optimizer: torch.optim.Optimizer) -> float | None:
    """The momentum a schedule may move with the LR (SGD's momentum, Adam's first beta), as
    Lightning's LearningRateMonitor logs it; None for an optimizer without one."""
    group = optimizer.param_groups[0]
    if "momentum" in group:
        return group["momentum"]
    betas = group.get("betas")
    return betas[0] if isinstance(betas, (tuple, list)) and betas else None


def train_epoch(loader: BatchLoader, step: Step, schedules: list[ScheduleDriver], *, first_step: int,
                check_every: int = 1, progress: tqdm | None = None,
                ranks: distributed.Ranks = distributed.SINGLE) -> EpochTotals:
    """One pass over `loader` for every arm of `step`, each arm's schedule stepped where its spec says.

    Losses and accuracies are summed on the device and read once at the end, so an accelerator is
    never made to wait for the host; every `check_every` steps the losses since the last check are
    read, and an arm whose loss is not finite leaves the step there (no arm's numbers feed
    another's, so it cannot have disturbed the rest). Under torchrun (one arm) the figures are those
    of all ranks, and the check runs once, on the losses of the global batches, at the end.
    """
    step.start_epoch()
    arms = step.arms
    device = step.device
    alive = list(range(arms))
    step_losses = torch.full((len(loader), arms), math.nan, device=device)
    loss_sums = torch.zeros(arms, device=device)
    correct = torch.zeros(arms, device=device, dtype=torch.long)
    step_lrs: list[list[float]] = [[] for _ in range(arms)]
    step_momenta: list[list[float | None]] = [[] for _ in range(arms)]
    step_counts: list[int] = []
    diverged: dict[int, Diverged] = {}
    checked, steps, rows = 0, 0, None
    for index, (images, labels) in enumerate(loader):
        for arm in alive:
            step_lrs[arm].append(schedules[arm].optimizer.param_groups[0]["lr"])
            step_momenta[arm].append(momentum_of(schedules[arm].optimizer))
        # Under DDP, weighting each rank's mean by its share of the global batch makes the
        # average of the ranks' gradients the gradient of the global batch's mean loss.
        loss_scale = len(labels) * ranks.world / loader.global_batch_size(index) if ranks.distributed else 1.0
        losses, logits = step.train(images, labels, loss_scale)
        for arm in alive:
            schedules[arm].after_step()
        if rows is None or len(rows) != len(alive):  # made afresh only when an arm leaves: no copy to the device per step
            rows = torch.tensor(alive, device=device)
        step_losses[index, rows] = losses
        loss_sums[rows] += losses * len(labels)
        correct[rows] += (logits.argmax(-1) == labels).sum(-1)
        step_counts.append(len(labels))
        steps = index + 1
        if not ranks.distributed and (steps % check_every == 0 or steps == len(loader)):
            alive = _drop_diverged(step_losses[checked:steps], alive, first_step + checked, diverged, step)
            checked = steps
            if progress is not None and alive:  # the losses were read for the check already: showing one costs no wait
                progress.set_postfix(loss=f"{float(step_losses[steps - 1, alive[0]]):.4f}",
                                     lr=f"{step_lrs[alive[0]][-1]:.3g}", refresh=False)
        if progress is not None:
            progress.update(1)
        if not alive:
            break
    step_losses = step_losses[:steps]
    seen = sum(step_counts)
    if ranks.distributed:
        counts = torch.tensor(step_counts, dtype=step_losses.dtype).to(device)
        weighted = distributed.sum_over_ranks(torch.cat([step_losses[:, 0] * counts, counts]), ranks)
        step_losses = (weighted[:steps] / weighted[steps:]).unsqueeze(1)
        # Every rank sees the same reduced losses, so every rank stops at the same step.
        _drop_diverged(step_losses, alive, first_step, diverged, step)
        loss_total, correct_total, seen = distributed.pass_totals(loss_sums[0], correct[0], seen, ranks)
        loss_totals, correct_totals = [loss_total], [correct_total]
    else:
        loss_totals, correct_totals = loss_sums.tolist(), correct.tolist()
    losses_by_arm = step_losses.T.tolist()
    return EpochTotals([total / seen for total in loss_totals], [total / seen for total in correct_totals],
                       step_lrs, step_momenta, losses_by_arm, diverged)


def _drop_diverged(window: torch.Tensor, alive: list[int], first_step: int, diverged: dict[int, Diverged],
                   step: Step) -> list[int]:
    """Mark each alive arm with a non-finite loss in `window` (steps after `first_step`) diverged, drop it
    from `step`, and return the arms that go on."""
    finite = torch.isfinite(window[:, alive]).all(0).tolist()
    if all(finite):
        return alive
    for arm, ok in zip(alive, finite):
        if not ok:
            first_bad = int((~torch.isfinite(window[:, arm])).nonzero()[0])
            diverged[arm] = Diverged(first_step + first_bad + 1, float(window[first_bad, arm]))
    keep = [position for position, ok in enumerate(finite) if ok]
    if keep:
        step.keep(keep)
    return [alive[position] for position in keep]


@torch.no_grad()
def evaluate(loader: BatchLoader, step: Step,
             ranks: distributed.Ranks = distributed.SINGLE) -> tuple[list[float], list[float], torch.Tensor | None]:
    """Each arm's mean loss and accuracy over `loader` (over every rank's share under torchrun), and
    which images each arm got right, arms x images in the loader's order (None under torchrun, where
    each rank sees a share)."""
    arms = step.arms
    loss_sums = torch.zeros(arms, device=step.device)
    hits = []
    seen = 0
    for images, labels in loader:
        if not len(labels):
            continue
        losses, logits = step.evaluation_losses(images, labels)
        loss_sums += losses * len(labels)
        hits.append(logits.argmax(-1) == labels)
        seen += len(labels)
    right = torch.cat(hits, dim=1) if hits else torch.zeros(arms, 0, dtype=torch.bool, device=step.device)
    if ranks.distributed:
        loss_total, correct_total, seen = distributed.pass_totals(loss_sums[0], right.sum(), seen, ranks)
        return [loss_total / seen], [correct_total / seen], None
    # Divided in float64, as the totals read into Python floats would be.
    return (loss_sums.double() / seen).tolist(), (right.sum(1).double() / seen).tolist(), right.cpu()


def evaluate_splits(loaders: dict[str, BatchLoader], step: Step, ranks: distributed.Ranks = distributed.SINGLE
                    ) -> tuple[list[dict[str, float]], list[dict[str, torch.Tensor]]]:
    """For each arm, `<split>_loss` and `<split>_acc` for each evaluation split ('val' when the runs have one,
    'test'), and which images of each it got right (empty under torchrun)."""
    metrics: list[dict[str, float]] = [{} for _ in range(step.arms)]
    correct: list[dict[str, torch.Tensor]] = [{} for _ in range(step.arms)]
    for split, loader in loaders.items():
        losses, accuracies, right = evaluate(loader, step, ranks)
        for arm in range(step.arms):
            metrics[arm][f"{split}_loss"], metrics[arm][f"{split}_acc"] = losses[arm], accuracies[arm]
            if right is not None:
                correct[arm][split] = right[arm]
    return metrics, correct


def selection_accuracy(metrics: dict[str, float]) -> float:
    """The accuracy that chooses a run's best epoch: validation when the run has a split, else test
    (the article's protocol, which makes the chosen number optimistic)."""
    return metrics["val_acc"] if "val_acc" in metrics else metrics["test_acc"]


class BestEpoch:
    """A run's best epoch so far (by `selection_accuracy`) and which images its final and best epochs got
    right; one per run, so a loop over a group of runs keeps one each."""

    def __init__(self, run: RunDirectory):
        self.run = run
        self.accuracy = -1.0
        self.epoch = 0
        self.correct: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best_selection_acc": self.accuracy, "best_epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accuracy, self.epoch = state["best_selection_acc"], state["best_epoch"]
        stored = self.run.read_correctness()
        self.correct = {name.removeprefix("best_"): right for name, right in stored.items()
                        if name.startswith("best_") and name != "best_epoch"}

    def record(self, epoch: int, metrics: dict[str, float], correct: dict[str, torch.Tensor],
               best_checkpoint: Callable[[], dict[str, Any]]) -> bool:
        """Note epoch `epoch`'s results; save `best_checkpoint()` as best.pt if it is the best so far.

        Writes correct.npz (which images the final and the best epoch got right) before the caller
        writes last.pt, so a resumed run never finds it behind its checkpoint.
        """
        improved = selection_accuracy(metrics) > self.accuracy
        if improved:
            self.accuracy, self.epoch, self.correct = selection_accuracy(metrics), epoch, correct
            self.run.save_checkpoint(self.run.best_path, best_checkpoint())
        if correct:
            self.run.write_correctness(final_epoch=epoch, best_epoch=self.epoch,
                                       **{f"final_{k}": v for k, v in correct.items()},
                                       **{f"best_{k}": v for k, v in self.correct.items()})
        return improved


@contextlib.contextmanager
def deterministic_algorithms(wanted: bool) -> Iterator[None]:
    """Torch's deterministic kernels while a run trains, then the caller's settings back.

    The CPU kernels lrlab uses are deterministic already; on CUDA this turns off cuDNN's
    autotuner and the atomics-based kernels, which costs speed.
    """
    if not wanted:
        yield
        return
    # cuBLAS reads this when it first creates a handle; it must be set before any CUDA matmul.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    except RuntimeError as error:
        if "deterministic" not in str(error):
            raise
        raise UsageError(f"--deterministic: {clip(str(error), 200)}; run without --deterministic") from None
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]


class Trainer:
    """One run, assembled from its config (data, model, optimizer, schedule driver, run folder), and
    what it does around the loop: checkpoints, resume, recording an epoch, and how it ends.

    Building one has no side effects: nothing is locked, written or printed, no range test runs;
    `train` (or an executor) does those, and `engine.fit_runs` carries the run out, alone or in a group.
    """

    def __init__(self, config: RunConfig, data: ImageData | None = None, resume: bool = False, overwrite: bool = False,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                 builder: Callable[..., nn.Module] | None = None, device: torch.device | None = None,
                 auto_lr: float | None = None):
        """`builder` is the user's model class or function when it was handed over as a Python object;
        `device` this process's device when the caller has chosen it (under torchrun, this rank's);
        `auto_lr` the LR an `lr=auto` optimizer trains with (`pick_auto_lr` finds it)."""
        self.config = config.validate()
        self.on_epoch = on_epoch
        self.ranks = distributed.from_environment()
        self.run = RunDirectory(config.out) if self.ranks.main else FollowerRun(config.out)
        self.quiet = config.quiet or not self.ranks.main
        check_resume_or_overwrite(resume, overwrite)
        self.resume, self.overwrite = resume, overwrite
        self.directory_checked = False  # by `check_run_directory`, under the run's lock (`train` checks before assembling)
        self.extended_from: int | None = None
        self.writer: Any = None
        self._assemble(data, builder, device, auto_lr)

    def _assemble(self, data: ImageData | None, builder: Callable[..., nn.Module] | None, device: torch.device | None,
                  auto_lr: float | None) -> None:
        config = self.config
        if device is None:
            device = resolve_device(config.device)
            if self.ranks.distributed:
                device = distributed.rank_device(self.ranks, device, chosen_automatically=config.device == "auto")
        self.device = device
        self.use_bf16, self.channels_last = bf16_and_channels_last(config, self.device)
        if data is None:
            data = load_run_data(config)
        self.data = split_for_run(data, config)
        augment = config.augment
        if "flip" in augment and not self.data.flip_makes_sense:
            raise UsageError(f"{self.data.name} has images whose meaning changes when mirrored (digits); use --augment none or crop")
        mean, std = self.data.channel_statistics()
        self.train_loader = BatchLoader(
            self.data.train_images, self.data.train_labels, config.batch_size, mean, std,
            shuffle=True, augment=augment, seed=config.seed, device=self.device, channels_last=self.channels_last,
            shard=(self.ranks.rank, self.ranks.world), workers=config.data_workers,
        )
        splits = {"val": self.data.val_images, "test": self.data.test_images}
        self.evaluation_loaders = {
            split: BatchLoader(images, getattr(self.data, f"{split}_labels"), config.eval_batch_size, mean, std,
                               device=self.device, channels_last=self.channels_last, shard=(self.ranks.rank, self.ranks.world),
                               workers=config.data_workers)
            for split, images in splits.items() if images is not None
        }
        self.test_loader = self.evaluation_loaders["test"]
        if len(self.train_loader) == 0:
            before_validation = min(config.limit_train or len(data.train_labels), len(data.train_labels))
            fix = (f"lower --val-fraction {config.val_fraction}, which holds the rest out for validation"
                   if config.val_fraction and before_validation >= 2 else "give --limit-train 2 or more")
            raise UsageError(f"{len(self.data.train_labels)} training image(s) make no batch (a batch needs at least 2, "
                             f"for BatchNorm); {fix}")
        build_model = run_model_factory(config, self.data, builder, check=False)
        check_footprint(config, self.data, build_model, self.device)
        # The seed fixes the initial weights, so every schedule in a comparison starts alike; the
        # check runs on the run's own model (blank images, eval mode and one training step whose
        # statistics and generator state are put back: its weights stay as built).
        seed_generators(config.seed)
        model = check_model(config.model, build_model, self.data.channels, self.data.image_size, self.data.num_classes)
        self.model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.forward_model = self._data_parallel() if self.ranks.distributed else self.model
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.optimizer_spec = parse_optimizer(config.optimizer)
        if self.optimizer_spec.arguments.get("lr") == "auto":
            if auto_lr is None:
                raise UsageError("lr=auto needs the range test's pick: train through lrlab.train or the lrlab command, "
                                 "which run the test, or give the LR")
            self.optimizer_spec = parse_optimizer(with_lr(config.optimizer, auto_lr))
        self.optimizer = build_optimizer(self.optimizer_spec, self.model.parameters())
        self.schedule = ScheduleDriver(parse_schedule(config.schedule), self.optimizer, config.epochs, len(self.train_loader))
        self.epoch = 0
        self.best = BestEpoch(self.run)
        self.elapsed_seconds = 0.0

    def notes(self) -> list[str]:
        """What the user should know before this run trains: doctor's notes on its schedule over this
        run, and what --deterministic costs here."""
        lines = list(doctor(self.schedule.spec, self.config.epochs, self.steps_per_epoch))
        if self.config.deterministic:
            lines.append("--deterministic: " + ("cuDNN autotuning is off and only deterministic kernels run, so steps are slower"
                                                if self.device.type == "cuda" else
                                                f"the {self.device.type} kernels lrlab uses are deterministic already, so it costs nothing here"))
        return lines

    def plain_step(self) -> PlainStep:
        """The step this run takes when it trains alone."""
        return PlainStep(self.model, self.optimizer, self.loss_fn, self.autocast, self.forward_model)

    def range_test(self, start: float = RANGE_TEST_START, end: float = 10.0, steps: int = 100, mode: str = "exp",
                   diverge: float = 4.0) -> lrfinder.RangeTest:
        """An LR range test on this run's model and batches; nothing of the run is changed by it."""
        from lrlab import lrfinder

        spec = parse_optimizer(with_lr(self.config.optimizer, start))
        return lrfinder.range_test(self.model, lambda parameters: build_optimizer(spec, parameters), self.train_loader,
                                   self.loss_fn, start, end, steps, mode, diverge, self.autocast)

    def _data_parallel(self) -> nn.Module:
        """DDP around the model; on CUDA BatchNorm is synchronised so the statistics are the global batch's."""
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        return DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def drive(self, optimizer: torch.optim.Optimizer) -> None:
        """Let the schedule drive `optimizer` instead (a group's ArmOptimizer); before `prepare`, which restores into it."""
        self.optimizer = optimizer
        self.schedule = ScheduleDriver(self.schedule.spec, optimizer, self.config.epochs, self.steps_per_epoch)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def autocast(self):
        if not self.use_bf16:
            return nullcontext()
        # No cast cache: each step enters the context afresh, so a cache would save nothing.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "lrlab_version": __version__,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "step": self.schedule.step_count,
            **self.best.state_dict(),
            "elapsed_seconds": self.elapsed_seconds,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rng,
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Put model, optimizer, schedule, RNG and counters back as `last.pt` recorded them."""
        path = self.run.last_path
        if not isinstance(checkpoint, dict) or "format" not in checkpoint:
            raise UsageError(f"{path} is not an lrlab checkpoint; start afresh with --overwrite")
        if checkpoint["format"] != CHECKPOINT_FORMAT:
            raise UsageError(
                f"{path} was written by lrlab {clip(checkpoint.get('lrlab_version', '(unknown version)'), 20)} in checkpoint "
                f"format {clip(checkpoint['format'], 20)}, and lrlab {__version__} reads format {CHECKPOINT_FORMAT}; resume it with "
                f"that lrlab version, or start afresh with --overwrite")
        for key, kind in CHECKPOINT_FIELDS.items():
            value = checkpoint.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise UsageError(f"{path} is damaged ({key} is {'missing' if key not in checkpoint else 'of the wrong type'}); "
                                 "start afresh with --overwrite")
        if not 0 <= checkpoint["epoch"] <= self.config.epochs:
            raise UsageError(f"{path} is damaged (epoch {checkpoint['epoch']} is outside the run's "
                             f"{self.config.epochs}); start afresh with --overwrite")
        saved = checkpoint["config"]
        current = self.config.to_dict()
        changed = [k for k in current if k not in RUNTIME_ONLY and k in saved and saved[k] != current[k]]
        if changed == ["epochs"] and getattr(self, "extended_from", None) == saved["epochs"]:
            changed = []  # a run trained longer (`_check_extension` allowed it)
        if changed:
            raise UsageError(f"{path} was saved by a run with a different {', '.join(changed)} than this one "
                             f"({self.run.config_path} or the command changed since); put the settings back, "
                             f"or start afresh with --overwrite")
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.schedule.load_state_dict(checkpoint["schedule"])
            torch.set_rng_state(checkpoint["rng"]["torch"])
            if "cuda" in checkpoint["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
            raise UsageError(f"{path} does not fit this run's model or optimizer "
                             f"({clip(str(error).splitlines()[0] if str(error) else type(error).__name__, 120)}); "
                             "start afresh with --overwrite") from None
        self.epoch = checkpoint["epoch"]
        self.best.load_state_dict(checkpoint)
        self.elapsed_seconds = checkpoint["elapsed_seconds"]

    # -- the run -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the run directory ready: pick up the run to resume, or start a fresh one."""
        if not self.ranks.main:
            distributed.barrier(self.ranks)  # rank 0 has checked, cleared or truncated the folder
            if self.resume and self.run.last_path.exists():
                self.restore(self.run.load_checkpoint(self.run.last_path))
            return
        self.run.remove_partial_writes()
        if self.resume and self.run.holds_run():
            if self.run.last_path.exists():
                self.restore(self.run.load_checkpoint(self.run.last_path))
            self.run.truncate_to_epoch(self.epoch)
            if self.extended_from:  # config.yaml records the run's new length
                self._write_config()
                self.run.append_log(f"extended from {self.extended_from} to {self.config.epochs} epochs")
            recorded = len(self.run.read_metrics())
            if recorded != self.epoch:
                raise UsageError(f"{self.run.metrics_path} holds {recorded} epoch(s) but {self.run.last_path} is at epoch "
                                 f"{self.epoch}; restore metrics.csv, or start afresh with --overwrite")
        else:
            if self.overwrite:
                self.run.clear()
            self._write_config()
        distributed.barrier(self.ranks)

    def _write_config(self) -> None:
        """config.yaml: the run's settings, with the versions and the model's source that made it."""
        self.run.write_text(self.run.config_path, config_yaml(self.config, {**versions(), **model_source(self.config.model)}))

    def fit(self, take_over_lock: bool = False) -> RunResult:
        """Train for the configured epochs (or what remains of them), alone, recording everything."""
        return fit_runs([self], lambda members: self.plain_step(), take_over_lock)[0]

    # How a run ends; a group of runs ends each of its runs the same way.

    def end_diverged(self, diverged: Diverged) -> RunResult:
        self.run.write_status("diverged", epoch=self.epoch + 1, step=diverged.step, loss=str(diverged.loss),
                              reason=f"loss became {diverged.loss} at step {diverged.step} (epoch {self.epoch + 1}); lower the LR")
        if not self.quiet:
            print(f"lrlab: run diverged at step {diverged.step} (epoch {self.epoch + 1}); best.pt keeps epoch {self.best.epoch}", file=sys.stderr)
        return self.result("diverged")

    def end_interrupted(self) -> None:
        self.run.write_status("interrupted", epoch=self.epoch, reason="stopped by the user")
        if self.ranks.main:
            print(f"\nlrlab: interrupted after epoch {self.epoch}; continue with: lrlab train --out {self.run.path} --resume", file=sys.stderr)

    def should_pause(self) -> bool:
        """Whether the run has reached the epoch it was asked to pause at (a study's rung)."""
        return self.config.pause_at_epoch is not None and self.epoch >= self.config.pause_at_epoch

    def end_paused(self) -> RunResult:
        self.run.write_status("paused", epoch=self.epoch, reason=f"paused at epoch {self.epoch} to be judged at a rung")
        return self.result("paused")

    def end_failed(self, error: BaseException) -> None:
        self.run.write_status("failed", epoch=self.epoch, reason=f"{type(error).__name__}: {error}")

    def end_finished(self) -> RunResult:
        self.run.write_status("finished", epoch=self.epoch, best_epoch=self.best.epoch)
        return self.result("finished")

    def is_finished(self) -> bool:
        """Whether the run has nothing left to train (after `prepare`)."""
        return self.epoch >= self.config.epochs and self.run.read_status().get("state") == "finished"

    def record_epoch(self, metrics: dict[str, float], lr_at_start: float, first_step: int, step_lrs: list[float],
                     step_momenta: list[float | None], step_losses: list[float], started: float,
                     correct: dict[str, torch.Tensor], evaluated_weights: dict[str, torch.Tensor] | None = None) -> None:
        """After an epoch's training and evaluation: step the schedule, write rows and checkpoints.

        `metrics` holds train_*, test_* and, when the run has a validation split, val_* figures;
        `correct` which images of each split the model got right (see `evaluate_splits`);
        `evaluated_weights` the weights those figures belong to, which best.pt keeps (None: the model's own).
        """
        epoch = self.epoch + 1
        train_loss, train_acc = metrics["train_loss"], metrics["train_acc"]
        self.schedule.after_epoch(metrics)
        seconds = time.perf_counter() - started
        self.elapsed_seconds += seconds
        self.epoch = epoch
        self.run.append_steps([
            {"step": first_step + i + 1, "epoch": epoch, "lr": lr, "loss": loss,
             **({"momentum": momentum} if momentum is not None else {})}
            for i, (lr, momentum, loss) in enumerate(zip(step_lrs, step_momenta, step_losses))
        ])
        self.run.append_metrics({"epoch": epoch, "lr": lr_at_start, **metrics,
                                 "seconds": round(seconds, 3), "elapsed_seconds": round(self.elapsed_seconds, 3)})
        self.best.record(epoch, metrics, correct, lambda: {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "epoch": epoch,
            **{name: metrics[name] for name in ("val_acc", "test_acc") if name in metrics},
            "model": self.model.state_dict() if evaluated_weights is None else evaluated_weights,
        })
        self.run.save_checkpoint(self.run.last_path, self._checkpoint())
        self.run.write_status("running", epoch=epoch, pid=os.getpid())
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, epoch)
            self.writer.add_scalar("lr", lr_at_start, epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)
        validation = f"val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:6.2%}  " if "val_acc" in metrics else ""
        line = (f"epoch {epoch:>3}/{self.config.epochs}  lr {lr_at_start:.4g}  train loss {train_loss:.4f} acc {train_acc:6.2%}  "
                f"{validation}test loss {metrics['test_loss']:.4f} acc {metrics['test_acc']:6.2%}  {seconds:.1f} s")
        self.run.append_log(line)
        if not self.quiet:
            tqdm.write(line, file=sys.stderr)

    def open_tensorboard(self) -> Any:
        """The TensorBoard writer record_epoch writes to (--tensorboard)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard needs the tensorboard package: pip install 'lrlab[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(self.run.path))
        return self.writer

    def result(self, state: str) -> RunResult:
        metrics = self.run.read_metrics()
        at_best = [row["test_acc"] for row in metrics if row["epoch"] == self.best.epoch]
        return RunResult(
            path=str(self.run.path), state=state, epochs_completed=self.epoch,
            best_test_acc=at_best[0] if at_best else 0.0, best_epoch=self.best.epoch,
            final_test_acc=metrics[-1]["test_acc"] if metrics else float("nan"),
            seconds=self.elapsed_seconds, selected_on="validation" if self.data.val_images is not None else "test",
        )


def check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other; pick one")


def check_run_directory(run: RunDirectory, config: RunConfig, resume: bool, overwrite: bool) -> int | None:
    """Refuse to clobber another run, to write among a user's files, or to resume a different run; for a
    finished run trained longer (`--resume --epochs N`), the epochs it was started for (None otherwise)."""
    run.check_writable()
    if run.holds_run() and not (resume or overwrite):
        raise UsageError(f"{run.path} already holds a run; pass --resume to continue it or --overwrite to replace it")
    foreign = [] if run.holds_run() or overwrite else run.foreign_files()
    if foreign:
        raise UsageError(f"{run.path} holds files lrlab did not make ({first_names(foreign)}); "
                         "choose an empty or new --out, or pass --overwrite to write the run among them")
    if not (resume and run.holds_run()):
        return None
    run.read_metrics()  # a damaged metrics.csv is named as such before its columns are looked at
    columns = run.metric_columns()
    if columns and "val_acc" not in columns:
        raise UsageError(f"{run.path} was made by an lrlab without a validation split (its metrics.csv has no "
                         f"val_acc column), and resuming it would change its training images; start it afresh "
                         f"with --overwrite")
    started_for = load_config(run.config_path)
    changed = started_for.differences(config)
    extended_from = None
    if changed == ["epochs"]:
        extended_from = _check_extension(run, config, started_for.epochs)
        changed = []
    if changed:
        raise UsageError(f"{run.path} was started with different {', '.join(changed)}; "
                         f"resume with the same settings or use another --out")
    edited = model_source_change(config.model, run.config_path)
    if edited:
        print(f"lrlab: note: {edited}", file=sys.stderr)
    return extended_from


def _check_extension(run: RunDirectory, config: RunConfig, started_for: int) -> int:
    """`--resume --epochs N` on a run started for fewer epochs trains it longer, where its schedule
    gives the same LR at every step whatever the run's length; otherwise the run would not be the one it began."""
    if config.epochs < started_for:
        raise UsageError(f"{run.path} was started for {started_for} epochs; a run cannot be shortened to "
                         f"{config.epochs} (its schedule planned for {started_for}): resume without --epochs")
    why = parse_schedule(config.schedule).depends_on_run_length
    if why:
        raise UsageError(f"{run.path} cannot be trained longer: its schedule {config.schedule!r} depends on "
                         f"the run's length ({why}), so its first {started_for} epoch{'s' if started_for != 1 else ''} would not be those of a "
                         f"{config.epochs}-epoch run; train a new run with --epochs {config.epochs}")
    return started_for


def fit_runs(trainers: list[Trainer], make_step: Callable[[list[Trainer]], Step],
             take_over_lock: bool = False) -> list[RunResult]:
    """Carry out `trainers`, runs that share their batches, epoch by epoch; one RunResult each.

    The one loop: a run alone is the group of one (`make_step` gives it its plain step); a group's
    runs take one stacked step, built once and rebuilt only when runs resumed at different epochs
    join it. Runs resumed from checkpoints written at different epochs catch up first. Every run ends
    its own way: an arm whose loss turns NaN ends `diverged` and the others go on; a run reaching its
    last epoch or its pause (a study's rung) ends there; an interruption, a failure or a full disk
    ends every run still training, each with its status written.
    """
    results: dict[int, RunResult] = {}
    active: list[Trainer] = []
    with contextlib.ExitStack() as held:
        for trainer in trainers:
            held.enter_context(trainer.run.locked(take_over_lock))
        held.enter_context(deterministic_algorithms(trainers[0].config.deterministic))
        try:
            for trainer in trainers:
                if trainer.ranks.main and not trainer.directory_checked:
                    trainer.extended_from = check_run_directory(trainer.run, trainer.config, trainer.resume, trainer.overwrite)
                    trainer.directory_checked = True
                trainer.prepare()
                if trainer.config.tensorboard and trainer.ranks.main:
                    held.callback(trainer.open_tensorboard().close)
            for trainer in trainers:
                if trainer.is_finished():
                    results[id(trainer)] = trainer.result("finished")
                elif trainer.epoch >= trainer.config.epochs:  # its last epoch was recorded, its end was not
                    results[id(trainer)] = trainer.end_finished()
                elif trainer.should_pause():
                    results[id(trainer)] = trainer.end_paused()
                else:
                    active.append(trainer)
                    trainer.run.write_status("running", epoch=trainer.epoch, pid=os.getpid())
                    # How a run trained is recorded: a grouped run's numbers drift from the same run's alone.
                    trainer.run.append_log(f"{'resumed after' if trainer.epoch else 'started'} epoch {trainer.epoch} of "
                                           f"{trainer.config.epochs}: schedule {trainer.config.schedule}, optimizer "
                                           f"{trainer.config.optimizer}, seed {trainer.config.seed}, "
                                           f"{'alone' if len(trainers) == 1 else f'in a group of {len(trainers)} runs sharing a pass'}")
            step, stepped = None, []
            while active:
                epoch = min(trainer.epoch for trainer in active)
                members = [trainer for trainer in active if trainer.epoch == epoch]
                if members != stepped:
                    # Runs that left (ended, or are not at this epoch) are dropped from the step; runs that
                    # join (resumed behind the others, now caught up) need a step built afresh.
                    joined = any(member not in stepped for member in members)
                    positions = [] if joined else [stepped.index(member) for member in members]
                    if step is not None and not joined and positions == sorted(positions):
                        step.keep(positions)
                    else:
                        step = make_step(members)
                    stepped = members
                for index, diverged in _train_and_record(members, step).items():
                    results[id(members[index])] = members[index].end_diverged(diverged)
                stepped = [trainer for trainer in stepped if id(trainer) not in results]
                for trainer in [t for t in active if id(t) not in results]:
                    if trainer.epoch >= trainer.config.epochs:
                        results[id(trainer)] = trainer.end_finished()
                    elif trainer.should_pause():
                        results[id(trainer)] = trainer.end_paused()
                active = [trainer for trainer in active if id(trainer) not in results]
        except KeyboardInterrupt:
            for trainer in active:
                trainer.end_interrupted()
            raise
        except OSError as error:
            # A full disk or a folder turned read-only: what was written before stays good.
            if len(trainers) == 1:
                path = trainers[0].run.path
                message = (f"cannot write to {path} ({error.strerror or error}); the last good checkpoint is kept: "
                           f"free space or fix the folder, then lrlab train --out {path} --resume")
            else:
                message = (f"cannot write the runs of this group ({error.strerror or error}); the last good "
                           f"checkpoints are kept: free space or fix the folders, then run the comparison again")
            for trainer in active or trainers:
                if trainer.run.read_status().get("state") not in ENDED:
                    with contextlib.suppress(OSError):
                        trainer.run.write_status("failed", epoch=trainer.epoch, reason=message)
            raise UsageError(message) from None
        except UsageError:
            raise
        except SystemExit as error:  # the user's code called sys.exit(): these runs failed, and lrlab says so
            for trainer in active:
                trainer.end_failed(error)
            runs, marked = (active[0].run.path, "the run is") if len(active) == 1 else (f"{len(active)} runs", "they are")
            raise UsageError(f"{runs}: the model's code called sys.exit({error.code!r}) in epoch "
                             f"{min(t.epoch for t in active) + 1 if active else '?'}; {marked} marked failed") from None
        except Exception as error:
            for trainer in active:
                trainer.end_failed(error)
            raise
    return [results.get(id(trainer)) or trainer.result("finished") for trainer in trainers]


# States after which a run is not marked failed by a later refusal or error.
ENDED = ("finished", "diverged")


def _train_and_record(members: list[Trainer], step: Step) -> dict[int, Diverged]:
    """Train and evaluate `members` (all at the same epoch) for one epoch through `step`, and record
    the epoch of each that did not diverge; the divergences by member index."""
    first = members[0]
    started = time.perf_counter()
    lrs_at_start = [trainer.optimizer.param_groups[0]["lr"] for trainer in members]
    first_step = first.schedule.step_count
    epoch = first.epoch + 1
    first.train_loader.set_epoch(epoch)
    show = len(members) == 1 and not first.quiet
    # On an accelerator, reading the losses forces a wait; check for NaN less often there.
    check_every = 1 if first.device.type == "cpu" else 50
    progress = tqdm(total=first.steps_per_epoch, desc=f"epoch {epoch}/{first.config.epochs}", unit="step",
                    disable=not show or not sys.stderr.isatty(), leave=False, file=sys.stderr, dynamic_ncols=True)
    with progress:
        trained = train_epoch(first.train_loader, step, [trainer.schedule for trainer in members], first_step=first_step,
                              check_every=check_every, progress=progress if show else None, ranks=first.ranks)
    survivors = [index for index in range(len(members)) if index not in trained.diverged]
    if survivors:
        step.export()
        with step.evaluation_point(first.train_loader, first.ranks) as evaluated_weights:
            evaluated, correct = evaluate_splits(first.evaluation_loaders, step, first.ranks)
        for position, index in enumerate(survivors):
            metrics = {"train_loss": trained.train_loss[index], "train_acc": trained.train_acc[index], **evaluated[position]}
            members[index].record_epoch(metrics, lrs_at_start[index], first_step, trained.step_lrs[index],
                                        trained.step_momenta[index], trained.step_losses[index], started,
                                        correct[position], evaluated_weights[position])
    return trained.diverged


def find_lr(config: RunConfig, start: float = RANGE_TEST_START, end: float = 10.0, steps: int = 100, mode: str = "exp",
            diverge: float = 4.0, repeats: int = 1, data: ImageData | None = None,
            builder: Callable[..., nn.Module] | None = None) -> dict[str, Any]:
    """LR range test(s) for `config` (seeds seed, seed+1, ...); writes lr_find.* into config.out."""
    from lrlab import lrfinder

    lrfinder.check_settings(start, end, steps, mode, diverge)
    if repeats < 1:
        raise UsageError(f"--repeats {repeats} should be at least 1")
    if data is None:
        data = load_run_data(config)
    fixed = replace(config, optimizer=with_lr(config.optimizer, start))
    tests = []
    for repeat in range(repeats):
        trainer = Trainer(replace(fixed, seed=config.seed + repeat), data, builder=builder)
        tests.append(trainer.range_test(start, end, steps, mode, diverge))
    return lrfinder.write_outputs(config.out, tests)


def train(config: RunConfig, resume: bool = False, overwrite: bool = False, data: ImageData | None = None,
          builder: Callable[..., nn.Module] | None = None, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
          take_over_lock: bool = False) -> RunResult:
    """Train one model as `config` says, into `config.out`: the folder is checked before any slow work,
    `lr=auto` is resolved by a range test, doctor's notes are printed, then the run trains alone.

    Under torchrun every process calls this; together they train one run, written by rank 0.
    `take_over_lock` is for an executor retrying a run whose worker it knows is dead.
    """
    config = config.validate()
    ranks = distributed.from_environment()
    run = RunDirectory(config.out) if ranks.main else FollowerRun(config.out)
    check_resume_or_overwrite(resume, overwrite)  # before the folder is looked at, as a Trainer checks it
    try:
        # The lock is held from the first look at the folder to the run's end, so what is decided
        # about the folder (and lr=auto's pick, recorded in it) stays true.
        with run.locked(take_over_lock):
            extended_from = check_run_directory(run, config, resume, overwrite) if ranks.main else None
            device = distributed.start(ranks, resolve_device(config.device), chosen_automatically=config.device == "auto")
            if data is None:
                data = load_run_data(config)
            auto_lr = None
            if parse_optimizer(config.optimizer).arguments.get("lr") == "auto":
                if ranks.distributed:
                    raise UsageError("lr=auto is not available under torchrun; run lrlab find-lr first and pass the LR it prints")
                auto_lr = pick_auto_lr(config, data, builder, device, run, resume)
            trainer = Trainer(config, data, resume=resume, overwrite=overwrite, on_epoch=on_epoch, builder=builder,
                              device=device, auto_lr=auto_lr)
            trainer.extended_from, trainer.directory_checked = extended_from, ranks.main
            if not trainer.quiet:
                for line in trainer.notes():
                    print(f"lrlab: note: {line}", file=sys.stderr)
            return trainer.fit(take_over_lock)
    finally:
        distributed.stop(ranks)


def pick_auto_lr(config: RunConfig, data: ImageData, builder: Callable[..., nn.Module] | None, device: torch.device,
                 run: RunDirectory, resume: bool) -> float:
    """lr=auto: the range test's pick on this run's model and batches, recorded in the run folder
    (lr_find.json) and read back from there on resume."""
    from lrlab import lrfinder

    record = run.path / "lr_find.json"
    if resume and record.exists():
        try:
            pick = json.loads(record.read_bytes())["pick"]
        except (OSError, ValueError, KeyError, TypeError):
            pick = None
        if isinstance(pick, bool) or not isinstance(pick, (int, float)) or not 0 < pick < math.inf:
            raise UsageError(f"{record} is damaged (no positive LR under 'pick'); delete it and resume: "
                             "the range test runs again")
        return pick
    # The probe is this run as built (same seed, same weights and batches); the range test builds its own optimizer.
    probe = Trainer(config, data, builder=builder, device=device, auto_lr=RANGE_TEST_START)
    picked = lrfinder.write_outputs(run.path, [probe.range_test()])["pick"]
    if not config.quiet:
        print(f"lrlab: lr=auto picked {picked:.4g} ({lrfinder.RULES[lrfinder.AUTO_RULE]}); see {record}", file=sys.stderr)
    return picked
