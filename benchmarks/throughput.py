"""lrlab's training throughput against the tutorial loop and Lightning, and each one's accuracy after the same epochs.

Same model (lrlab's `cnn`), batch size, data (Fashion-MNIST), optimizer and number of steps for
every peer. Throughput is the median of `--repeats` interleaved measurements, reported as a ratio
to the tutorial loop measured in the same run. Nothing here is asserted; it prints a table.

    python benchmarks/throughput.py                      # the figures in benchmarks/README.md
    python benchmarks/throughput.py --steps 20 --repeats 1 --epochs 0   # a quick look
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import peers

from lrlab import RunConfig, Trainer, train

LR = 0.05


def lrlab_config(arguments: argparse.Namespace, out: str, **changes) -> RunConfig:
    return RunConfig(dataset="fashion-mnist", model="cnn", width=arguments.width, batch_size=arguments.batch_size,
                     optimizer=f"sgd:lr={LR},momentum=0.9,weight_decay=5e-4", out=out, quiet=True, **changes)


def lrlab_images_per_second(arguments: argparse.Namespace, steps: int, precision: str, scratch: Path) -> float:
    """`steps` training batches through Trainer.fit, the whole of it timed (a 1-batch evaluation and checkpoints included)."""
    config = lrlab_config(arguments, str(scratch / f"lrlab-{precision}"), epochs=1, limit_train=steps * arguments.batch_size,
                          limit_test=arguments.batch_size, precision=precision,
                          channels_last=None if precision == "auto" else False)
    trainer = Trainer(config, overwrite=True)
    started = time.perf_counter()
    trainer.fit()
    return steps * arguments.batch_size / (time.perf_counter() - started)


def tutorial_images_per_second(arguments: argparse.Namespace, steps: int, root: Path) -> float:
    train_loader, _ = peers.tutorial_loaders(root, arguments.batch_size, seed=0)
    model = peers.cnn(arguments.width, seed=0)
    optimizer = peers.sgd(model, LR)
    started = time.perf_counter()
    peers.tutorial_train(train_loader, model, nn.CrossEntropyLoss(), optimizer, max_steps=steps)
    return steps * arguments.batch_size / (time.perf_counter() - started)


def lightning_images_per_second(arguments: argparse.Namespace, steps: int, root: Path) -> float:
    train_loader, _ = peers.tutorial_loaders(root, arguments.batch_size, seed=0)
    model = peers.cnn(arguments.width, seed=0)
    started = time.perf_counter()
    peers.lightning_fit(model, train_loader, LR, max_steps=steps)
    return steps * arguments.batch_size / (time.perf_counter() - started)


def accuracy_after(arguments: argparse.Namespace, root: Path, scratch: Path) -> dict[str, list[float]]:
    """Final test accuracy of each peer after `--epochs` epochs (lrlab over several seeds, to know the noise)."""
    found: dict[str, list[float]] = {}
    train_loader, test_loader = peers.tutorial_loaders(root, arguments.batch_size, seed=0)
    model = peers.cnn(arguments.width, seed=0)
    optimizer = peers.sgd(model, LR)
    for _ in range(arguments.epochs):
        peers.tutorial_train(train_loader, model, nn.CrossEntropyLoss(), optimizer)
    found["tutorial loop"] = [peers.tutorial_test(test_loader, model)]
    print(f"  tutorial loop: {found['tutorial loop'][0]:.4f}", file=sys.stderr)
    model = peers.cnn(arguments.width, seed=0)
    peers.lightning_fit(model, train_loader, LR, max_epochs=arguments.epochs)
    found["Lightning"] = [peers.tutorial_test(test_loader, model)]
    print(f"  Lightning: {found['Lightning'][0]:.4f}", file=sys.stderr)
    found["lrlab"] = []
    for seed in range(arguments.seeds):
        config = lrlab_config(arguments, str(scratch / f"acc-{seed}"), epochs=arguments.epochs, seed=seed)
        found["lrlab"].append(train(config, overwrite=True).final_test_acc)
        print(f"  lrlab seed {seed}: {found['lrlab'][-1]:.4f}", file=sys.stderr)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="training steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3, help="epochs for the accuracy check (0 skips it)")
    parser.add_argument("--seeds", type=int, default=3, help="lrlab seeds in the accuracy check")
    arguments = parser.parse_args()

    root = peers.torchvision_root(arguments.fashion_dir)
    scratch = Path(tempfile.mkdtemp(prefix="lrlab-bench-runs-"))
    measures = {
        "tutorial loop": lambda steps: tutorial_images_per_second(arguments, steps, root),
        "Lightning": lambda steps: lightning_images_per_second(arguments, steps, root),
        "lrlab (fp32, NCHW)": lambda steps: lrlab_images_per_second(arguments, steps, "fp32", scratch),
        "lrlab (default: bf16 autocast, channels-last)": lambda steps: lrlab_images_per_second(arguments, steps, "auto", scratch),
    }
    for name, measure in measures.items():  # warm-up: kernel selection, first-touch allocations
        measure(3)
    rates: dict[str, list[float]] = {name: [] for name in measures}
    for repeat in range(arguments.repeats):
        for name, measure in measures.items():
            rates[name].append(measure(arguments.steps))
            print(f"  repeat {repeat + 1}: {name}: {rates[name][-1]:.0f} images/s", file=sys.stderr)

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}")
    print(f"cnn width {arguments.width}, batch {arguments.batch_size}, {arguments.steps} steps per measurement, "
          f"median of {arguments.repeats} interleaved repeats\n")
    tutorial = statistics.median(rates["tutorial loop"])
    print("| loop | training images/s (median) | range | vs tutorial loop |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} | {median / tutorial:.2f}x |")
    if arguments.epochs:
        print(f"\nfinal test accuracy after {arguments.epochs} epochs (SGD lr {LR}, momentum 0.9, constant LR):\n")
        accuracy = accuracy_after(arguments, root, scratch)
        print("| loop | seeds | final test accuracy |")
        print("|---|---|---|")
        for name, values in accuracy.items():
            spread = f" (mean; std {statistics.stdev(values):.4f}, range {min(values):.4f}-{max(values):.4f})" if len(values) > 1 else ""
            print(f"| {name} | {len(values)} | {statistics.mean(values):.4f}{spread} |")


if __name__ == "__main__":
    main()
