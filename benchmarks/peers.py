"""The peers lrlab is measured against, written the way their users write them.

- the tutorial loop: the PyTorch quickstart's `train()` / `test()` over torchvision's FashionMNIST
  with `ToTensor()` and `Normalize`, and a `DataLoader(shuffle=True)`;
- Lightning: the same model in a `LightningModule`, fitted by `pytorch_lightning.Trainer`.

Both train lrlab's own `cnn`, so only the loop around the model differs.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import Compose, Normalize, ToTensor

from lrlab.models import model_factory

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Fashion-MNIST's training-set mean and standard deviation, as tutorials hard-code them.
MEAN, STD = 0.2860, 0.3530


def torchvision_root(fashion_dir: Path) -> Path:
    """A folder laid out as torchvision's FashionMNIST expects, from the .gz files lrlab reads."""
    root = Path(tempfile.mkdtemp(prefix="lrlab-bench-"))
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        with gzip.open(fashion_dir / f"{name}.gz") as source, open(raw / name, "wb") as target:
            shutil.copyfileobj(source, target)
    return root


def tutorial_loaders(root: Path, batch_size: int, seed: int, workers: int = 0,
                     pin_memory: bool = False) -> tuple[DataLoader, DataLoader]:
    """The quickstart's loaders; `workers` and `pin_memory` as a user who tunes them for a GPU sets them."""
    transform = Compose([ToTensor(), Normalize((MEAN,), (STD,))])
    train = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
    test = datasets.FashionMNIST(root, train=False, download=False, transform=transform)
    generator = torch.Generator().manual_seed(seed)
    return (DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=workers,
                       pin_memory=pin_memory, persistent_workers=workers > 0),
            DataLoader(test, batch_size=1000))


def cnn(width: int, seed: int) -> nn.Module:
    build = model_factory("cnn", {"width": width}, channels=1, image_size=(28, 28), num_classes=10)
    torch.manual_seed(seed)  # after the factory's trial build, as the Trainer does: the same weights as lrlab's run
    return build()


def sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def tutorial_train(dataloader: DataLoader, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                   max_steps: int | None = None, device: str = "cpu") -> None:
    """The quickstart's train(): forward, backward, step, and a loss printout every 100 batches."""
    model.train()
    for batch, (X, y) in enumerate(dataloader):
        X, y = X.to(device), y.to(device)
        pred = model(X)
        loss = loss_fn(pred, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if batch % 100 == 0:
            loss.item()  # the quickstart prints it; reading it is the cost, printing would clutter
        if max_steps is not None and batch + 1 >= max_steps:
            return


def tutorial_test(dataloader: DataLoader, model: nn.Module) -> float:
    """The quickstart's test(): accuracy over the whole test set."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for X, y in dataloader:
            correct += (model(X).argmax(1) == y).type(torch.float).sum().item()
    return correct / len(dataloader.dataset)


def lightning_fit(model: nn.Module, train: DataLoader, lr: float, max_steps: int = -1, max_epochs: int | None = None,
                  accelerator: str = "cpu", epoch_seconds: list[float] | None = None) -> None:
    """Lightning's fit; with `epoch_seconds`, each training epoch's wall seconds are appended to it."""
    import pytorch_lightning as pl

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            if epoch_seconds is not None:
                if accelerator == "gpu":
                    torch.cuda.synchronize()
                epoch_seconds.append(time.perf_counter() - self.started)

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch, batch_index):
            images, labels = batch
            loss = self.loss_fn(self.model(images), labels)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return sgd(self.model, lr)

    trainer = pl.Trainer(max_steps=max_steps, max_epochs=max_epochs, accelerator=accelerator, devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[EpochClock()])
    trainer.fit(Classifier(), train)
