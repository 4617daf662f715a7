"""What the built-in data sets are and where their files lie: names, file names, mirrors, checksums and
the folders searched. Nothing here needs torch, so `lrlab datasets` answers at once; the loaders
(idx.py, cifar.py) read these same tables when they load.
"""

from __future__ import annotations

import os
from pathlib import Path

NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "synthetic", "folder:PATH", "FILE.py:NAME",
         "package.module:NAME")

# Training images of each built-in source as it loads (before --limit-train and the validation split),
# so a schedule's preview knows the steps of an epoch without reading the data.
TRAIN_IMAGES = {"fashion-mnist": 60_000, "mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000, "digits": 1_437,
                "synthetic": 2_000}

# MNIST and Fashion-MNIST: four IDX files each, published gzipped.
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

IDX_SOURCES = {
    "fashion-mnist": {
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "sha256": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
        "system_dirs": ("/usr/share/datasets/fashion-mnist",),
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
        "flip_makes_sense": True,
    },
    "mnist": {
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        "sha256": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        ),
        "system_dirs": ("/usr/share/datasets/mnist",),
        "classes": [str(d) for d in range(10)],
        "flip_makes_sense": False,
    },
}

# CIFAR-10 and CIFAR-100: one archive of pickled batches each, or the folder it extracts to.
CIFAR_SOURCES = {
    "cifar10": {
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "labels": "labels",
        "classes": 10,
    },
    "cifar100": {
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "sha256": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "labels": "fine_labels",
        "classes": 100,
    },
}


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


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem, folder / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    return None


def locate_idx(name: str, data_dir: str | os.PathLike | None) -> list[Path] | None:
    """The four IDX files of `name` (mnist, fashion-mnist) from the first folder that has all of them, or None."""
    for folder in candidate_dirs(name, data_dir, IDX_SOURCES[name]["system_dirs"]):
        found = [_find_idx_file(folder, stem) for stem in IDX_FILES]
        if all(found):
            return found
    return None


def locate_cifar(name: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The extracted folder or the archive of `name` (cifar10, cifar100), whichever is found first, or None."""
    source = CIFAR_SOURCES[name]
    for folder in candidate_dirs(name, data_dir):
        for candidate in (folder / source["folder"], folder / source["archive"]):
            if candidate.exists():
                return candidate
    return None


def describe_datasets(data_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(name, where it is or how to get it) for every built-in source, without loading any."""
    rows = []
    for name in IDX_SOURCES:
        found = locate_idx(name, data_dir)
        rows.append((name, str(found[0].parent) if found else f"not found; downloads to {cache_dir(name)}"))
    for name in CIFAR_SOURCES:
        found_at = locate_cifar(name, data_dir)
        rows.append((name, str(found_at) if found_at else f"not found; downloads to {cache_dir(name)}"))
    rows.append(("digits", "embedded in scikit-learn (always available)"))
    rows.append(("synthetic", "generated (always available)"))
    rows.append(("folder:PATH", "your images: PATH/train/<class>/*, PATH/test/<class>/*, or PATH/<class>/*"))
    rows.append(("FILE.py:NAME", "your Datasets: NAME() returns (train, test) torch Datasets of (image, label)"))
    return rows
