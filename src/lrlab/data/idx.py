"""MNIST and Fashion-MNIST from their original IDX files (LeCun et al. 1998; Xiao et al. 2017)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import torch

from lrlab.data.base import ImageData
from lrlab.data.download import DownloadFailed, download_from_any
from lrlab.data.sources import IDX_FILES, IDX_SOURCES, cache_dir, locate_idx
from lrlab.errors import UsageError

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (gzipped or not) as a uint8 tensor: (N, 1, H, W) for images, (N,) for labels."""
    raw = path.read_bytes()
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise UsageError(f"{path} is a damaged gzip file ({error}); delete it and download it again") from None
    if len(raw) < 8:
        raise UsageError(f"{path} is too short to be an IDX file; delete it and download it again")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        raise UsageError(f"{path} is not an IDX file of bytes (magic number {magic:#010x}); check the file")
    dims = magic & 0xFF
    if len(raw) < 4 + 4 * dims:
        raise UsageError(f"{path} is truncated inside its header; delete it and download it again")
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    body = raw[4 + 4 * dims :]
    expected = int(np.prod(shape))
    if len(body) != expected:
        raise UsageError(
            f"{path} holds {len(body)} bytes of data but its header promises {expected} "
            f"(shape {shape}); the file is truncated or corrupt, delete it and download it again"
        )
    array = np.frombuffer(body, dtype=np.uint8).reshape(shape)
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(1) if dims == 3 else tensor.long()


def read_decoded(paths: list[Path]) -> list[torch.Tensor]:
    """The files' tensors. Gzipped files are decoded once and kept in the cache as one torch file,
    which reads about ten times faster (benchmarks/README.md, start-up); it is refreshed when a file changes."""
    if not any(path.suffix == ".gz" for path in paths):
        return [read_idx(path) for path in paths]
    identity = repr([(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in paths])
    cached = cache_dir("decoded") / f"idx-{hashlib.sha256(identity.encode()).hexdigest()[:20]}.pt"
    try:
        return list(torch.load(cached, weights_only=True))
    except Exception:  # noqa: BLE001 - absent, partial or unreadable: decode the originals again
        pass
    tensors = [read_idx(path) for path in paths]
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.part")
    with contextlib.suppress(OSError):  # a read-only or full cache only costs the next start its decoding
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.save(tensors, partial)
            os.replace(partial, cached)
        finally:
            partial.unlink(missing_ok=True)
    return tensors


def fetch(name: str) -> list[Path]:
    """Download the four files into the cache, verified; say where to put them if that fails."""
    source = IDX_SOURCES[name]
    target = cache_dir(name)
    paths = []
    for stem, sha256 in zip(IDX_FILES, source["sha256"]):
        destination = target / f"{stem}.gz"
        if destination.is_file():
            paths.append(destination)
            continue
        try:
            paths.append(download_from_any(name, f"{stem}.gz", [m + f"{stem}.gz" for m in source["mirrors"]], destination, sha256))
        except DownloadFailed as error:
            raise UsageError(
                f"{name} is not on this machine and {error}; put {', '.join(s + '.gz' for s in IDX_FILES)} "
                f"in {target} (or pass --data-dir DIR)"
            ) from None
    return paths


def load(name: str, data_dir: str | os.PathLike | None = None) -> ImageData:
    """Fashion-MNIST or MNIST as an in-memory ImageData."""
    paths = locate_idx(name, data_dir) or fetch(name)
    train_images, train_labels, test_images, test_labels = read_decoded(paths)
    source = IDX_SOURCES[name]
    for images, labels, split in ((train_images, train_labels, "train"), (test_images, test_labels, "test")):
        if images.dim() != 4 or labels.dim() != 1:
            raise UsageError(f"{name}: the {split} image and label files are swapped or malformed in {paths[0].parent}")
        if labels.numel() and int(labels.max()) >= len(source["classes"]):
            raise UsageError(f"{name}: {split} labels go up to {int(labels.max())}, more than its 10 classes")
    return ImageData(
        name, train_images, train_labels, test_images, test_labels,
        list(source["classes"]), str(paths[0].parent), source["flip_makes_sense"],
    )
