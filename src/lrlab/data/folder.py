"""Image folders in torchvision's ImageFolder layout, decoded once and held in memory."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2 import functional as TF

from lrlab.data.base import ImageData
from lrlab.errors import UsageError

DEFAULT_IMAGE_SIZE = 32


def _decode(folder: ImageFolder, image_size: int, strict: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, broken = [], [], []
    for path, label in folder.samples:
        try:
            picture = folder.loader(path)
        except (OSError, ValueError, SyntaxError) as error:
            if strict:
                raise UsageError(f"{path} cannot be read as an image ({error}); remove it or drop --strict") from None
            broken.append(path)
            continue
        tensor = TF.pil_to_tensor(picture.convert("RGB"))
        images.append(TF.resize(tensor, [image_size, image_size], antialias=True))
        labels.append(label)
    if broken:
        print(f"lrlab: warning: skipped {len(broken)} unreadable or non-image file(s) in {folder.root}, "
              f"e.g. {broken[0]} (pass --strict to stop instead)", file=sys.stderr)
    if not images:
        raise UsageError(f"{folder.root} has no readable images")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _image_folder(path: Path) -> ImageFolder:
    try:
        # Every file is offered to the decoder, so a stray non-image is counted and named rather than
        # silently ignored; hidden files (.DS_Store, editor swap files) are not data.
        return ImageFolder(str(path), is_valid_file=lambda name: not Path(name).name.startswith("."))
    except (FileNotFoundError, OSError) as error:
        raise UsageError(f"{path}: {error}; expected one folder per class with images in it") from None


def load(path: str, image_size: int | None, val_fraction: float, strict: bool = False) -> ImageData:
    """`path/train/<class>/*` and `path/test/<class>/*`, or one `path/<class>/*` split by `val_fraction`."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UsageError(f"folder data set {root} does not exist; pass folder:PATH with a folder of class folders")
    size = image_size or DEFAULT_IMAGE_SIZE
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_folder, test_folder = _image_folder(root / "train"), _image_folder(root / "test")
        if train_folder.classes != test_folder.classes:
            only_train = sorted(set(train_folder.classes) - set(test_folder.classes))
            only_test = sorted(set(test_folder.classes) - set(train_folder.classes))
            raise UsageError(
                f"{root}: train and test have different class folders "
                f"(only in train: {only_train or 'none'}, only in test: {only_test or 'none'})"
            )
        train, test = _decode(train_folder, size, strict), _decode(test_folder, size, strict)
        classes = train_folder.classes
    else:
        if not 0 < val_fraction < 1:
            raise UsageError(f"--val-fraction {val_fraction} should be between 0 and 1")
        folder = _image_folder(root)
        images, labels = _decode(folder, size, strict)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        held_out = max(1, round(val_fraction * len(labels)))
        test_index, train_index = order[:held_out], order[held_out:]
        train, test = (images[train_index], labels[train_index]), (images[test_index], labels[test_index])
        classes = folder.classes
    return ImageData(f"folder:{root}", *train, *test, classes, str(root), flip_makes_sense=True)
