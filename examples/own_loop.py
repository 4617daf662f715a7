"""Keep your own training loop and let lrlab drive the learning rate: `lrlab.Schedule`.

The same driver lrlab trains with: any torch scheduler by its spec, stepped per batch or per epoch
as the spec says, with a warmup in front of anything (ReduceLROnPlateau included).

    python examples/own_loop.py
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lrlab

EPOCHS = 6


def digits_loaders() -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    labels = torch.tensor(digits.target)
    train = TensorDataset(images[:1500], labels[:1500])
    test = TensorDataset(images[1500:], labels[1500:])  # held out: plays the validation set here
    return DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)), DataLoader(test, batch_size=512)


@torch.no_grad()
def held_out_loss(model: nn.Module, loader: DataLoader, loss_fn: nn.Module) -> float:
    model.eval()
    return sum(loss_fn(model(x), y).item() * len(y) for x, y in loader) / len(loader.dataset)


def main() -> None:
    torch.manual_seed(0)
    train_loader, test_loader = digits_loaders()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = lrlab.Schedule("warmup(linear,epochs=1)+plateau:factor=0.5,patience=0", optimizer,
                              epochs=EPOCHS, steps_per_epoch=len(train_loader))
    for epoch in range(1, EPOCHS + 1):
        model.train()
        for images, labels in train_loader:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.after_step()  # per-batch schedules and the warmup move here
        loss = held_out_loss(model, test_loader, loss_fn)
        schedule.after_epoch({"val_loss": loss})  # per-epoch schedules move here; plateau reads val_loss
        print(f"epoch {epoch}  held-out loss {loss:.4f}  next lr {optimizer.param_groups[0]['lr']:.4g}")


if __name__ == "__main__":
    main()
