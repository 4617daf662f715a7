"""The one training loop: train an epoch, step the schedule where its spec says, evaluate, record.

`train_one_epoch` and `evaluate` have the shape of the PyTorch quickstart's `train()` and `test()`;
`Trainer` adds what a long run needs around them: the run directory, checkpoints, resume,
divergence detection and progress.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import json
import math
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from lrlab import __version__, distributed
from lrlab.config import RUNTIME_ONLY, RunConfig, config_yaml, load_config
from lrlab.data import BatchLoader, ImageData, load_dataset
from lrlab.errors import UsageError, clip, first_names
from lrlab.models import (check_model, model_arguments, model_factory, model_source, model_source_change, seed_generators,
                          training_bytes)
from lrlab.optimizers import (
    build_optimizer,
    is_schedule_free,
    parse_optimizer,
    set_training_mode,
    with_lr,
)
from lrlab.preview import doctor
from lrlab.runs import FollowerRun, RunDirectory
from lrlab.schedules import ScheduleDriver, parse_schedule
from lrlab.steps import eager_step

if TYPE_CHECKING:
    from lrlab import lrfinder  # imported where a range test runs: it brings scipy.signal, a second to import

CHECKPOINT_FORMAT = 1
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


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; asking for an absent device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def train_one_epoch(
    loader: BatchLoader,
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: ScheduleDriver,
    *,
    first_step: int,
    autocast: Any = nullcontext,
    progress: tqdm | None = None,
    check_every: int = 1,
    ranks: distributed.Ranks = distributed.SINGLE,
) -> tuple[float, float, list[float], list[float]]:
    """One pass over `loader`; returns mean loss, accuracy, and each step's LR and loss.

    Loss and accuracy are summed on the device and read once at the end, so an accelerator is
    never made to wait for the host; the NaN check reads the losses of the last `check_every`
    steps every `check_every` steps.
    Under torchrun `model` is the DDP wrapper and the figures returned are those of all ranks.
    """
    model.train()
    set_training_mode(optimizer, True)
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    step_lrs: list[float] = []
    step_counts: list[int] = []
    step_losses = torch.empty(len(loader), device=device)
    checked = 0  # steps whose loss the NaN check has read
    for index, (images, labels) in enumerate(loader):
        step_lrs.append(optimizer.param_groups[0]["lr"])
        # Under DDP, weighting each rank's mean by its share of the global batch makes the
        # average of the ranks' gradients the gradient of the global batch's mean loss.
        loss_scale = len(labels) * ranks.world / loader.global_batch_size(index) if ranks.distributed else 1.0
        loss, logits = eager_step(model, loss_fn, optimizer, images, labels, autocast, loss_scale)
        schedule.after_step()
        step_losses[index] = loss
        step_counts.append(len(labels))
        loss_sum += loss * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        if not ranks.distributed and (index + 1) % check_every == 0:
            latest_loss = _check_finite(step_losses[checked : index + 1].tolist(), first_step + checked)
            checked = index + 1
            if progress is not None:  # the loss was read for the check already: showing it costs no wait
                progress.set_postfix(loss=f"{latest_loss:.4f}", lr=f"{step_lrs[-1]:.3g}", refresh=False)
        if progress is not None:
            progress.update(1)
    steps = len(step_lrs)
    loss_total, correct_total, seen = distributed.pass_totals(loss_sum, correct, sum(step_counts), ranks)
    step_losses = step_losses[:steps]
    if ranks.distributed:
        counts = torch.tensor(step_counts, dtype=step_losses.dtype).to(device)
        weighted = distributed.sum_over_ranks(torch.cat([step_losses * counts, counts]), ranks)
        step_losses, checked = weighted[:steps] / weighted[steps:], 0
    # Every rank sees the same reduced losses, so every rank stops at the same step.
    losses = step_losses.tolist()
    _check_finite(losses[checked:], first_step + checked)
    return loss_total / seen, correct_total / seen, step_lrs, losses


def _check_finite(losses: list[float], first_step: int) -> float:
    """The last of `losses` (those of the steps after `first_step`); Diverged at the first that is not finite."""
    for offset, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise Diverged(first_step + offset + 1, loss)
    return losses[-1] if losses else math.nan


@torch.no_grad()
def evaluate(loader: BatchLoader, model: nn.Module, loss_fn: nn.Module, autocast: Any = nullcontext,
             ranks: distributed.Ranks = distributed.SINGLE) -> tuple[float, float, torch.Tensor | None]:
    """Mean loss and accuracy of `model` over `loader` (over every rank's share under torchrun), and
    which images it got right, in the loader's order (None under torchrun, where each rank sees a share)."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    hits = []
    seen = 0
    for images, labels in loader:
        if not len(labels):
            continue
        with autocast():
            logits = model(images)
        loss_sum += loss_fn(logits.float(), labels) * len(labels)
        hits.append(logits.argmax(1) == labels)
        seen += len(labels)
    right = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=device)
    loss_total, correct_total, seen = distributed.pass_totals(loss_sum, right.sum(), seen, ranks)
    return loss_total / seen, correct_total / seen, None if ranks.distributed else right.cpu()


