"""Does torch.compile speed up lrlab's training pass? Eager against compiled, same Trainer, same batches.

    python benchmarks/compile.py      # cnn width 32, batch 256, 40 steps, 3 repeats after a warm-up each
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from lrlab import RunConfig, Trainer
from lrlab.engine import train_epoch
from lrlab.step import PlainStep

STEPS, BATCH = 40, 256


def images_per_second(trainer: Trainer, model: torch.nn.Module) -> float:
    trainer.train_loader.set_epoch(1)
    started = time.perf_counter()
    train_epoch(trainer.train_loader, PlainStep(model, trainer.optimizer, trainer.loss_fn, trainer.autocast),
                [trainer.schedule], first_step=0)
    return STEPS * BATCH / (time.perf_counter() - started)


def main() -> None:
    config = RunConfig(dataset="fashion-mnist", model="cnn", width=32, batch_size=BATCH, epochs=1,
                       limit_train=STEPS * BATCH, limit_test=BATCH, optimizer="sgd:lr=0.05,momentum=0.9",
                       out=tempfile.mkdtemp(), quiet=True)
    trainer = Trainer(config, overwrite=True)
    for name, model in (("eager", trainer.model), ("torch.compile", torch.compile(trainer.model))):
        images_per_second(trainer, model)  # warm-up (compilation, for the compiled one)
        rates = [images_per_second(trainer, model) for _ in range(3)]
        print(f"{name}: {statistics.median(rates):,.0f} images/s (median of 3; {min(rates):,.0f}-{max(rates):,.0f})")


if __name__ == "__main__":
    main()
