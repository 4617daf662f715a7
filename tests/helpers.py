"""Builders for the files the data tests need: IDX, CIFAR batches, image folders, an HTTP server."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, train: int = 60, test: int = 20, compress: bool = True, seed: int = 0) -> dict:
    """Four small IDX files in the MNIST layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


def cifar_batch(count: int, seed: int, label_key: str = "labels") -> bytes:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
             label_key.encode(): rng.integers(0, 10, count).tolist(), b"batch_label": b"test"}
    return pickle.dumps(batch, protocol=2)


def write_cifar10_archive(path: Path, per_batch: int = 10, train_batch: bytes | None = None) -> None:
    """A CIFAR-10 archive of random batches; `train_batch` replaces each training batch's bytes."""
    members = {f"data_batch_{i}": train_batch or cifar_batch(per_batch, i) for i in range(1, 6)}
    members["test_batch"] = cifar_batch(per_batch, 9)
    members["batches.meta"] = pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def http_server(root: Path):
    """Serve `root` on 127.0.0.1 on a free port; yields the base URL."""
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def without_timing(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall-clock columns, which no two runs share."""
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def slow_epochs(seconds: float) -> dict[str, str]:
    """Environment for a child process whose epochs pause `seconds` after writing last.pt (tests/slow_epochs)."""
    hook = str(Path(__file__).parent / "slow_epochs")
    python_path = os.pathsep.join(p for p in (hook, os.environ.get("PYTHONPATH", "")) if p)
    return {"LRLAB_TESTS_EPOCH_PAUSE": str(seconds), "PYTHONPATH": python_path}
