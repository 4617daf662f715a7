"""What evaluation and logging add to an epoch: a whole `Trainer` epoch against `train_epoch` alone.

The whole epoch is the real thing (evaluation on the full test set, steps.csv and metrics.csv,
best.pt and last.pt, the progress bar); the bare one is the same training pass and nothing else.
Interleaved, median of `--repeats`.

    python benchmarks/overhead.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time

from lrlab import RunConfig, Trainer
from lrlab.engine import train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="lrlab-overhead-")
    config = RunConfig(dataset="fashion-mnist", model="cnn", width=arguments.width, batch_size=arguments.batch_size,
                       epochs=1, optimizer="sgd:lr=0.05,momentum=0.9,weight_decay=5e-4", out=scratch, quiet=False)
    data = Trainer(config, overwrite=True).data
    whole, bare = [], []
    for _ in range(arguments.repeats):
        with contextlib.redirect_stderr(io.StringIO()):  # the progress bar is drawn, and thrown away
            trainer = Trainer(config, data, overwrite=True)
            trainer.fit()
        whole.append(trainer.run.read_metrics()[-1]["seconds"])
        trainer = Trainer(config, data, overwrite=True)
        trainer.train_loader.set_epoch(1)
        started = time.perf_counter()
        train_epoch(trainer.train_loader, trainer.plain_step(), [trainer.schedule], first_step=0)
        bare.append(time.perf_counter() - started)
    print(f"cnn width {arguments.width}, batch {arguments.batch_size}, Fashion-MNIST (60,000 train, 10,000 test images), "
          f"median of {arguments.repeats}")
    print("| | seconds per epoch |")
    print("|---|---|")
    print(f"| training pass alone | {statistics.median(bare):.2f} |")
    print(f"| whole epoch (evaluation, CSVs, 2 checkpoints, progress bar) | {statistics.median(whole):.2f} |")
    print(f"| added by evaluation and logging | {100 * (statistics.median(whole) / statistics.median(bare) - 1):.1f}% |")


if __name__ == "__main__":
    main()
