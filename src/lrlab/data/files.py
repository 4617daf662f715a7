"""Images left on disk and decoded a batch at a time: for folder data sets larger than the memory budget.

`FileImages` stands where a uint8 image tensor would: it has a shape, can be indexed to a subset,
and a `torch.utils.data.DataLoader` with worker processes decodes whole batches of it through
`__getitems__`. Decoding is the same function the in-memory path uses, so a run gives the same
numbers whichever path its data takes.
"""

from __future__ import annotations

import os

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lrlab.errors import UsageError


def decode(path: str, image_size: int) -> torch.Tensor:
    """One image file as uint8 (3, image_size, image_size)."""
    from torchvision.transforms.v2 import functional as TF  # torchvision takes seconds to import; only folders need it

    with Image.open(path) as picture:
        tensor = TF.pil_to_tensor(picture.convert("RGB"))
    return TF.resize(tensor, [image_size, image_size], antialias=True)


class FileImages(Dataset):
    """Image files of one split, decoded on demand to uint8 (3, size, size)."""

    dtype = torch.uint8

    def __init__(self, paths: list[str], image_size: int):
        self.paths, self.image_size = paths, image_size

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), 3, self.image_size, self.image_size))

    def dim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.paths)

    def to(self, device: torch.device | str) -> FileImages:
        return self  # decoded batches are moved, one at a time, by the loader

    def __getitem__(self, index: torch.Tensor | int) -> FileImages | torch.Tensor:
        """An int decodes one image; a tensor of indices selects a subset, still on disk."""
        if isinstance(index, int):
            return decode(self.paths[index], self.image_size)
        return FileImages([self.paths[i] for i in index.tolist()], self.image_size)

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        """A whole batch decoded in one worker call, returned as one tensor (no per-sample collation)."""
        images = []
        for i in indices:
            try:
                images.append(decode(self.paths[i], self.image_size))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                raise UsageError(f"{self.paths[i]} cannot be decoded ({error}); remove it and --resume") from None
        return torch.stack(images)


def _as_is(batch: torch.Tensor) -> torch.Tensor:
    return batch


def streamed_batches(images: FileImages, batches: list[list[int]], workers: int, pin_memory: bool = False) -> DataLoader:
    """Decoded uint8 batches of `images`, in the order of `batches`, decoded ahead by worker processes."""
    return DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=_as_is,
                      prefetch_factor=4 if workers else None, pin_memory=pin_memory)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)
