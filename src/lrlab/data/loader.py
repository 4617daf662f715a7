"""Batches from in-memory images by indexing, with augmentation done on whole batches.

The order and augmentation of epoch `e` depend only on (seed, e), so every schedule given the
same seed sees the same batches, and a resumed run sees what the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

AUGMENTATIONS = ("none", "flip", "crop+flip", "crop")


def batches_per_epoch(count: int, batch_size: int, shuffle: bool = True, world: int = 1) -> int:
    """Batches in one pass over `count` images (a batch is split over `world` processes)."""
    full, remainder = divmod(count, batch_size)
    # A last batch that would leave a training process a lone sample (which breaks BatchNorm) or
    # none is dropped when shuffling; evaluation keeps every image.
    return full + (1 if remainder >= 2 * world or (remainder and not shuffle) else 0)


class BatchLoader:
    """Iterates (images, labels) batches: images normalised float32, labels int64, on `device`."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: list[float],
        std: list[float],
        *,
        shuffle: bool = False,
        augment: str = "none",
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.channels_last = channels_last
        self.epoch = 0
        self.crop_padding = max(1, images.shape[-1] // 8)
        # Under torchrun each process takes every world-th image of the same global batch, after
        # augmentation, so the processes together see exactly what one process would.
        self.rank, self.world = shard

    def __len__(self) -> int:
        return batches_per_epoch(len(self.labels), self.batch_size, self.shuffle, self.world)

    def global_batch_size(self, batch_index: int) -> int:
        """Images in batch `batch_index` over all processes together."""
        return min(self.batch_size, len(self.labels) - batch_index * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, _, height, width = images.shape
        if "crop" in self.augment:
            pad = self.crop_padding
            padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
            offsets = torch.randint(0, 2 * pad + 1, (2, count), generator=generator).to(self.device)
            rows = (torch.arange(height, device=self.device)[None, :] + offsets[0][:, None])[:, :, None]
            cols = (torch.arange(width, device=self.device)[None, :] + offsets[1][:, None])[:, None, :]
            batch = torch.arange(count, device=self.device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        if "flip" in self.augment:
            flip = (torch.rand(count, generator=generator) < 0.5).to(self.device)
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return images

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = self._generator()
        total = len(self.labels)
        order = torch.randperm(total, generator=generator).to(self.device) if self.shuffle else None
        for batch_index in range(len(self)):
            start = batch_index * self.batch_size
            index = order[start : start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            images, labels = self.images[index], self.labels[index]
            if self.augment != "none":
                images = self._augment(images, generator)
            if self.world > 1:
                images, labels = images[self.rank :: self.world], labels[self.rank :: self.world]
            images = (images.float().div_(255) - self.mean) / self.std
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels
