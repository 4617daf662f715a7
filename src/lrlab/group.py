"""Which runs may share a pass over the data (the arms of one seed), how many `auto` puts in one, and
training such a group.

Each run of a group is an ordinary `Trainer` (its run directory, checkpoints, resume, its own torch
scheduler and its own fate); only the arithmetic is shared, through one `step.StackedStep`, in the
engine's one loop (`engine.fit_runs`), which records each run's epoch exactly as it would alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from lrlab.config import RunConfig
from lrlab.assembly import bf16_and_channels_last, load_run_data, resolve_device, run_model_factory
from lrlab.engine import RunResult, Trainer, fit_runs
from lrlab.optimizers import parse_optimizer
from lrlab.runs import RunDirectory
from lrlab.step import PlainStep, StackedStep
from lrlab.vectorized import ArmOptimizer, vectorizable
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
    """Train (or resume) `configs`, which share a `group_key`, together through one stacked step
    (`engine.fit_runs`); one RunResult per config.

    `builder` is the user's model class or function when it was given as a Python object."""
    keys = {group_key(config) for config in configs}
    if len(keys) != 1 or None in keys:
        raise ValueError("these runs cannot share a pass; group them with group_key first")
    on_epoch = on_epoch or [None] * len(configs)
    if data is None:
        data = load_run_data(configs[0])  # the group shares its data set: loaded once
    trainers = [Trainer(config, data, resume=RunDirectory(config.out).holds_run(), on_epoch=callback, builder=builder)
                for config, callback in zip(configs, on_epoch)]
    for trainer in trainers:
        trainer.drive(ArmOptimizer(trainer.optimizer_spec, trainer.model.parameters()))
    return fit_runs(trainers, stacked_step, take_over_lock)


def stacked_step(members: list[Trainer]) -> StackedStep:
    """One step for `members` (runs of one group at the same epoch), built from their models and ArmOptimizers."""
    first = members[0]
    return StackedStep([trainer.model for trainer in members], [trainer.optimizer for trainer in members],
                       first.loss_fn, first.autocast)


# A GPU's launch overhead is shared by more arms the larger the group; past this the kernels are
# large enough that adding arms buys little. On the CPU a group measured slower than its runs alone
# at every size tried (benchmarks/README.md), so `auto` tries a small one there.
MOST_RUNS_PER_PASS = {"cuda": 32, "cpu": 4}
CUDA_MEMORY_SHARE = 0.7  # of the free memory, the rest left for the allocator's fragmentation
# How `auto` decides: this many untimed steps (cuDNN autotuning, vmap's first trace), then this many
# timed, of one run alone and of a full group.
AUTO_WARMUP_STEPS = 2
AUTO_TIMED_STEPS = 5
# A grouped run's numbers drift from the same run's alone in the last bits (stacked kernels round
# differently), and five steps are a noisy clock: a group must be clearly faster to be chosen.
AUTO_MIN_SPEEDUP = 1.25


@dataclass(frozen=True)
class PassSize:
    """How many runs one pass trains, and why (for the line that tells the user how runs were grouped)."""

    runs: int
    why: str


def choose_runs_per_pass(config: RunConfig, data, builder: Callable | None = None, could_share: int = 2) -> PassSize:
    """`--runs-per-pass auto`: how many runs one pass trains, decided by measuring on this device. At most
    `could_share` (the most runs of one seed that could share a pass), and on a GPU as many as fit its
    free memory; a few steps of one run alone and of that many grouped are timed, and the faster per run kept.

    `builder`: the model, when it was given as a Python object.
    """
    why_alone = alone_reason(config)
    if why_alone is not None:
        return PassSize(1, f"auto: {why_alone}")
    if could_share < 2:
        return PassSize(1, "auto: no two runs of a seed can share a pass")
    if data is None:
        return PassSize(1, "auto: no data set in hand to measure a group on")
    device = resolve_device(config.device)
    arms = min(could_share, MOST_RUNS_PER_PASS.get(device.type, 1))
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        arms = min(arms, int(CUDA_MEMORY_SHARE * free // _cuda_bytes_per_run(config, data, device, builder)))
    if arms < 2:
        return PassSize(1, f"auto: two runs do not fit the {device.type}'s free memory" if device.type == "cuda"
                        else f"auto: runs are not grouped on {device.type}")
    return measure_grouping(config, data, device, arms, builder)


def measure_grouping(config: RunConfig, data, device: torch.device, arms: int, builder: Callable | None = None) -> PassSize:
    """Time a few training steps of one run alone and of `arms` runs grouped, on `device`, and keep
    the faster per run; a grouped step that fails (it has not run on every device) means one at a time.

    The steps train fresh models on random images, with the global RNG put back afterwards.
    """
    from torch import nn

    from lrlab.optimizers import build_optimizer

    spec = parse_optimizer(config.optimizer)
    use_bf16, channels_last = bf16_and_channels_last(config, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16, cache_enabled=False)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        build = run_model_factory(config, data, builder, check=False)
        images = torch.rand(config.batch_size, data.channels, *data.image_size, device=device).to(memory_format=memory_format)
        labels = torch.randint(0, data.num_classes, (config.batch_size,), device=device)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        model = build().to(device, memory_format=memory_format)
        alone_step = PlainStep(model, build_optimizer(spec, model.parameters()), loss_fn, autocast)
        alone = _seconds_per_step(lambda: alone_step.train(images, labels), device)
        try:
            models = [build().to(device, memory_format=memory_format) for _ in range(arms)]
            grouped_step = StackedStep(models, [ArmOptimizer(spec, m.parameters()) for m in models], loss_fn, autocast)
            grouped = _seconds_per_step(lambda: grouped_step.train(images, labels), device) / arms
        except Exception as error:  # noqa: BLE001 - any failure of the grouped path means: train alone
            first_line = str(error).splitlines()[0] if str(error) else ""
            return PassSize(1, f"auto: a grouped step failed on {device.type} ({type(error).__name__}: {first_line[:80]}), "
                               f"so one at a time")
    ratio = alone / grouped
    measured = (f"auto: {arms} runs grouped measured {ratio:.2f}x as fast per run as one alone on {device.type} "
                f"({AUTO_TIMED_STEPS} steps each way)")
    if ratio >= AUTO_MIN_SPEEDUP:
        return PassSize(arms, measured)
    return PassSize(1, f"{measured}, under the {AUTO_MIN_SPEEDUP:g}x a group must gain, so one at a time")


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
    """The peak memory one arm of a stacked step takes for a training step (its optimizer's state
    included), measured on one batch, plus the run's own model, kept for checkpoints."""
    from torch import nn

    model = run_model_factory(config, data, builder)().to(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.precision != "fp32")

    step = StackedStep([model], [ArmOptimizer(parse_optimizer(config.optimizer), model.parameters())], nn.CrossEntropyLoss(),
                       autocast)
    images = torch.zeros(config.batch_size, data.channels, *data.image_size, device=device)
    labels = torch.zeros(config.batch_size, dtype=torch.long, device=device)
    step.train(images, labels)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return torch.cuda.max_memory_allocated(device) - before + parameter_bytes
