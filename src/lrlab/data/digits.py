"""scikit-learn's embedded 8x8 handwritten digits: real images that need no download."""

from __future__ import annotations

import torch

from lrlab.data.base import ImageData

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load() -> ImageData:
    """The 1,797 digits, split once with a fixed seed and stratified by class (1,437 train, 360 test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixels are 0..16; scale to the 0..255 bytes every other source uses.
    images = torch.from_numpy((digits.images * (255 / 16)).round()).to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    train_index, test_index = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels.numpy()
    )
    train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
    return ImageData(
        "digits", images[train_index], labels[train_index], images[test_index], labels[test_index],
        [str(d) for d in range(10)], "scikit-learn (embedded)", flip_makes_sense=False,
    )
