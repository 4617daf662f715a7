"""Seconds per epoch against training-set size and against model width, to predict what a run costs.

Each figure is a whole epoch (evaluation on the full test set and logging included) of a fresh
2-epoch run, the second epoch's time, so start-up effects are left out.

    python benchmarks/scaling.py
"""

from __future__ import annotations

import argparse
import tempfile

from lrlab import RunConfig, Trainer

TRAIN_IMAGES = 60_000


def epoch_seconds(scratch: str, data, width: int, fraction: float, batch_size: int) -> float:
    config = RunConfig(dataset="fashion-mnist", model="cnn", width=width, batch_size=batch_size, epochs=2,
                       limit_train=None if fraction == 1 else int(TRAIN_IMAGES * fraction),
                       optimizer="sgd:lr=0.05,momentum=0.9,weight_decay=5e-4", out=scratch, quiet=True)
    trainer = Trainer(config, data, overwrite=True)
    trainer.fit()
    return trainer.run.read_metrics()[-1]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    arguments = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="lrlab-scaling-")
    data = Trainer(RunConfig(dataset="fashion-mnist", out=scratch, quiet=True), overwrite=True).data
    print(f"cnn, batch {arguments.batch_size}, Fashion-MNIST, bf16 autocast + channels-last (the default)\n")
    print("| training images | width 32: seconds per epoch |")
    print("|---|---|")
    for fraction in (0.1, 0.25, 0.5, 1.0):
        seconds = epoch_seconds(scratch, data, 32, fraction, arguments.batch_size)
        print(f"| {int(TRAIN_IMAGES * fraction):,} ({fraction:.0%}) | {seconds:.2f} |", flush=True)
    print("\n| width | all 60,000 images: seconds per epoch |")
    print("|---|---|")
    for width in (8, 16, 32, 64):
        print(f"| {width} | {epoch_seconds(scratch, data, width, 1.0, arguments.batch_size):.2f} |", flush=True)


if __name__ == "__main__":
    main()
