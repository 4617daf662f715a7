"""Data sets by name (see NAMES), one module per source: `load_dataset` picks the module for a name.

Each source returns an `ImageData` holding its images in memory as uint8 tensors, except a folder
data set larger than the memory budget once decoded, which stays on disk and is decoded a batch at
a time (data/files.py).
"""

from __future__ import annotations

import os

from lrlab import imports
from lrlab.config import memory_budget_bytes
from lrlab.data import cifar, digits, folder, idx, synthetic, torch_datasets
from lrlab.data.base import ImageData, cache_dir, resize_images
from lrlab.data.loader import BatchLoader
from lrlab.errors import UsageError
from lrlab.specs import suggestion

NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "synthetic", "folder:PATH", "FILE.py:NAME",
         "package.module:NAME")


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
    if name.startswith("folder:"):
        return folder.load(name.partition(":")[2], image_size, test_fraction, strict, memory_budget)
    if imports.is_import_path(name):
        return torch_datasets.load(name, image_size, memory_budget)
    if imports.is_python_object(name):
        raise UsageError(f"data set {name!r} was handed to lrlab.train or lrlab.compare as Python objects and cannot be "
                         f"loaded again; pass it again from Python, or name a function returning it (data.py:load)")
    if name in idx.SOURCES:
        data = idx.load(name, data_dir)
    elif name in cifar.SOURCES:
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


def describe_datasets(data_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(name, where it is or how to get it) for every built-in source, without loading any."""
    rows = []
    for name in idx.SOURCES:
        found = idx.locate(name, data_dir)
        rows.append((name, str(found[0].parent) if found else f"not found; downloads to {cache_dir(name)}"))
    for name in cifar.SOURCES:
        found = cifar.locate(name, data_dir)
        rows.append((name, str(found) if found else f"not found; downloads to {cache_dir(name)}"))
    rows.append(("digits", "embedded in scikit-learn (always available)"))
    rows.append(("synthetic", "generated (always available)"))
    rows.append(("folder:PATH", "your images: PATH/train/<class>/*, PATH/test/<class>/*, or PATH/<class>/*"))
    rows.append(("FILE.py:NAME", "your Datasets: NAME() returns (train, test) torch Datasets of (image, label)"))
    return rows


# Training images of each built-in source as it loads (before --limit-train and the validation split),
# so a schedule's preview knows the steps of an epoch without reading the data.
TRAIN_IMAGES = {"fashion-mnist": 60_000, "mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000, "digits": 1_437,
                "synthetic": 2_000}


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
