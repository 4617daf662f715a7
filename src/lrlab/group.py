"""A group of runs that see the same batches (the arms of one seed), trained in one pass over the data.

Each run is an ordinary `Trainer` (its run directory, checkpoints, resume, its own torch scheduler
and its own fate); only the arithmetic is shared: the arms' models are stacked (`StackedModel`)
and stepped by one `VectorOptimizer`. At the end of every epoch each arm's weights and optimizer
state go back into its Trainer, which evaluates nothing itself but records the epoch exactly as a
run trained alone would (`Trainer.record_epoch`). An arm whose loss turns NaN leaves the group
at once and ends `diverged`; the others go on.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from lrlab.config import RunConfig
from lrlab.engine import Diverged, RunResult, Trainer, deterministic_algorithms, resolve_device, run_model_factory
from lrlab.errors import UsageError
from lrlab.optimizers import parse_optimizer
from lrlab.runs import RunDirectory
from lrlab.stacked import StackedModel
from lrlab.vectorized import ArmOptimizer, VectorOptimizer, vectorizable
from lrlab.vectorized import group_key as optimizer_group_key

# What may differ between the runs of one group: how they step, and where they write.
PER_RUN_FIELDS = ("schedule", "optimizer", "out", "quiet")


def alone_reason(config: RunConfig) -> str | None:
    """Why the run `config` describes must train alone, or None when it can share a pass."""
    spec = parse_optimizer(config.optimizer)
    if not vectorizable(spec):
        return f"its optimizer ({spec.text}) is not stepped in groups; SGD and AdamW are (without dampening, amsgrad, maximize)"
    if spec.arguments.get("lr") == "auto":
        return "its LR is picked by a range test of its own (lr=auto)"
    if config.tensorboard:
        return "it writes TensorBoard events, which a group does not"
    return None


def group_key(config: RunConfig) -> tuple | None:
    """Runs with equal keys can share a pass; None for a run that must train alone (`alone_reason`)."""
    if alone_reason(config) is not None:
        return None
    spec = parse_optimizer(config.optimizer)
    shared = replace(config, **{name: "" for name in PER_RUN_FIELDS if name != "quiet"}, quiet=True)
    return (tuple(sorted(shared.to_dict().items(), key=lambda item: item[0])), optimizer_group_key(spec))


def train_group(configs: list[RunConfig], data=None, on_epoch: list[Callable | None] | None = None,
                take_over_lock: bool = False, builder: Callable | None = None) -> list[RunResult]:
    """Train (or resume) `configs`, which share a `group_key`, together; one RunResult per config.

    `builder` is the user's model class or function when it was given as a Python object."""
    keys = {group_key(config) for config in configs}
    if len(keys) != 1 or None in keys:
        raise ValueError("these runs cannot share a pass; group them with group_key first")
    on_epoch = on_epoch or [None] * len(configs)
    trainers = [Trainer(config, data, resume=RunDirectory(config.out).holds_run(), on_epoch=callback,
                        take_over_lock=take_over_lock, builder=builder)
                for config, callback in zip(configs, on_epoch)]
    for trainer in trainers:
        trainer.drive(ArmOptimizer(trainer.optimizer_spec, trainer.model.parameters()))
    return GroupTrainer(trainers).fit(take_over_lock)


# Measured with benchmarks/batched.py on an idle machine (benchmarks/README.md): on the CPU a run
# trained in a group of 5 takes about 3x as long as the same run alone (vmap's layout copies around
# the grouped convolutions and BatchNorm cost more than the arms share), so there each run trains
# alone and --workers is what spreads runs over the cores.
CPU_RUNS_PER_PASS = 1
# A GPU's launch overhead is shared by more arms the larger the group; past this the kernels are
# large enough that adding arms buys little.
MAX_CUDA_RUNS_PER_PASS = 32
CUDA_MEMORY_SHARE = 0.7  # of the free memory, the rest left for the allocator's fragmentation
# How `auto` decides on a GPU: this many untimed steps (cuDNN autotuning, vmap's first trace), then
# this many timed, of one run alone and of a full group.
AUTO_WARMUP_STEPS = 2
AUTO_TIMED_STEPS = 5


@dataclass(frozen=True)
class PassSize:
    """How many runs one pass trains, and why (for the line that tells the user how runs were grouped)."""

    runs: int
    why: str


def auto_runs_per_pass(config: RunConfig, data, builder: Callable | None = None) -> int:
    """How many runs one pass should train (`choose_runs_per_pass`); `builder`: the model, when it was
    given as a Python object."""
    return choose_runs_per_pass(config, data, builder).runs


