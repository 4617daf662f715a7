"""A user's models and data sets, each careless or hostile in one way, for tests/test_hostile_input.py."""

import sys

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset


def linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


class TupleInTraining(nn.Module):
    """Logits in eval mode, (logits, auxiliary) in training mode, as torchvision's googlenet gives."""

    def __init__(self):
        super().__init__()
        self.head = linear()

    def forward(self, images):
        logits = self.head(images)
        return (logits, logits) if self.training else logits


class IntegerLogits(TupleInTraining):
    def forward(self, images):
        return self.head(images).round().long()


def frozen():
    return linear().requires_grad_(False)


def exits():
    sys.exit(3)


class ExitsInTraining(TupleInTraining):
    """Calls sys.exit at its third training step (the check before the run takes one)."""

    steps = 0

    def forward(self, images):
        if self.training:
            ExitsInTraining.steps += 1
            if ExitsInTraining.steps == 3:
                sys.exit(3)
        return self.head(images)


CACHED = []


def cached():
    """One model, built once and returned on every call."""
    if not CACHED:
        CACHED.append(linear())
    return CACHED[0]


class Items(Dataset):
    def __init__(self, images, labels, length=None):
        self.images, self.labels, self.length = images, labels, length

    def __len__(self):
        return len(self.labels) if self.length is None else self.length

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


def digits(change=None):
    """300 training and 100 test digits as float images; `change(train, test)` edits the [images, labels] lists first."""
    data = load_digits()
    images = torch.from_numpy(data.images).float().unsqueeze(1) / 16
    labels = [int(label) for label in data.target]
    train, test = [images[:300], labels[:300]], [images[300:400], labels[300:400]]
    if change:
        change(train, test)
    return Items(*train), Items(*test)


def huge_label():
    return digits(lambda train, test: train[1].__setitem__(5, 10**9))


def negative_length():
    train, test = digits()
    train.length = -1
    return train, test


def nan_in_training():
    return digits(lambda train, test: train[0][3].__setitem__((0, 0, 0), float("nan")))


def infinity_in_test():
    return digits(lambda train, test: test[0][2].__setitem__((0, 1, 1), float("inf")))


def labels_from_one():
    def shift(train, test):
        for split in (train, test):
            split[1] = [label + 1 for label in split[1]]

    return digits(shift)


def exits_data():
    sys.exit(0)


def keywords_only(**kwargs):
    """A model function that takes any keyword, as torchvision's builders do (`resnet18(**kwargs)`)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, kwargs["classes"]))
