"""Batches from in-memory images by indexing (or decoded from disk by workers), augmented as whole batches.

The order and augmentation of epoch `e` depend only on (seed, e), so every schedule given the
same seed sees the same batches, and a resumed run sees what the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lrlab.config import AUGMENTATIONS
from lrlab.data.files import default_workers, streamed_batches


def batches_per_epoch(count: int, batch_size: int, shuffle: bool = True, world: int = 1) -> int:
    """Batches in one pass over `count` images (a batch is split over `world` processes)."""
    full, remainder = divmod(count, batch_size)
    # A last batch that would leave a training process a lone sample (which breaks BatchNorm) or
    # none is dropped when shuffling; evaluation keeps every image.
    return full + (1 if remainder >= 2 * world or (remainder and not shuffle) else 0)


class BatchLoader:
    """Iterates (images, labels) batches: images normalised float32, labels int64, on `device`.

    uint8 images are scaled to [0, 1] first; float images are taken as they are. Both are then
    standardised with the per-channel `mean` and `std`.
    """

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
        workers: int | None = None,
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
        self.workers = default_workers() if workers is None else workers

    def __len__(self) -> int:
        return batches_per_epoch(len(self.labels), self.batch_size, self.shuffle, self.world)

    def global_batch_size(self, batch_index: int) -> int:
        """Images in batch `batch_index` over all processes together."""
        return min(self.batch_size, len(self.labels) - batch_index * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def _augment(self, images: torch.Tensor, generator: torch.Generator, batch_count: int, rows: slice) -> torch.Tensor:
        """Crop and flip `images`, which are `rows` of a batch of `batch_count`: the random draws are
        made for the whole batch, so a shard under torchrun gets what one process would give it."""
        count, _, height, width = images.shape
        if "crop" in self.augment:
            pad = self.crop_padding
            padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
            offsets = torch.randint(0, 2 * pad + 1, (2, batch_count), generator=generator, device=generator.device)[:, rows]
            rows_index = (torch.arange(height, device=self.device)[None, :] + offsets[0][:, None])[:, :, None]
            cols_index = (torch.arange(width, device=self.device)[None, :] + offsets[1][:, None])[:, None, :]
            batch = torch.arange(count, device=self.device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows_index, cols_index].permute(0, 3, 1, 2)
        if "flip" in self.augment:
            flip = torch.rand(batch_count, generator=generator, device=generator.device)[rows] < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return images

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = self._generator()
        # On an accelerator the augmentation draws are made there: copying them from the host would
        # make every step wait for the device.
        augment_generator = generator if self.device.type == "cpu" else torch.Generator(self.device).manual_seed(generator.initial_seed())
        in_memory = isinstance(self.images, torch.Tensor)
        # In memory, the indices live where the images do, so an accelerator never waits for the host.
        where = self.device if in_memory else torch.device("cpu")
        order = torch.randperm(len(self.labels), generator=generator) if self.shuffle else torch.arange(len(self.labels))
        if where.type == "cuda":
            order = order.pin_memory()  # so that the copy below does not wait either
        order = order.to(where, non_blocking=True)
        batches = [order[start : start + self.batch_size] for start in range(0, len(self) * self.batch_size, self.batch_size)]
        rows = slice(self.rank, None, self.world)
        mine = [batch[rows] for batch in batches]
        if in_memory:
            fetched = (self.images[index] for index in mine)
        else:  # images on disk: worker processes decode whole batches ahead of the training loop
            fetched = (images.to(self.device, non_blocking=True) for images in
                       streamed_batches(self.images, [index.tolist() for index in mine], self.workers, self.device.type == "cuda"))
        for batch, index, images in zip(batches, mine, fetched):
            labels = self.labels[index.to(self.device, non_blocking=True)]
            if self.augment != "none":
                images = self._augment(images, augment_generator, len(batch), rows)
            if images.dtype == torch.uint8:
                images = images.float().div_(255)
            images = (images - self.mean) / self.std
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, labels
