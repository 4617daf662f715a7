"""Seconds per model-epoch trained in a group (one pass for K arms) against each run alone, in the same run.

Fashion-MNIST, lrlab's `cnn`, batch 128, SGD with momentum; the arms differ in schedule, as in a
comparison. Each measurement trains `--steps` batches (a slice of the training set), alone through
`engine.train_epoch` with a plain step and batched through the same loop with a stacked step
(`group.stacked_step`), and reports the time per
model: alone it is the epoch's time, batched the group's time divided by K. The epoch figure is
scaled from the slice to the 469 batches of a full epoch. Repeats are interleaved (alone, K=1,
K=5, ... then again), after one warm-up of each, and the median and range are printed.

    python benchmarks/batched.py                        # the figures in benchmarks/README.md
    python benchmarks/batched.py --arms 1 5 --steps 10 --repeats 1    # a quick look
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from dataclasses import replace

import torch

from lrlab import RunConfig
from lrlab.assembly import load_run_data
from lrlab.engine import Trainer, train_epoch
from lrlab.group import stacked_step
from lrlab.vectorized import ArmOptimizer

SCHEDULES = ["constant", "step:step_size=5,gamma=0.5", "cosine:T_max=50", "plateau:mode=min,factor=0.5,patience=5",
             "exponential:gamma=0.95"]
FULL_EPOCH_BATCHES = 469  # Fashion-MNIST's 60,000 images in batches of 128


def trainers(arguments: argparse.Namespace, arms: int, data, scratch: str) -> list[Trainer]:
    base = RunConfig(dataset="fashion-mnist", model="cnn", width=arguments.width, batch_size=128,
                     optimizer="sgd:lr=0.05,momentum=0.9,weight_decay=5e-4", epochs=20, precision=arguments.precision,
                     limit_train=arguments.steps * 128, limit_test=128, quiet=True)
    made = []
    for arm in range(arms):
        config = replace(base, schedule=SCHEDULES[arm % len(SCHEDULES)], out=f"{scratch}/{arms}-{arm}")
        made.append(Trainer(config, data, overwrite=True))
    return made


def seconds_alone(arguments: argparse.Namespace, data, scratch: str) -> float:
    trainer = trainers(arguments, 1, data, scratch)[0]
    started = time.perf_counter()
    train_epoch(trainer.train_loader, trainer.plain_step(), [trainer.schedule], first_step=0)
    return time.perf_counter() - started


def seconds_per_model_batched(arguments: argparse.Namespace, arms: int, data, scratch: str) -> float:
    group = trainers(arguments, arms, data, scratch)
    for trainer in group:
        trainer.drive(ArmOptimizer(trainer.optimizer_spec, trainer.model.parameters()))
    started = time.perf_counter()
    train_epoch(group[0].train_loader, stacked_step(group), [trainer.schedule for trainer in group], first_step=0)
    return (time.perf_counter() - started) / arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", type=int, nargs="+", default=[1, 5, 15], help="group sizes K to measure")
    parser.add_argument("--steps", type=int, default=30, help="training batches per measurement (a slice of an epoch)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=None, help="cnn width (default: the cnn's own, 32)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    arguments = parser.parse_args()
    data = load_run_data(RunConfig(dataset="fashion-mnist"))
    measures = {"alone": lambda scratch: seconds_alone(arguments, data, scratch)}
    for arms in arguments.arms:
        measures[f"K={arms}"] = lambda scratch, arms=arms: seconds_per_model_batched(arguments, arms, data, scratch)
    times: dict[str, list[float]] = {name: [] for name in measures}
    with tempfile.TemporaryDirectory() as scratch:
        for name, measure in measures.items():
            measure(scratch)  # warm-up
        for _ in range(arguments.repeats):
            for name, measure in measures.items():
                times[name].append(measure(scratch) * FULL_EPOCH_BATCHES / arguments.steps)
    if torch.cuda.is_available():
        machine = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    else:
        machine = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                       platform.processor()) + f", {torch.get_num_threads()} torch threads"
    print(f"machine: {machine}, torch {torch.__version__}; cnn width {arguments.width or 32}, batch 128, precision "
          f"{arguments.precision}; {arguments.steps} batches per measurement scaled to a {FULL_EPOCH_BATCHES}-batch epoch, "
          f"median and range of {arguments.repeats} interleaved repeats\n")
    alone = times.pop("alone")
    print("| arms K | alone: s per model-epoch | batched: s per model-epoch | speed-up per run |")
    print("|---|---|---|---|")
    for name, batched in times.items():
        print(f"| {name.removeprefix('K=')} | {statistics.median(alone):.1f} ({min(alone):.1f}-{max(alone):.1f}) | "
              f"{statistics.median(batched):.1f} ({min(batched):.1f}-{max(batched):.1f}) | "
              f"{statistics.median(alone) / statistics.median(batched):.2f}x |")


if __name__ == "__main__":
    main()
