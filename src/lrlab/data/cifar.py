"""CIFAR-10 and CIFAR-100 from the official python-version archive (Krizhevsky 2009)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from lrlab.data.base import ImageData
from lrlab.data.download import DownloadFailed, download_from_any
from lrlab.data.sources import CIFAR_SOURCES, cache_dir, locate_cifar
from lrlab.errors import UsageError


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR batches are pickles; allow only what rebuilds numpy arrays, so a hostile file cannot run code."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes under protocol 2; it only encodes text
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        loaded = _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise UsageError(f"{where} is not a valid CIFAR batch ({error}); delete it and download it again") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{where} is not a valid CIFAR batch; delete it and download it again")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in loaded.items()}


# The largest real member (CIFAR-100's train) is 155 MB; anything far larger is not CIFAR.
MAX_MEMBER_BYTES = 256 * 2**20


def _check_size(size: int, name: str, location: Path) -> None:
    if size > MAX_MEMBER_BYTES:
        raise UsageError(f"{location}: {name} is {size / 2**20:,.0f} MiB, larger than any CIFAR file; "
                         "delete it and download it again")


def _read_members(location: Path, source: dict) -> dict[str, bytes]:
    wanted = [*source["train"], *source["test"], source["meta"][0]]
    if location.is_dir():
        missing = [m for m in wanted if not (location / m).is_file()]
        if missing:
            raise UsageError(f"{location} lacks {', '.join(missing)}; it is not a complete CIFAR folder")
        for m in wanted:
            _check_size((location / m).stat().st_size, m, location)
        return {m: (location / m).read_bytes() for m in wanted}
    try:
        with tarfile.open(location, "r:*") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [m for m in wanted if m not in members]
            if missing:
                raise UsageError(f"{location} lacks {', '.join(missing)}; it is not a complete CIFAR archive")
            for m in wanted:
                _check_size(members[m].size, m, location)
            return {m: archive.extractfile(members[m]).read() for m in wanted}
    except (tarfile.TarError, EOFError, OSError) as error:
        raise UsageError(f"{location} is a damaged archive ({error}); delete it and download it again") from None


def _split(members: dict[str, bytes], names: list[str], label_key: str, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        batch = _unpickle(members[name], name)
        images.append(_checked_images(batch.get("data"), name))
        labels.append(_checked_labels(batch.get(label_key), len(images[-1]), classes, name))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _checked_images(data: object, name: str) -> np.ndarray:
    """The batch's images as (n, 3, 32, 32) uint8, checked before anything is built from them: only a
    real uint8 array of rows of 3072 pixels is taken (nested lists could expand to any size)."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UsageError(f"CIFAR batch {name} has an unexpected layout (its data is not rows of 3072 bytes); "
                         "delete it and download it again")
    return data.reshape(-1, 3, 32, 32)


def _checked_labels(labels: object, count: int, classes: int, name: str) -> np.ndarray:
    """One whole-number label in [0, classes) per image, else the batch is refused."""
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != count:
        raise UsageError(f"CIFAR batch {name} does not hold one label per image; delete it and download it again")
    if isinstance(labels, list) and not all(type(label) is int for label in labels):
        raise UsageError(f"CIFAR batch {name} has labels that are not whole numbers; delete it and download it again")
    array = np.asarray(labels)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise UsageError(f"CIFAR batch {name} has labels that are not whole numbers; delete it and download it again")
    if count and not (0 <= array.min() and array.max() < classes):
        raise UsageError(f"CIFAR batch {name} has labels outside 0..{classes - 1}; delete it and download it again")
    return array.astype(np.int64)


def load(name: str, data_dir: str | os.PathLike | None = None) -> ImageData:
    """CIFAR-10 or CIFAR-100 from the archive or its extracted folder, downloading if absent."""
    source = CIFAR_SOURCES[name]
    location = locate_cifar(name, data_dir)
    if location is None:
        destination = cache_dir(name) / source["archive"]
        try:
            location = download_from_any(name, source["archive"], [source["url"]], destination, source["sha256"])
        except DownloadFailed as error:
            raise UsageError(
                f"{name} is not on this machine and {error}; put {source['archive']} (or its extracted "
                f"{source['folder']} folder) in {destination.parent} (or pass --data-dir DIR)"
            ) from None
    members = _read_members(location, source)
    meta = _unpickle(members[source["meta"][0]], source["meta"][0])
    names = meta.get(source["meta"][1])
    if (not isinstance(names, list) or len(names) != source["classes"]
            or not all(isinstance(c, (bytes, str)) and len(c) <= 100 for c in names)):
        raise UsageError(f"{source['meta'][0]} does not name the {source['classes']} classes of {name}; "
                         "delete it and download it again")
    classes = [c.decode(errors="replace") if isinstance(c, bytes) else c for c in names]
    train = _split(members, source["train"], source["labels"], source["classes"])
    test = _split(members, source["test"], source["labels"], source["classes"])
    return ImageData(name, *train, *test, classes, str(location), flip_makes_sense=True)
