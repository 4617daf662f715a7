"""A user's own models, as a user would write them, for tests/test_own_model_and_data.py."""

import torch
from torch import nn


class Net(nn.Module):
    """A small conv net for 1 x 8 x 8 digits."""

    def __init__(self, width: int = 4, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(4 * width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def make_net(width: int = 4) -> nn.Module:
    return Net(width=width)


def not_a_model():
    return "a string"


a_built_model = Net()