def choose_runs_per_pass(config: RunConfig, data, builder: Callable | None = None) -> PassSize:
    """One run at a time on the CPU (measured there, benchmarks/README.md); on a GPU, as many as fit
    its free memory if a few steps measured now show them faster per run grouped than alone, else one."""
    device = resolve_device(config.device)
    if device.type != "cuda":
        return PassSize(CPU_RUNS_PER_PASS, "auto on the CPU, where a group measured slower than its runs alone; "
                                           "--workers N spreads runs over the cores")
    why_alone = alone_reason(config)
    if why_alone is not None:
        return PassSize(1, f"auto: {why_alone}")
    fits = max(1, min(MAX_CUDA_RUNS_PER_PASS,
                      int(CUDA_MEMORY_SHARE * torch.cuda.mem_get_info(device)[0] // _cuda_bytes_per_run(config, data, device, builder))))
    if fits == 1:
        return PassSize(1, "auto: one run fills the GPU's free memory")
    return measure_grouping(config, data, device, fits, builder)


def measure_grouping(config: RunConfig, data, device: torch.device, arms: int, builder: Callable | None = None) -> PassSize:
    """Time a few training steps of one run alone and of `arms` runs grouped, on `device`, and keep
    the faster per run; a grouped step that fails (it has never been run on every device) means one at a time.

    The steps train fresh models on random images, with the global RNG put back afterwards.
    """
    from torch import nn

    from lrlab.optimizers import build_optimizer
    from lrlab.steps import eager_step

    spec = parse_optimizer(config.optimizer)
    channels_last = config.channels_last if config.channels_last is not None else device.type in ("cuda", "cpu")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type in ("cuda", "cpu"))

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16, cache_enabled=False)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        build = run_model_factory(config, data, builder, check=False)
        images = torch.rand(config.batch_size, data.channels, *data.image_size, device=device).to(memory_format=memory_format)
        labels = torch.randint(0, data.num_classes, (config.batch_size,), device=device)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        model = build().to(device, memory_format=memory_format)
        optimizer = build_optimizer(spec, model.parameters())
        alone = _seconds_per_step(lambda: eager_step(model, loss_fn, optimizer, images, labels, autocast), device)
        try:
            models = [build().to(device, memory_format=memory_format) for _ in range(arms)]
            stacked = StackedModel(models, loss_fn)
            vector = VectorOptimizer(stacked.parameter_list(), [ArmOptimizer(spec, m.parameters()) for m in models])

            def grouped_step() -> None:
                with autocast():
                    losses, _ = stacked.losses_and_logits(images, labels)
                vector.zero_grad()
                losses.sum().backward()
                vector.step()

            grouped = _seconds_per_step(grouped_step, device) / arms
        except Exception as error:  # noqa: BLE001 - any failure of the grouped path means: train alone
            first_line = str(error).splitlines()[0] if str(error) else ""
            return PassSize(1, f"auto: a grouped step failed on {device.type} ({type(error).__name__}: {first_line[:80]}), "
                               f"so one at a time")
    ratio = alone / grouped
    if ratio > 1:
        return PassSize(arms, f"auto: {arms} runs grouped measured {ratio:.2f}x as fast per run as one alone "
                              f"({AUTO_TIMED_STEPS} steps each way)")
    return PassSize(1, f"auto: {arms} runs grouped measured {ratio:.2f}x as fast per run as one alone "
                       f"({AUTO_TIMED_STEPS} steps each way), so one at a time")


def _seconds_per_step(step: Callable[[], object], device: torch.device) -> float:
    """Wall seconds per call of `step`, after AUTO_WARMUP_STEPS untimed calls, waiting for `device` at both ends."""
    for _ in range(AUTO_WARMUP_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(AUTO_TIMED_STEPS):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / AUTO_TIMED_STEPS


def _cuda_bytes_per_run(config: RunConfig, data, device: torch.device, builder: Callable | None) -> int:
    """The peak memory one arm of a stacked model takes for a training step, measured on one batch."""
    from torch import nn

    model = run_model_factory(config, data, builder)().to(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    stacked = StackedModel([model], nn.CrossEntropyLoss())
    images = torch.zeros(config.batch_size, data.channels, *data.image_size, device=device)
    labels = torch.zeros(config.batch_size, dtype=torch.long, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.precision != "fp32"):
        losses, _ = stacked.losses_and_logits(images, labels)
    losses.sum().backward()
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # Optimizer state (two buffers for AdamW) and the model kept for checkpoints come on top.
    return torch.cuda.max_memory_allocated(device) - before + 3 * parameter_bytes


@dataclass
class GroupEpoch:
    """What one epoch of a group gave each arm (indexed like the group's members)."""

    loss_sums: list[float]
    correct: list[int]
    seen: int
    step_lrs: list[list[float]]
    step_losses: list[list[float]]
    diverged: dict[int, Diverged] = field(default_factory=dict)


class GroupTrainer:
    """Carries out Trainers that share their batches, epoch by epoch, as one stacked model."""

    def __init__(self, trainers: list[Trainer]):
        self.trainers = trainers

    def fit(self, take_over_lock: bool = False) -> list[RunResult]:
        results: dict[int, RunResult] = {}
        with contextlib.ExitStack() as held:
            for trainer in self.trainers:
                held.enter_context(trainer.run.locked(take_over_lock))
                held.callback(trainer.release_lock)  # the lock each Trainer took when it was built
            held.enter_context(deterministic_algorithms(self.trainers[0].config.deterministic))
            for trainer in self.trainers:
                trainer.prepare()
            active = [trainer for trainer in self.trainers if not trainer.is_finished()]
            for trainer in [t for t in active if t.should_pause()]:
                results[id(trainer)] = trainer.end_paused()
            active = [t for t in active if id(t) not in results]
            for trainer in active:
                trainer.run.write_status("running", epoch=trainer.epoch, pid=os.getpid())
            try:
                while active:
                    # Runs resumed from checkpoints written at different epochs catch up first.
                    epoch = min(trainer.epoch for trainer in active)
                    members = [trainer for trainer in active if trainer.epoch == epoch]
                    for trainer, diverged in self._run_epoch(members).items():
                        results[id(trainer)] = trainer.end_diverged(diverged)
                    active = [t for t in active if id(t) not in results]
                    for trainer in [t for t in active if t.epoch >= t.config.epochs]:
                        results[id(trainer)] = trainer.end_finished()
                    for trainer in [t for t in active if id(t) not in results and t.should_pause()]:
                        results[id(trainer)] = trainer.end_paused()
                    active = [t for t in active if id(t) not in results]
            except KeyboardInterrupt:
                for trainer in active:
                    trainer.end_interrupted()
                raise
            except OSError as error:
                message = (f"cannot write the runs of this group ({error.strerror or error}); the last good "
                           f"checkpoints are kept: free space or fix the folders, then run the comparison again")
                for trainer in active:
                    with contextlib.suppress(OSError):
                        trainer.run.write_status("failed", epoch=trainer.epoch, reason=message)
                raise UsageError(message) from None
            except UsageError:
                raise
            except Exception as error:
                for trainer in active:
                    trainer.end_failed(error)
                raise
        return [results.get(id(trainer)) or trainer._result("finished") for trainer in self.trainers]

    def _run_epoch(self, members: list[Trainer]) -> dict[Trainer, Diverged]:
        """Train and evaluate `members` for one epoch; record the epoch of each arm that did not diverge."""
        first = members[0]
        started = time.perf_counter()
        lrs_at_start = [trainer.optimizer.param_groups[0]["lr"] for trainer in members]
        first_step = first.schedule.step_count
        stacked = StackedModel([trainer.model for trainer in members], first.loss_fn)
        optimizer = VectorOptimizer(stacked.parameter_list(), [trainer.optimizer for trainer in members])
        first.train_loader.set_epoch(first.epoch + 1)
        check_every = 1 if first.device.type == "cpu" else 50
        trained = train_group_epoch(first.train_loader, stacked, optimizer, [t.schedule for t in members],
                                    first_step=first_step, autocast=first.autocast, check_every=check_every)
        survivors = [index for index in range(len(members)) if index not in trained.diverged]
        stacked.copy_into(members[index].model for index in survivors)
        optimizer.export_state()
        evaluated = {split: evaluate_group(loader, stacked, autocast=first.autocast)
                     for split, loader in first.evaluation_loaders.items()}
        for position, index in enumerate(survivors):
            metrics = {"train_loss": trained.loss_sums[index] / trained.seen, "train_acc": trained.correct[index] / trained.seen}
            for split, (losses, accuracies, _) in evaluated.items():
                metrics[f"{split}_loss"], metrics[f"{split}_acc"] = losses[position], accuracies[position]
            correct = {split: hits[position] for split, (_, _, hits) in evaluated.items()}
            members[index].record_epoch(metrics, lrs_at_start[index], first_step, trained.step_lrs[index],
                                        trained.step_losses[index], started, quiet=True, correct=correct)
        return {members[index]: diverged for index, diverged in trained.diverged.items()}


def train_group_epoch(loader, stacked: StackedModel, optimizer: VectorOptimizer, schedules: list, *, first_step: int,
                      autocast: Callable = contextlib.nullcontext, check_every: int = 1) -> GroupEpoch:
    """One pass over `loader` for every arm at once: the shape of `engine.train_one_epoch`, per arm.

    An arm whose loss is not finite leaves the stack (and the optimizer) at the check that finds
    it; it cannot disturb the others before that, since no arm's numbers feed another's.
    """
    arms = stacked.arms
    device = stacked.parameter_list()[0].device
    alive = list(range(arms))
    step_losses = torch.full((len(loader), arms), math.nan, device=device)
    loss_sums = torch.zeros(arms, device=device)
    correct = torch.zeros(arms, device=device, dtype=torch.long)
    step_lrs: list[list[float]] = [[] for _ in range(arms)]
    diverged: dict[int, Diverged] = {}
    seen, checked, steps = 0, 0, 0
    rows = None
    for index, (images, labels) in enumerate(loader):
        for arm in alive:
            step_lrs[arm].append(schedules[arm].optimizer.param_groups[0]["lr"])
        with autocast():
            losses, logits = stacked.losses_and_logits(images, labels)
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        for arm in alive:
            schedules[arm].after_step()
        if rows is None or len(rows) != len(alive):  # made afresh only when an arm leaves: no copy to the device per step
            rows = torch.tensor(alive, device=device)
        losses = losses.detach().float()
        step_losses[index, rows] = losses
        loss_sums[rows] += losses * len(labels)
        correct[rows] += (logits.argmax(-1) == labels).sum(1)
        seen += len(labels)
        steps = index + 1
        if steps % check_every == 0 or steps == len(loader):
            alive = _drop_diverged(step_losses[checked:steps], alive, first_step + checked, diverged, stacked, optimizer)
            checked = steps
            if not alive:
                break
    losses_by_arm = step_losses[:steps].T.tolist()
    return GroupEpoch(loss_sums.tolist(), correct.tolist(), seen, step_lrs,
                      [losses_by_arm[arm] for arm in range(arms)], diverged)


def _drop_diverged(window: torch.Tensor, alive: list[int], first_step: int, diverged: dict[int, Diverged],
                   stacked: StackedModel, optimizer: VectorOptimizer) -> list[int]:
    """Mark each alive arm with a non-finite loss in `window` (steps after `first_step`) diverged; the rest go on."""
    finite = torch.isfinite(window[:, alive]).all(0).tolist()
    if all(finite):
        return alive
    for arm, ok in zip(alive, finite):
        if not ok:
            first_bad = int((~torch.isfinite(window[:, arm])).nonzero()[0])
            diverged[arm] = Diverged(first_step + first_bad + 1, float(window[first_bad, arm]))
    keep = [position for position, ok in enumerate(finite) if ok]
    if keep:
        stacked.keep(keep)
        optimizer.keep(keep, stacked.parameter_list())
    return [alive[position] for position in keep]


@torch.no_grad()
def evaluate_group(loader, stacked: StackedModel,
                   autocast: Callable = contextlib.nullcontext) -> tuple[list[float], list[float], torch.Tensor]:
    """Each arm's mean loss and accuracy over `loader`, as `engine.evaluate` gives one model's, and
    which images each arm got right (arms x images, on the CPU)."""
    arms = stacked.arms
    device = stacked.parameter_list()[0].device
    loss_sums = torch.zeros(arms, device=device)
    hits = []
    seen = 0
    per_arm_loss = torch.func.vmap(stacked.loss_fn, in_dims=(0, None))
    for images, labels in loader:
        if not len(labels):
            continue
        with autocast():
            logits = stacked.logits(images)
        loss_sums += per_arm_loss(logits.float(), labels) * len(labels)
        hits.append(logits.argmax(-1) == labels)
        seen += len(labels)
    right = torch.cat(hits, dim=1)
    # Divided in float64, as engine.evaluate divides the Python float it reads.
    return (loss_sums.double() / seen).tolist(), (right.sum(1).double() / seen).tolist(), right.cpu()
