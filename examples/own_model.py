"""Which LR schedule suits *your* model on *your* data? Two schedules x two seeds, from Python.

The model class and the Dataset are written here, as yours would be; lrlab trains every schedule
with every seed from the same initial weights on the same batches, then reports the paired
differences with their intervals. Takes well under a minute on 2 CPU cores.

    python examples/own_model.py --out runs/own_model
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

import lrlab


class SmallConvNet(nn.Module):
    """Two conv layers and a linear head: stands for your network."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(8 * width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class HandwrittenDigits(Dataset):
    """scikit-learn's 8x8 digits as (image, label) pairs, 1,500 to train on and the rest to test: stands for your data."""

    def __init__(self, train: bool):
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8) in [0, 1]
        keep = slice(0, 1500) if train else slice(1500, None)
        self.images, self.labels = images[keep], digits.target[keep].tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/own_model", help="folder for the runs and the report")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run")
    arguments = parser.parse_args()

    result = lrlab.compare(
        model=SmallConvNet,
        data=(HandwrittenDigits(train=True), HandwrittenDigits(train=False)),
        schedules=["constant", "step:step_size=2,gamma=0.5"],
        seeds=[0, 1],
        epochs=arguments.epochs,
        batch_size=64,
        optimizer="sgd:lr=0.05,momentum=0.9",
        out=arguments.out,
    )
    for row in result.summary:  # numbers: accuracies in percent, None where a figure does not exist
        mean, low, high = row["final_acc_mean"], row["final_acc_ci95_low"], row["final_acc_ci95_high"]
        accuracy = "n/a" if mean is None else f"{mean:.2f}%" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")
        versus = "baseline" if row["diff_vs_baseline"] is None else f"{row['diff_vs_baseline']:+.2f} points"
        p = "-" if row["p_value"] is None else f"{row['p_value']:.3g}"
        print(f"{row['schedule']:>28}: final test accuracy {accuracy}, vs baseline {versus} (p {p})")
    print(result.verdict)
    print(f"report: {result.report_path}")


if __name__ == "__main__":
    main()
