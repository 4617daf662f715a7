"""The in-memory image data set every source produces (where sources look for files: sources.py)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from lrlab.errors import UsageError


@dataclass
class ImageData:
    """A data set: images (N, C, H, W) and int64 labels for each split, in memory or, for large folders
    and large user Datasets, read batch by batch (`FileImages`, `DatasetImages`). Images are uint8
    (0-255), or float where a user's Dataset gives float images."""

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
    # Held out of the training images by `split_validation`; None until then (or with no split).
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test", "val"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images is None:
                continue
            if not (images.dtype == torch.uint8 or images.dtype.is_floating_point) or images.dim() != 4:
                raise ValueError(f"{split} images must be uint8 or float (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
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
        return replace(self, train_images=splits["train"][0], train_labels=splits["train"][1],
                       test_images=splits["test"][0], test_labels=splits["test"][1])

    def split_validation(self, fraction: float, seed: int) -> ImageData:
        """`fraction` of the training images, stratified by class, moved into a validation split.

        The split depends only on the labels, `fraction` and `seed`, so every run of a comparison
        (every schedule, every training seed) validates on the same images.
        """
        if fraction == 0:
            return replace(self, val_images=None, val_labels=None)
        kept, held = stratified_holdout(self.train_labels, fraction, seed)
        if not len(kept):
            raise UsageError(f"--val-fraction {fraction} leaves no training images; use a smaller fraction")
        return replace(self, train_images=self.train_images[kept], train_labels=self.train_labels[kept],
                       val_images=self.train_images[held], val_labels=self.train_labels[held])


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out), each sorted: `fraction` of the images of each class is held out.

    Class shares are rounded by largest remainder, so the held-out total is round(fraction * N)
    (at least one image) and each class keeps its proportion. Written here rather than taken from
    scikit-learn because its stratified splitters refuse hold-outs smaller than the number of
    classes, which small folders and test subsets need.
    """
    if not 0 < fraction < 1:
        raise UsageError(f"a held-out fraction of {fraction} should be between 0 and 1")
    generator = torch.Generator().manual_seed(seed)
    classes, counts = labels.unique(return_counts=True)
    total = min(len(labels), max(1, round(fraction * len(labels))))
    quotas = counts.double() * total / len(labels)
    shares = quotas.floor().long()
    leftover = total - int(shares.sum())
    shares[torch.argsort(quotas - shares, descending=True, stable=True)[:leftover]] += 1
    held = []
    for label, share in zip(classes.tolist(), shares.tolist()):
        members = (labels == label).nonzero().flatten()
        held.append(members[torch.randperm(len(members), generator=generator)[:share]])
    held_index = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_index] = False
    return mask.nonzero().flatten(), held_index


def pixel_statistics(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of images (N, C, H, W): uint8 in [0, 1] units, float as they are."""
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).float()
    if images.dtype == torch.uint8:
        pixels /= 255
    return pixels.mean(1).tolist(), pixels.std(1).clamp_min(1e-3).tolist()


STATISTICS_SAMPLE = 1024


def sampled_statistics(images: Any) -> tuple[list[float], list[float]]:
    """Channel statistics from a fixed sample of the training images, the same whether the images are
    in memory or read batch by batch (anything with `__getitems__`)."""
    sample = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:STATISTICS_SAMPLE].sort().values
    picked = images[sample]
    if not isinstance(picked, torch.Tensor):
        picked = picked.__getitems__(list(range(len(picked))))
    return pixel_statistics(picked)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (N, C, H, W) resized to size x size (bilinear, antialiased); uint8 stays uint8."""
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if images.dtype == torch.uint8:
        return resized.round().clamp(0, 255).to(torch.uint8)
    return resized.to(images.dtype)
