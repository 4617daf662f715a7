"""Seconds per epoch on one device, in one run: the quickstart loop (DataLoader workers 0 and 8),
Lightning, and lrlab.

All train lrlab's `cnn` (width 32) on Fashion-MNIST with batch 128 and SGD (lr 0.05, momentum 0.9,
weight decay 5e-4), the article's StepLR run. Each loop trains `--epochs` epochs; the first is a
warm-up (cuDNN autotuning, worker start-up) and is left out of the median.
The peers' figure is the training epoch alone; lrlab's is its whole epoch (evaluation over the
10,000 test images and both checkpoints included), so the comparison does not favour lrlab.

    python benchmarks/gpu_epoch.py                                  # on a CUDA machine: the README's GPU table
    python benchmarks/gpu_epoch.py --device cpu --limit 2048 --epochs 2   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).parent))
import peers

from lrlab import RunConfig, train
from lrlab.runs import RunDirectory

LR = 0.05


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def quickstart_epochs(arguments: argparse.Namespace, root: Path, workers: int) -> list[float]:
    train_loader, _ = peers.tutorial_loaders(root, arguments.batch_size, seed=0, workers=workers,
                                             pin_memory=arguments.device == "cuda")
    if arguments.limit:
        train_loader = torch.utils.data.DataLoader(Subset(train_loader.dataset, range(arguments.limit)), batch_size=arguments.batch_size,
                                                   shuffle=True, num_workers=workers, pin_memory=arguments.device == "cuda")
    model = peers.cnn(arguments.width, seed=0).to(arguments.device)
    optimizer = peers.sgd(model, LR)
    seconds = []
    for _ in range(arguments.epochs):
        started = time.perf_counter()
        peers.tutorial_train(train_loader, model, nn.CrossEntropyLoss(), optimizer, device=arguments.device)
        synchronize(arguments.device)
        seconds.append(time.perf_counter() - started)
    return seconds


def lightning_epochs(arguments: argparse.Namespace, root: Path) -> list[float] | None:
    try:
        import pytorch_lightning  # noqa: F401
    except ImportError:
        return None
    train_loader, _ = peers.tutorial_loaders(root, arguments.batch_size, seed=0, workers=8, pin_memory=arguments.device == "cuda")
    if arguments.limit:
        train_loader = torch.utils.data.DataLoader(Subset(train_loader.dataset, range(arguments.limit)), batch_size=arguments.batch_size,
                                                   shuffle=True, num_workers=8, pin_memory=arguments.device == "cuda")
    seconds: list[float] = []
    peers.lightning_fit(peers.cnn(arguments.width, seed=0), train_loader, LR, max_epochs=arguments.epochs,
                        accelerator="gpu" if arguments.device == "cuda" else "cpu", epoch_seconds=seconds)
    return seconds


def lrlab_epochs(arguments: argparse.Namespace, scratch: Path) -> list[float]:
    config = RunConfig(dataset="fashion-mnist", model="cnn", width=arguments.width, batch_size=arguments.batch_size,
                       optimizer=f"sgd:lr={LR},momentum=0.9,weight_decay=5e-4", schedule="step:step_size=5,gamma=0.5",
                       epochs=arguments.epochs, limit_train=arguments.limit, device=arguments.device,
                       out=str(scratch / "lrlab"), quiet=True)
    train(config, overwrite=True)
    return [row["seconds"] for row in RunDirectory(config.out).read_metrics()]


def machine(device: str) -> str:
    described = f"torch {torch.__version__}, Python {platform.python_version()}"
    if device != "cuda":
        return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads), {described}"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        driver = "unknown"
    return f"{torch.cuda.get_device_name()}, driver {driver}, {described}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fashion-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per loop, the first one a warm-up (default: 4)")
    parser.add_argument("--limit", type=int, help="train on the first N images only (a quick check)")
    arguments = parser.parse_args()
    if arguments.epochs < 2:
        parser.error("--epochs should be at least 2: the first epoch is a warm-up")
    root = peers.torchvision_root(arguments.fashion_dir)
    scratch = Path(tempfile.mkdtemp(prefix="lrlab-gpu-epoch-"))
    loops = {
        "quickstart loop, workers 0": lambda: quickstart_epochs(arguments, root, 0),
        "quickstart loop, workers 8 (pinned on CUDA)": lambda: quickstart_epochs(arguments, root, 8),
        "Lightning (workers 8)": lambda: lightning_epochs(arguments, root),
        "lrlab": lambda: lrlab_epochs(arguments, scratch),
    }
    medians = {}
    for name, measure in loops.items():
        seconds = measure()
        if seconds is None:
            print(f"{name}: skipped (pytorch_lightning is not installed)", file=sys.stderr)
            continue
        medians[name] = (statistics.median(seconds[1:]), min(seconds[1:]), max(seconds[1:]))
        print(f"{name}: {', '.join(f'{s:.3f}' for s in seconds)} s per epoch", file=sys.stderr)
    best_peer = min(value[0] for name, value in medians.items() if not name.startswith("lrlab"))
    print(f"{machine(arguments.device)}; cnn width {arguments.width}, batch {arguments.batch_size}, "
          f"median of epochs 2-{arguments.epochs}" + (f", first {arguments.limit} images" if arguments.limit else ""))
    print("\n| loop | seconds per epoch (median) | range | best peer / this |")
    print("|---|---|---|---|")
    for name, (median, low, high) in medians.items():
        print(f"| {name} | {median:.3f} | {low:.3f}-{high:.3f} | {best_peer / median:.2f}x |")


if __name__ == "__main__":
    main()
