"""Data sets by name (see NAMES), one module per source: `load_dataset` picks the module for a name.

Each source returns an `ImageData` holding its images in memory as uint8 tensors, except a folder
data set larger than the memory budget once decoded, which stays on disk and is decoded a batch at
a time (data/files.py).

Importing this package loads no torch (seconds of start-up): the names, tables and file locations
live in sources.py, and the sources, which need torch, are imported when a data set is loaded.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from lrlab import imports
from lrlab.config import memory_budget_bytes
from lrlab.data.sources import CIFAR_SOURCES, IDX_SOURCES, NAMES, TRAIN_IMAGES, describe_datasets
from lrlab.errors import UsageError
from lrlab.specs import suggestion

if TYPE_CHECKING:
    from lrlab.data.base import ImageData
    from lrlab.data.loader import BatchLoader

# Loaded on first use, as lrlab/__init__.py loads its torch names: `from lrlab.data import ImageData` still works.
_NEEDS_TORCH = {"ImageData": "lrlab.data.base", "BatchLoader": "lrlab.data.loader"}


def __getattr__(name: str):
    if name in _NEEDS_TORCH:
        return getattr(importlib.import_module(_NEEDS_TORCH[name]), name)
    raise AttributeError(f"module 'lrlab.data' has no attribute {name!r}")


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    test_fraction: float = 0.1,
    strict: bool = False,
    memory_budget: str | None = None,
) -> ImageData:
    """Load data set `name` (see NAMES), resized to `image_size` when one is given.

    Everything is held in memory, except a folder data set or the user's own Datasets (`file.py:NAME`)
    when larger than `memory_budget`.
    """
    # The sources need torch: imported here, so that importing the package stays instant.
    from lrlab.data import cifar, digits, folder, idx, synthetic, torch_datasets
    from lrlab.data.base import resize_images

    if name.startswith("folder:"):
        return folder.load(name.partition(":")[2], image_size, test_fraction, strict, memory_budget)
    if imports.is_import_path(name):
        return torch_datasets.load(name, image_size, memory_budget)
    if imports.is_python_object(name):
        raise UsageError(f"data set {name!r} was handed to lrlab.train or lrlab.compare as Python objects and cannot be "
                         f"loaded again; pass it again from Python, or name a function returning it (data.py:load)")
    if name in IDX_SOURCES:
        data = idx.load(name, data_dir)
    elif name in CIFAR_SOURCES:
        data = cifar.load(name, data_dir)
    elif name == "digits":
        data = digits.load()
    elif name == "synthetic":
        data = synthetic.load()
    else:
        raise UsageError(f"unknown data set {name!r}{suggestion(name, NAMES)}; known: {', '.join(NAMES)}")
    if image_size and data.image_size != (image_size, image_size):
        images = len(data.train_images) + len(data.test_images)
        # Resizing holds the whole set as float32, before and after.
        needed = 4 * images * data.channels * (image_size**2 + data.image_size[0] * data.image_size[1])
        budget = memory_budget_bytes(memory_budget)
        if needed > budget:
            raise UsageError(f"{name} resized to {image_size}x{image_size} takes about {needed / 2**30:,.1f} GiB in memory, "
                             f"more than the memory budget of {budget / 2**30:,.1f} GiB (--memory-budget); "
                             f"give a smaller --image-size")
        data.train_images, data.test_images = resize_images(data.train_images, image_size), resize_images(data.test_images, image_size)
    return data


def steps_per_epoch(dataset: str, batch_size: int, val_fraction: float = 0.0, limit_train: int | None = None,
                    data_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """(optimizer steps in one epoch, training images) of a run on `dataset`: read from a table for the
    built-in sources, by loading the data set otherwise."""
    from lrlab.data.loader import batches_per_epoch

    count = TRAIN_IMAGES.get(dataset)
    if count is None:
        count = len(load_dataset(dataset, data_dir).train_labels)
    if limit_train is not None:
        count = min(count, limit_train)
    if val_fraction:
        count -= max(1, round(val_fraction * count))  # what split_validation holds out
    return batches_per_epoch(count, batch_size), count


__all__ = ["NAMES", "TRAIN_IMAGES", "BatchLoader", "ImageData", "describe_datasets", "load_dataset", "steps_per_epoch"]