def evaluate_splits(loaders: dict[str, BatchLoader], model: nn.Module, loss_fn: nn.Module, autocast: Any = nullcontext,
                    ranks: distributed.Ranks = distributed.SINGLE) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """`<split>_loss` and `<split>_acc` for each evaluation split ('val' when the run has one, 'test'),
    and which images of each the model got right (empty under torchrun)."""
    metrics, correct = {}, {}
    for split, loader in loaders.items():
        loss, accuracy, right = evaluate(loader, model, loss_fn, autocast, ranks)
        metrics[f"{split}_loss"], metrics[f"{split}_acc"] = loss, accuracy
        if right is not None:
            correct[split] = right
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


# The schedulefree README recomputes BatchNorm statistics on 50 training batches before evaluating.
BATCHNORM_RECOMPUTE_BATCHES = 50


def evaluate_run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: BatchLoader,
    loaders: dict[str, BatchLoader],
    loss_fn: nn.Module,
    *,
    autocast: Any = nullcontext,
    ranks: distributed.Ranks = distributed.SINGLE,
    batchnorm_batches: int = BATCHNORM_RECOMPUTE_BATCHES,
) -> tuple[dict[str, float], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One run's evaluation between epochs: `evaluate_splits` on `loaders`, and the weights it evaluated (for best.pt).

    A schedule-free optimizer takes its gradients at one point (y) and returns the average of its
    iterates (x); x is what is evaluated and kept. BatchNorm's running statistics were gathered at
    y, so, as the schedulefree README asks, they are recomputed at x on the first
    `batchnorm_batches` training batches of the epoch just trained. Afterwards the weights,
    BatchNorm statistics, RNG and model mode are put back bit for bit (switching x back to y with the
    optimizer's own arithmetic is not exact in floating point), so training goes on exactly as if
    it had not been evaluated. For other optimizers the weights returned are the model's own,
    valid until it trains again.
    """
    was_training = model.training
    if not is_schedule_free(optimizer):
        metrics, correct = evaluate_splits(loaders, model, loss_fn, autocast, ranks)
        model.train(was_training)
        return metrics, correct, model.state_dict()
    training_state = {name: value.clone() for name, value in model.state_dict().items()}
    set_training_mode(optimizer, False)
    try:
        recompute_batchnorm(model, itertools.islice(train_loader, batchnorm_batches), autocast, ranks)
        metrics, correct = evaluate_splits(loaders, model, loss_fn, autocast, ranks)
        evaluated = {name: value.clone() for name, value in model.state_dict().items()}
    finally:
        set_training_mode(optimizer, True)
        model.load_state_dict(training_state)
        model.train(was_training)
    return metrics, correct, evaluated


def recompute_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Any = nullcontext,
                        ranks: distributed.Ranks = distributed.SINGLE) -> None:
    """BatchNorm running statistics made the plain average over `batches` at the current weights.

    torch's `update_bn` (from SWA, which has the same problem) does the work; the RNG is forked so
    that a layer drawing random numbers in training mode (dropout) leaves the run's RNG as it was.
    Under torchrun the ranks' statistics are averaged, so every rank evaluates the same model.
    """
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
        torch.optim.swa_utils.update_bn(batches, model)
    if ranks.distributed:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for statistic in (module.running_mean, module.running_var):
                    statistic.copy_(distributed.sum_over_ranks(statistic.clone(), ranks) / ranks.world)


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


def device_memory_bytes(device: torch.device) -> int:
    """All the memory of `device`: the GPU's own, or the machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def versions() -> dict[str, str]:
    # torchvision's version from its metadata: importing it takes seconds, and a run may not need it.
    return {"lrlab": __version__, "torch": str(torch.__version__), "torchvision": importlib.metadata.version("torchvision")}


def load_run_data(config: RunConfig) -> ImageData:
    """The data set `config` names, loaded as it says (size, test hold-out of a folder, strictness)."""
    return load_dataset(config.dataset, config.data_dir, config.image_size, config.test_fraction, config.strict,
                        config.memory_budget)


def split_for_run(data: ImageData, config: RunConfig) -> ImageData:
    """The images a run trains, validates and tests on: `--limit-*` subsets, then the validation split.

    Both depend only on `split_seed`, never on the run's seed, so every run of a comparison
    validates and tests on the same images (the pairing the statistics rely on).
    """
    limited = data.subset(config.limit_train, config.limit_test, seed=config.split_seed)
    return limited.split_validation(config.val_fraction, config.split_seed)


def run_model_factory(config: RunConfig, data: ImageData, builder: Callable[..., nn.Module] | None = None,
                      check: bool = True) -> Callable[[], nn.Module]:
    """A zero-argument callable building a fresh model as `config` says, for `data`; with `check`, built
    once here and tried on blank images (see `models.check_model`).

    `builder` is the user's model class or function when it was handed over as a Python object.
    The check sizes the model on the meta device first, as a run does, so a model too large for
    the device is refused before it is built.
    """
    factory = model_factory(config.model, model_arguments(config.model, config.model_args, config.width, builder is None),
                            channels=data.channels, image_size=data.image_size, num_classes=data.num_classes, builder=builder,
                            check=False)
    if check:
        check_footprint(config, data, factory, resolve_device(config.device))
        checked = check_model(config.model, factory, data.channels, data.image_size, data.num_classes)
        factory()  # a second build while the first lives: a builder returning one cached model is refused here
        del checked
    return factory


def check_footprint(config: RunConfig, data: ImageData, build_model: Callable[[], nn.Module], device: torch.device) -> None:
    """Refuse, before building anything, a model and batch that `device` cannot hold while training."""
    needed = training_bytes(build_model, data.channels, data.image_size, config.batch_size)
    available = device_memory_bytes(device)
    if needed is not None and needed > available:
        height, width = data.image_size
        raise UsageError(f"training {config.model} (width {config.width or 'default'}) on {height}x{width} images in "
                         f"batches of {config.batch_size} needs about {needed / 2**30:,.1f} GiB, more than the "
                         f"{available / 2**30:,.1f} GiB of {device.type} memory here; give a smaller --width, "
                         f"--image-size or --batch-size")


class Trainer:
    """Builds a run from its config and carries it out, epoch by epoch, into a run directory."""

    def __init__(self, config: RunConfig, data: ImageData | None = None, resume: bool = False, overwrite: bool = False,
                 on_epoch: Callable[[int, dict[str, float]], None] | None = None, take_over_lock: bool = False,
                 builder: Callable[..., nn.Module] | None = None):
        """`take_over_lock` is for an executor retrying a run whose worker it knows is dead; `builder` is
        the user's model class or function when it was handed over as a Python object."""
        self.config = config.validate()
        self.on_epoch = on_epoch
        self.ranks = distributed.from_environment()
        self.run = RunDirectory(config.out) if self.ranks.main else FollowerRun(config.out)
        self.quiet = config.quiet or not self.ranks.main
        if resume and overwrite:
            raise UsageError("--resume and --overwrite contradict each other; pick one")
        self.resume, self.overwrite = resume, overwrite
        # The lock comes before every look at the folder and is held across lr=auto's range test, so
        # what is decided about the folder stays true until fit() has written the run.
        self.release_lock = weakref.finalize(self, self.run.acquire_lock(take_over_lock))
        try:
            if self.ranks.main:
                self._check_run_directory()
            self._assemble(data, builder)
        except BaseException:
            self.release_lock()
            raise

    def _assemble(self, data: ImageData | None, builder: Callable[..., nn.Module] | None) -> None:
        config = self.config
        self.device = distributed.start(self.ranks, resolve_device(config.device), chosen_automatically=config.device == "auto")
        # Measured here: bf16 autocast with channels-last halves a small conv net's epoch on the CPU,
        # as it speeds up CUDA; MPS autocast support is patchy, so it stays in fp32.
        fast_path = self.device.type in ("cuda", "cpu")
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and fast_path)
        self.channels_last = config.channels_last if config.channels_last is not None else fast_path
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
        self._check_footprint(build_model)
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
            if self.ranks.distributed:
                raise UsageError("lr=auto is not available under torchrun; run lrlab find-lr first and pass the LR it prints")
            self.optimizer_spec = parse_optimizer(with_lr(config.optimizer, self._auto_lr()))
        self.optimizer = build_optimizer(self.optimizer_spec, self.model.parameters())
        self.schedule = ScheduleDriver(parse_schedule(config.schedule), self.optimizer, config.epochs, len(self.train_loader))
        if not self.quiet:
            for line in doctor(self.schedule.spec, config.epochs, self.steps_per_epoch):
                print(f"lrlab: note: {line}", file=sys.stderr)
            if config.deterministic:
                cost = ("cuDNN autotuning is off and only deterministic kernels run, so steps are slower"
                        if self.device.type == "cuda" else f"the {self.device.type} kernels lrlab uses are deterministic already, so it costs nothing here")
                print(f"lrlab: note: --deterministic: {cost}", file=sys.stderr)
        self.epoch = 0
        self.best = BestEpoch(self.run)
        self.elapsed_seconds = 0.0

    def _check_footprint(self, build_model: Callable[[], nn.Module]) -> None:
        """Refuse, before building anything, a model and batch that this device cannot hold while training."""
        check_footprint(self.config, self.data, build_model, self.device)

    def range_test(self, start: float = 1e-7, end: float = 10.0, steps: int = 100, mode: str = "exp",
                   diverge: float = 4.0) -> lrfinder.RangeTest:
        """An LR range test on this run's model and batches; nothing of the run is changed by it."""
        from lrlab import lrfinder

        spec = parse_optimizer(with_lr(self.config.optimizer, start))
        return lrfinder.range_test(self.model, lambda parameters: build_optimizer(spec, parameters), self.train_loader,
                                   self.loss_fn, start, end, steps, mode, diverge, self.autocast)

    def _auto_lr(self) -> float:
        """lr=auto: the range test's pick, recorded in the run directory (and reused on resume)."""
        from lrlab import lrfinder

        record = self.run.path / "lr_find.json"
        if self.resume and record.exists():
            try:
                pick = json.loads(record.read_bytes())["pick"]
            except (OSError, ValueError, KeyError, TypeError):
                pick = None
            if isinstance(pick, bool) or not isinstance(pick, (int, float)) or not 0 < pick < math.inf:
                raise UsageError(f"{record} is damaged (no positive LR under 'pick'); delete it and resume: "
                                 "the range test runs again")
            return pick
        test = self.range_test()
        picked = lrfinder.write_outputs(self.run.path, [test])["pick"]
        if not self.quiet:
            print(f"lrlab: lr=auto picked {picked:.4g} ({lrfinder.RULES[lrfinder.AUTO_RULE]}); see {record}", file=sys.stderr)
        return picked

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

    def _check_run_directory(self) -> None:
        """Refuse, before any slow work, to clobber another run, to write among a user's files, or to resume a different run."""
        self.run.check_writable()
        if self.run.holds_run() and not (self.resume or self.overwrite):
            raise UsageError(f"{self.run.path} already holds a run; pass --resume to continue it or --overwrite to replace it")
        foreign = [] if self.run.holds_run() or self.overwrite else self.run.foreign_files()
        if foreign:
            raise UsageError(f"{self.run.path} holds files lrlab did not make ({first_names(foreign)}); "
                             "choose an empty or new --out, or pass --overwrite to write the run among them")
        if self.resume and self.run.holds_run():
            self.run.read_metrics()  # a damaged metrics.csv is named as such before its columns are looked at
            columns = self.run.metric_columns()
            if columns and "val_acc" not in columns:
                raise UsageError(f"{self.run.path} was made by an lrlab without a validation split (its metrics.csv has no "
                                 f"val_acc column), and resuming it would change its training images; start it afresh "
                                 f"with --overwrite")
            started_for = load_config(self.run.config_path)
            changed = started_for.differences(self.config)
            if changed == ["epochs"]:
                self._check_extension(started_for.epochs)
                changed = []
            if changed:
                raise UsageError(f"{self.run.path} was started with different {', '.join(changed)}; "
                                 f"resume with the same settings or use another --out")
            edited = model_source_change(self.config.model, self.run.config_path)
            if edited:
                print(f"lrlab: note: {edited}", file=sys.stderr)

    def _check_extension(self, started_for: int) -> None:
        """`--resume --epochs N` on a run started for fewer epochs trains it longer, where its schedule
        gives the same LR at every step whatever the run's length; otherwise the run would not be the one it began."""
        if self.config.epochs < started_for:
            raise UsageError(f"{self.run.path} was started for {started_for} epochs; a run cannot be shortened to "
                             f"{self.config.epochs} (its schedule planned for {started_for}): resume without --epochs")
        why = parse_schedule(self.config.schedule).depends_on_run_length
        if why:
            raise UsageError(f"{self.run.path} cannot be trained longer: its schedule {self.config.schedule!r} depends on "
                             f"the run's length ({why}), so its first {started_for} epoch{'s' if started_for != 1 else ''} would not be those of a "
                             f"{self.config.epochs}-epoch run; train a new run with --epochs {self.config.epochs}")
        self.extended_from = started_for

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
            if getattr(self, "extended_from", None):  # config.yaml records the run's new length
                self.run.write_text(self.run.config_path,
                                    config_yaml(self.config, {**versions(), **model_source(self.config.model)}))
                self.run.append_log(f"extended from {self.extended_from} to {self.config.epochs} epochs")
            recorded = len(self.run.read_metrics())
            if recorded != self.epoch:
                raise UsageError(f"{self.run.metrics_path} holds {recorded} epoch(s) but {self.run.last_path} is at epoch "
                                 f"{self.epoch}; restore metrics.csv, or start afresh with --overwrite")
        else:
            if self.overwrite:
                self.run.clear()
            self.run.write_text(self.run.config_path, config_yaml(self.config, {**versions(), **model_source(self.config.model)}))
        distributed.barrier(self.ranks)

    def fit(self) -> RunResult:
        """Train for the configured epochs (or what remains of them), recording everything."""
        try:
            with self.run.locked(), deterministic_algorithms(self.config.deterministic):
                return self._fit_writing()
        finally:
            self.release_lock()

    def _fit_writing(self) -> RunResult:
        try:
            return self._fit()
        except OSError as error:
            # A full disk or a folder turned read-only: what was written before stays good.
            message = (f"cannot write to {self.run.path} ({error.strerror or error}); "
                       f"the last good checkpoint is kept: free space or fix the folder, then "
                       f"lrlab train --out {self.run.path} --resume")
            with contextlib.suppress(OSError):
                self.run.write_status("failed", epoch=self.epoch, reason=message)
            raise UsageError(message) from None

    def _fit(self) -> RunResult:
        self.prepare()
        quiet = self.quiet
        writer = self._tensorboard() if self.config.tensorboard and self.ranks.main else None
        if self.is_finished():
            return self._result("finished")
        self.run.write_status("running", epoch=self.epoch, pid=os.getpid())
        self.run.append_log(f"{'resumed after' if self.epoch else 'started'} epoch {self.epoch} of {self.config.epochs}: "
                            f"schedule {self.config.schedule}, optimizer {self.config.optimizer}, seed {self.config.seed}")
        # On an accelerator, reading the loss forces a wait; check for NaN less often there.
        check_every = 1 if self.device.type == "cpu" else 50
        try:
            while self.epoch < self.config.epochs:
                if self.should_pause():
                    return self.end_paused()
                self._run_epoch(quiet, writer, check_every)
        except Diverged as diverged:
            return self.end_diverged(diverged)
        except KeyboardInterrupt:
            self.end_interrupted()
            raise
        except (UsageError, OSError):
            raise
        except SystemExit as error:  # the user's code called sys.exit(): this run failed, and lrlab says so
            self.end_failed(error)
            raise UsageError(f"{self.run.path}: the model's code called sys.exit({error.code!r}) in epoch {self.epoch + 1}; "
                             f"the run is marked failed") from None
        except Exception as error:
            self.end_failed(error)
            raise
        finally:
            if writer is not None:
                writer.close()
        return self.end_finished()

    # How a run ends; a group of runs ends each of its runs the same way.

    def end_diverged(self, diverged: Diverged) -> RunResult:
        self.run.write_status("diverged", epoch=self.epoch + 1, step=diverged.step, loss=str(diverged.loss),
                              reason=f"loss became {diverged.loss} at step {diverged.step} (epoch {self.epoch + 1}); lower the LR")
        if not self.quiet:
            print(f"lrlab: run diverged at step {diverged.step} (epoch {self.epoch + 1}); best.pt keeps epoch {self.best.epoch}", file=sys.stderr)
        return self._result("diverged")

    def end_interrupted(self) -> None:
        self.run.write_status("interrupted", epoch=self.epoch, reason="stopped by the user")
        if self.ranks.main:
            print(f"\nlrlab: interrupted after epoch {self.epoch}; continue with: lrlab train --out {self.run.path} --resume", file=sys.stderr)

    def should_pause(self) -> bool:
        """Whether the run has reached the epoch it was asked to pause at (a study's rung)."""
        return self.config.pause_at_epoch is not None and self.epoch >= self.config.pause_at_epoch

    def end_paused(self) -> RunResult:
        self.run.write_status("paused", epoch=self.epoch, reason=f"paused at epoch {self.epoch} to be judged at a rung")
        return self._result("paused")

    def end_failed(self, error: BaseException) -> None:
        self.run.write_status("failed", epoch=self.epoch, reason=f"{type(error).__name__}: {error}")

    def end_finished(self) -> RunResult:
        self.run.write_status("finished", epoch=self.epoch, best_epoch=self.best.epoch)
        return self._result("finished")

    def is_finished(self) -> bool:
        """Whether the run has nothing left to train (after `prepare`)."""
        return self.epoch >= self.config.epochs and self.run.read_status().get("state") == "finished"

    def _run_epoch(self, quiet: bool, writer: Any, check_every: int) -> None:
        epoch = self.epoch + 1
        started = time.perf_counter()
        lr_at_start = self.optimizer.param_groups[0]["lr"]
        first_step = self.schedule.step_count
        self.train_loader.set_epoch(epoch)
        progress = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{self.config.epochs}", unit="step",
                        disable=quiet or not sys.stderr.isatty(), leave=False, file=sys.stderr, dynamic_ncols=True)
        with progress:
            train_loss, train_acc, step_lrs, step_losses = train_one_epoch(
                self.train_loader, self.forward_model, self.loss_fn, self.optimizer, self.schedule,
                first_step=first_step, autocast=self.autocast, progress=None if quiet else progress, check_every=check_every,
                ranks=self.ranks,
            )
        evaluated, correct, evaluated_weights = evaluate_run(self.model, self.optimizer, self.train_loader, self.evaluation_loaders,
                                                             self.loss_fn, autocast=self.autocast, ranks=self.ranks)
        metrics = {"train_loss": train_loss, "train_acc": train_acc, **evaluated}
        self.record_epoch(metrics, lr_at_start, first_step, step_lrs, step_losses, started, quiet, writer, correct,
                          evaluated_weights)

    def record_epoch(self, metrics: dict[str, float], lr_at_start: float, first_step: int, step_lrs: list[float],
                     step_losses: list[float], started: float, quiet: bool, writer: Any = None,
                     correct: dict[str, torch.Tensor] | None = None,
                     evaluated_weights: dict[str, torch.Tensor] | None = None) -> None:
        """After an epoch's training and evaluation (here or in a group): step the schedule, write rows and checkpoints.

        `metrics` holds train_*, test_* and, when the run has a validation split, val_* figures;
        `correct` which images of each split the model got right (see `evaluate_splits`);
        `evaluated_weights` the weights those figures belong to, which best.pt keeps (`evaluate_run`
        returns them; by default the model's own).
        """
        epoch = self.epoch + 1
        train_loss, train_acc = metrics["train_loss"], metrics["train_acc"]
        self.schedule.after_epoch(metrics)
        seconds = time.perf_counter() - started
        self.elapsed_seconds += seconds
        self.epoch = epoch
        self.run.append_steps([
            {"step": first_step + i + 1, "epoch": epoch, "lr": lr, "loss": loss}
            for i, (lr, loss) in enumerate(zip(step_lrs, step_losses))
        ])
        self.run.append_metrics({"epoch": epoch, "lr": lr_at_start, **metrics,
                                 "seconds": round(seconds, 3), "elapsed_seconds": round(self.elapsed_seconds, 3)})
        self.best.record(epoch, metrics, correct or {}, lambda: {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "epoch": epoch,
            **{name: metrics[name] for name in ("val_acc", "test_acc") if name in metrics},
            "model": self.model.state_dict() if evaluated_weights is None else evaluated_weights,
        })
        self.run.save_checkpoint(self.run.last_path, self._checkpoint())
        self.run.write_status("running", epoch=epoch, pid=os.getpid())
        if writer is not None:
            for name, value in metrics.items():
                writer.add_scalar(name, value, epoch)
            writer.add_scalar("lr", lr_at_start, epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)
        validation = f"val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:6.2%}  " if "val_acc" in metrics else ""
        line = (f"epoch {epoch:>3}/{self.config.epochs}  lr {lr_at_start:.4g}  train loss {train_loss:.4f} acc {train_acc:6.2%}  "
                f"{validation}test loss {metrics['test_loss']:.4f} acc {metrics['test_acc']:6.2%}  {seconds:.1f} s")
        self.run.append_log(line)
        if not quiet:
            tqdm.write(line, file=sys.stderr)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard needs the tensorboard package: pip install 'lrlab[tensorboard]'") from None
        return SummaryWriter(log_dir=str(self.run.path))

    def _result(self, state: str) -> RunResult:
        metrics = self.run.read_metrics()
        at_best = [row["test_acc"] for row in metrics if row["epoch"] == self.best.epoch]
        return RunResult(
            path=str(self.run.path), state=state, epochs_completed=self.epoch,
            best_test_acc=at_best[0] if at_best else 0.0, best_epoch=self.best.epoch,
            final_test_acc=metrics[-1]["test_acc"] if metrics else float("nan"),
            seconds=self.elapsed_seconds, selected_on="validation" if self.data.val_images is not None else "test",
        )


def find_lr(config: RunConfig, start: float = 1e-7, end: float = 10.0, steps: int = 100, mode: str = "exp",
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
          builder: Callable[..., nn.Module] | None = None) -> RunResult:
    """Train one model as `config` says, into `config.out`.

    Under torchrun every process calls this; together they train one run, written by rank 0.
    """
    trainer = Trainer(config, data, resume=resume, overwrite=overwrite, builder=builder)
    try:
        return trainer.fit()
    finally:
        distributed.stop(trainer.ranks)
