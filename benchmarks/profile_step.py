"""Where a training step's time goes: torch.profiler over lrlab's loop, and the tutorial's DataLoader alone.

    python benchmarks/profile_step.py                 # cnn width 32, batch 256, 40 steps
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
import peers

from lrlab import RunConfig, Trainer
from lrlab.engine import train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    arguments = parser.parse_args()
    config = RunConfig(dataset="fashion-mnist", model=arguments.model, width=arguments.width, batch_size=arguments.batch_size,
                       epochs=1, limit_train=arguments.steps * arguments.batch_size, limit_test=arguments.batch_size,
                       optimizer="sgd:lr=0.05,momentum=0.9,weight_decay=5e-4", out=tempfile.mkdtemp(), quiet=True)
    trainer = Trainer(config, overwrite=True)
    trainer.train_loader.set_epoch(1)
    run = lambda: train_epoch(trainer.train_loader, trainer.plain_step(), [trainer.schedule], first_step=0)
    run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    print(f"lrlab, {arguments.model} width {arguments.width}, batch {arguments.batch_size}, {arguments.steps} steps, by own CPU time:")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    loader, _ = peers.tutorial_loaders(peers.torchvision_root(arguments.fashion_dir), arguments.batch_size, seed=0)
    started = time.perf_counter()
    for index, _ in enumerate(loader):
        if index + 1 == arguments.steps:
            break
    seconds = time.perf_counter() - started
    print(f"tutorial DataLoader alone (ToTensor + Normalize per image, default collate): "
          f"{arguments.steps * arguments.batch_size / seconds:,.0f} images/s, {1000 * seconds / arguments.steps:.1f} ms per batch")


if __name__ == "__main__":
    main()
