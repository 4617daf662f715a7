"""The user's own map-style torch Datasets of (image, label): read once into memory, or read batch by
batch through a DataLoader when they would not fit the memory budget.

An image is a tensor (C, H, W) or a PIL image; a label is an int. uint8 images (and PIL images) are
kept as uint8 and scaled to [0, 1] by the loader, as lrlab's own data sets are; float images are
kept as float, as the Dataset gives them. Either way the loader then standardises each channel with
the mean and standard deviation of a fixed sample of the training images, so a Dataset that
normalises already is left (nearly) as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from lrlab import imports
from lrlab.config import memory_budget_bytes
from lrlab.data.base import ImageData, resize_images, sampled_statistics
from lrlab.errors import UsageError, clip, first_names

MAX_CLASSES = 100_000  # a label past this is a mistake (an id, a pixel value), not a class count


def load(path: str, image_size: int | None = None, memory_budget: str | None = None) -> ImageData:
    """Call the function `path` names (`file.py:NAME`, `package.module:NAME`) and read the (train, test) it returns."""
    make = imports.load(path, "--dataset")
    if not callable(make):
        raise UsageError(f"--dataset {path!r} is a {type(make).__name__}; it should name a function returning (train, test) Datasets")
    try:
        splits = make()
    except UsageError:
        raise
    except (Exception, SystemExit) as error:  # the user's code (sys.exit too): one line saying where it failed
        raise UsageError(f"--dataset {path!r}: calling it failed: {type(error).__name__}: {str(error).strip()[:200]}") from None
    return from_datasets(splits, path, image_size=image_size, memory_budget=memory_budget)


def from_datasets(splits: Any, name: str, *, image_size: int | None = None, memory_budget: str | None = None) -> ImageData:
    """An `ImageData` from a (train, test) pair of map-style Datasets, in memory when it fits `memory_budget`."""
    if not (isinstance(splits, (tuple, list)) and len(splits) == 2 and all(_is_dataset(s) for s in splits)):
        raise UsageError(f"data set {name!r} should be a (train, test) pair of map-style torch Datasets "
                         f"(with __len__ and __getitem__), got {_describe(splits)}")
    train, test = splits
    for split, dataset in (("training", train), ("test", test)):
        try:
            size = len(dataset)
        except (Exception, SystemExit) as error:  # a __len__ returning -1 or a float, or failing
            raise UsageError(f"data set {name!r}: len() of the {split} set failed ({type(error).__name__}: {clip(error, 120)}); "
                             f"__len__ should return the number of items") from None
        if size < 1:
            raise UsageError(f"data set {name!r}: the {split} set is empty")
    first = _image(train, 0, "training", name)
    size = (image_size, image_size) if image_size else tuple(first.shape[1:])
    per_image = first.shape[0] * size[0] * size[1] * first.element_size()
    in_bytes, budget = (len(train) + len(test)) * per_image, memory_budget_bytes(memory_budget)
    stream = in_bytes > budget
    if stream:
        print(f"lrlab: note: {name} takes {in_bytes / 2**20:,.1f} MiB in memory, more than the memory budget of "
              f"{budget / 2**20:,.1f} MiB (--memory-budget); reading it batch by batch with worker processes",
              file=sys.stderr)
    kind = (first.shape[0], first.shape[1:], first.dtype)
    read = [_streamed(d, split, name, kind, image_size) if stream else _in_memory(d, split, name, kind, image_size)
            for d, split in ((train, "training"), (test, "test"))]
    (train_images, train_labels), (test_images, test_labels) = read
    count = _class_count(name, train_labels, test_labels)
    classes = getattr(train, "classes", None)
    if not (isinstance(classes, Sequence) and len(classes) >= count and all(isinstance(c, str) for c in classes)):
        classes = [str(label) for label in range(count)]
    return ImageData(name, train_images, train_labels, test_images, test_labels, list(classes), name,
                     flip_makes_sense=True, statistics=sampled_statistics(train_images))


def _class_count(name: str, train_labels: torch.Tensor, test_labels: torch.Tensor) -> int:
    """How many outputs the model needs for these labels (the largest label + 1); refuses a label no
    class count could mean, and notes labels that leave classes empty or occur in the test set only."""
    for split, labels in (("training", train_labels), ("test", test_labels)):
        if int(labels.max()) >= MAX_CLASSES:
            raise UsageError(f"data set {name!r}: item {int(labels.argmax())} of the {split} set has label {int(labels.max()):,}; "
                             f"labels should number the classes 0, 1, 2, ... (at most {MAX_CLASSES:,} classes)")
    trained = set(torch.unique(train_labels).tolist())
    tested = set(torch.unique(test_labels).tolist())
    count = max(max(trained), max(tested)) + 1
    empty = sorted(set(range(count)) - trained - tested)
    if empty:
        print(f"lrlab: note: data set {name!r} has labels up to {count - 1} but none labelled "
              f"{first_names([str(label) for label in empty], 5)}: the model gets {count} outputs, {len(empty)} of them for "
              f"classes that never occur; number the classes 0 to {len(trained | tested) - 1} without gaps", file=sys.stderr)
    untrained = sorted(tested - trained)
    if untrained:
        print(f"lrlab: note: data set {name!r}: label(s) {first_names([str(label) for label in untrained], 5)} occur in the "
              f"test set only, so no run can learn them", file=sys.stderr)
    return count


def _is_dataset(thing: Any) -> bool:
    return hasattr(thing, "__getitem__") and hasattr(thing, "__len__") and not isinstance(thing, (str, bytes, torch.Tensor))


def _describe(thing: Any) -> str:
    if isinstance(thing, (tuple, list)):
        return f"a {type(thing).__name__} of {len(thing)}: " + ", ".join(type(t).__name__ for t in thing[:3])
    return f"a {type(thing).__name__}"


def _item(dataset: Any, index: int, split: str, name: str) -> tuple[Any, Any]:
    try:
        item = dataset[index]
    except (Exception, SystemExit) as error:
        raise UsageError(f"data set {name!r}: reading item {index} of the {split} set failed: "
                         f"{type(error).__name__}: {str(error).strip()[:200]}") from None
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise UsageError(f"data set {name!r}: item {index} of the {split} set is {_describe(item)}; "
                         f"each item should be an (image, label) pair")
    return item


def _as_image(image: Any, where: str) -> torch.Tensor:
    if isinstance(image, Image.Image):
        from torchvision.transforms.v2 import functional as TF  # torchvision takes seconds to import; only PIL images need it

        return TF.pil_to_tensor(image)
    if not isinstance(image, torch.Tensor):
        raise UsageError(f"{where}: the image is a {type(image).__name__}; give a tensor (C, H, W) or a PIL image")
    if image.dim() != 3:
        hint = " (add the channel dimension: image.unsqueeze(0))" if image.dim() == 2 else ""
        raise UsageError(f"{where}: the image has shape {tuple(image.shape)}; it should be (C, H, W){hint}")
    if image.dtype == torch.uint8:
        return image
    if image.dtype.is_floating_point:
        image = image.float()
        if not torch.isfinite(image).all():
            raise UsageError(f"{where}: the image holds NaN or infinite values; fix or drop it")
        return image
    raise UsageError(f"{where}: the image is {image.dtype}; give uint8 (0-255) or float images")


def _as_label(label: Any, where: str) -> int:
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.dtype.is_floating_point and label.dtype != torch.bool:
        label = label.item()
    elif hasattr(label, "dtype") and getattr(label, "shape", None) == () and str(label.dtype).startswith(("int", "uint")):
        label = int(label)  # a numpy integer
    if isinstance(label, bool) or not isinstance(label, int):
        raise UsageError(f"{where}: the label is {label!r} ({type(label).__name__}); labels should be ints 0, 1, 2, ...")
    if label < 0:
        raise UsageError(f"{where}: the label is {label}; labels should be ints from 0")
    return label


def _image(dataset: Any, index: int, split: str, name: str) -> torch.Tensor:
    return _checked(dataset, index, split, name)[0]


def _checked(dataset: Any, index: int, split: str, name: str, kind: tuple | None = None) -> tuple[torch.Tensor, int]:
    """Item `index` as (image, label), each checked; `kind` is (channels, (H, W), dtype) every image must share."""
    where = f"data set {name!r}, item {index} of the {split} set"
    image, label = _item(dataset, index, split, name)
    image, label = _as_image(image, where), _as_label(label, where)
    if kind is not None and (image.shape[0], image.shape[1:], image.dtype) != kind:
        raise UsageError(f"{where}: the image is {image.dtype} {tuple(image.shape)}, unlike the first training image "
                         f"({kind[2]} {(kind[0], *kind[1])}); every image should have the same shape and type")
    return image, label


def _in_memory(dataset: Any, split: str, name: str, kind: tuple, image_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    items = [_checked(dataset, index, split, name, kind) for index in range(len(dataset))]
    images = torch.stack([image for image, _ in items])
    if image_size:
        images = resize_images(images, image_size)
    return images, torch.tensor([label for _, label in items], dtype=torch.long)


def _streamed(dataset: Any, split: str, name: str, kind: tuple, image_size: int | None) -> tuple[DatasetImages, torch.Tensor]:
    # The loader needs every label up front; reading them means reading each item once (and checking it).
    labels = torch.tensor([_checked(dataset, index, split, name, kind)[1] for index in range(len(dataset))], dtype=torch.long)
    return DatasetImages(dataset, list(range(len(dataset))), split, name, kind, image_size), labels


class DatasetImages(torch.utils.data.Dataset):
    """The images of a user's Dataset, standing where an image tensor would: it has a shape and a dtype,
    can be indexed to a subset, and a DataLoader's workers read whole batches of it through `__getitems__`."""

    def __init__(self, dataset: Any, indices: list[int], split: str, name: str, kind: tuple, image_size: int | None):
        self.dataset, self.indices, self.split, self.name = dataset, indices, split, name
        self.kind, self.image_size = kind, image_size
        self.dtype = kind[2]

    @property
    def shape(self) -> torch.Size:
        size = (self.image_size, self.image_size) if self.image_size else tuple(self.kind[1])
        return torch.Size((len(self.indices), self.kind[0], *size))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str) -> DatasetImages:
        return self  # batches are moved, one at a time, by the loader

    def __getitem__(self, index: torch.Tensor) -> DatasetImages:
        """A subset (tensor of positions), still read on demand."""
        return DatasetImages(self.dataset, [self.indices[i] for i in index.tolist()], self.split, self.name, self.kind,
                             self.image_size)

    def __getitems__(self, positions: list[int]) -> torch.Tensor:
        """A whole batch read in one worker call, as one tensor (resized as the in-memory path resizes)."""
        images = torch.stack([_checked(self.dataset, self.indices[p], self.split, self.name, self.kind)[0] for p in positions])
        return resize_images(images, self.image_size) if self.image_size else images
