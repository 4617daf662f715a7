"""Image folders in torchvision's ImageFolder layout: decoded once into memory, or streamed from disk
when the decoded images would not fit the memory budget."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from lrlab.config import memory_budget_bytes
from lrlab.data.base import ImageData, sampled_statistics, stratified_holdout
from lrlab.data.files import FileImages, decode
from lrlab.errors import UsageError

DEFAULT_IMAGE_SIZE = 32
if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder


def contained_classes(directory: str | os.PathLike) -> list[str]:
    """The class folders of `directory` that lie inside it (a link to a folder elsewhere is not a class)."""
    root = os.path.realpath(directory)
    return sorted(entry.name for entry in os.scandir(directory)
                  if entry.is_dir() and _strictly_inside(os.path.realpath(entry.path), root))


def contained_files(directory: str | os.PathLike, class_to_idx: dict[str, int],
                    is_valid_file: Callable[[str], bool] | None = None) -> list[tuple[str, int]]:
    """(path, label) of each file under the class folders, walked without following links to folders
    (one to a parent or to '.' would list forever, or the same files again); a link to a file is kept
    only when the file is inside the root, and each file is listed once."""
    root = os.path.realpath(directory)
    samples, seen = [], set()
    for class_name, label in sorted(class_to_idx.items()):
        for folder, _, names in sorted(os.walk(os.path.join(directory, class_name))):
            for name in sorted(names):
                path = os.path.join(folder, name)
                real = os.path.realpath(path)
                if real in seen or not _strictly_inside(real, root) or not os.path.isfile(real):
                    continue
                if is_valid_file is None or is_valid_file(path):
                    seen.add(real)
                    samples.append((path, label))
    return samples


def _strictly_inside(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def _image_folder(path: Path) -> ImageFolder:
    from torchvision.datasets import ImageFolder  # torchvision takes seconds to import; only folders need it

    class ContainedImageFolder(ImageFolder):
        """torchvision's ImageFolder, listing only what lies inside its root, each file once."""

        def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
            classes = contained_classes(directory)
            if not classes:
                raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
            return classes, {name: index for index, name in enumerate(classes)}

        @staticmethod
        def make_dataset(directory: str | os.PathLike, class_to_idx: dict[str, int], extensions: Any = None,
                         is_valid_file: Callable[[str], bool] | None = None, allow_empty: bool = False) -> list[tuple[str, int]]:
            return contained_files(directory, class_to_idx, is_valid_file)

    try:
        # Every file is offered to the decoder, so a stray non-image is counted and named rather than
        # silently ignored; hidden files (.DS_Store, editor swap files) are not data.
        return ContainedImageFolder(str(path), is_valid_file=lambda name: not Path(name).name.startswith("."))
    except (FileNotFoundError, OSError) as error:
        raise UsageError(f"{path}: {error}; expected one folder per class with images in it") from None


def _readable(folder: ImageFolder, strict: bool, read: Callable[[str], Any]) -> list[tuple[str, int, Any]]:
    """(path, label, what `read` returned) for each file `read` accepts; the others are skipped with a
    count, or stop the run with --strict."""
    kept, broken = [], []
    for path, label in folder.samples:
        try:
            kept.append((path, label, read(path)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            if strict:
                raise UsageError(f"{path} cannot be read as an image ({error}); remove it or drop --strict") from None
            broken.append(path)
    if broken:
        print(f"lrlab: warning: skipped {len(broken)} unreadable or non-image file(s) in {folder.root}, "
              f"e.g. {broken[0]} (pass --strict to stop instead)", file=sys.stderr)
    if not kept:
        raise UsageError(f"{folder.root} has no readable images")
    return kept


def _header_is_an_image(path: str) -> None:
    with Image.open(path) as picture:
        picture.size  # noqa: B018 - opening reads only the header; a non-image fails here


def _split(folder: ImageFolder, size: int, strict: bool, stream: bool) -> tuple[torch.Tensor | FileImages, torch.Tensor]:
    if stream:
        samples = _readable(folder, strict, _header_is_an_image)
        images: torch.Tensor | FileImages = FileImages([path for path, _, _ in samples], size)
    else:
        samples = _readable(folder, strict, lambda path: decode(path, size))
        images = torch.stack([image for _, _, image in samples])
    return images, torch.tensor([label for _, label, _ in samples], dtype=torch.long)


def load(path: str, image_size: int | None, test_fraction: float, strict: bool = False,
         memory_budget: str | None = None) -> ImageData:
    """`path/train/<class>/*` and `path/test/<class>/*`, or one `path/<class>/*` of which `test_fraction`
    (stratified by class) is held out for testing."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UsageError(f"folder data set {root} does not exist; pass folder:PATH with a folder of class folders")
    size = image_size or DEFAULT_IMAGE_SIZE
    budget = memory_budget_bytes(memory_budget)
    split_folders = (root / "train").is_dir() and (root / "test").is_dir()
    folders = [_image_folder(root / "train"), _image_folder(root / "test")] if split_folders else [_image_folder(root)]
    if split_folders and folders[0].classes != folders[1].classes:
        only_train = sorted(set(folders[0].classes) - set(folders[1].classes))
        only_test = sorted(set(folders[1].classes) - set(folders[0].classes))
        raise UsageError(f"{root}: train and test have different class folders "
                         f"(only in train: {only_train or 'none'}, only in test: {only_test or 'none'})")
    decoded_bytes = sum(len(f.samples) for f in folders) * 3 * size * size
    stream = decoded_bytes > budget
    if stream:
        print(f"lrlab: note: {root} decodes to {decoded_bytes / 2**20:,.0f} MiB, more than the memory budget of "
              f"{budget / 2**20:,.0f} MiB (--memory-budget); streaming it from disk with worker processes", file=sys.stderr)
    if split_folders:
        train, test = (_split(f, size, strict, stream) for f in folders)
    else:
        if not 0 < test_fraction < 1:
            raise UsageError(f"--test-fraction {test_fraction} should be between 0 and 1")
        images, labels = _split(folders[0], size, strict, stream)
        train_index, test_index = stratified_holdout(labels, test_fraction, seed=0)
        train, test = (images[train_index], labels[train_index]), (images[test_index], labels[test_index])
    return ImageData(f"folder:{root}", *train, *test, folders[0].classes, str(root), flip_makes_sense=True,
                     statistics=sampled_statistics(train[0]))
