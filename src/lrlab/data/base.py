"""The in-memory image data set every source produces, and where sources look for files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lrlab.errors import UsageError


@dataclass
class ImageData:
    """A data set: uint8 images (N, C, H, W) and int64 labels for each split, in memory or, for large
    folders, as `FileImages` decoded batch by batch."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str
    flip_makes_sense: bool = True
    # Fixed per-channel (mean, std) where the source computes it from a sample, not from every image.
    statistics: tuple[list[float], list[float]] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{split} images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
            if len(images) != len(labels):
                raise UsageError(f"{self.name}: {len(images)} {split} images but {len(labels)} labels")

    @property
    def channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.train_images.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def channel_statistics(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of the training images, in [0, 1] units."""
        return self.statistics or pixel_statistics(self.train_images)

    def subset(self, limit_train: int | None, limit_test: int | None, seed: int) -> ImageData:
        """A fixed, seeded random subset of each split (the same for every schedule and run)."""
        generator = torch.Generator().manual_seed(seed)
        splits = {}
        for split, limit in (("train", limit_train), ("test", limit_test)):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if limit is not None and limit < len(images):
                keep = torch.randperm(len(images), generator=generator)[:limit].sort().values
                images, labels = images[keep], labels[keep]
            splits[split] = (images, labels)
        return ImageData(
            self.name, *splits["train"], *splits["test"], self.classes, self.source, self.flip_makes_sense, self.statistics
        )


def pixel_statistics(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), in [0, 1] units."""
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).float() / 255
    return pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-3).tolist()


def cache_dir(name: str) -> Path:
    """Where downloads of `name` go: ~/.cache/lrlab/<name> (XDG_CACHE_HOME respected)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "lrlab" / name


def candidate_dirs(name: str, data_dir: str | os.PathLike | None, system_dirs: tuple[str, ...] = ()) -> list[Path]:
    """The folders searched, in order: --data-dir, $LRLAB_DATA, the cache, then system folders."""
    candidates: list[Path] = []
    for root in (data_dir, os.environ.get("LRLAB_DATA")):
        if root:
            candidates += [Path(root) / name, Path(root)]
    candidates.append(cache_dir(name))
    candidates += [Path(d) for d in system_dirs]
    return candidates
