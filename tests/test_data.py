import gzip
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    http_server,
    idx_bytes,
    without_timing,
    write_cifar10_archive,
    write_idx_set,
)
from PIL import Image

from lrlab.data import BatchLoader, describe_datasets, idx, load_dataset
from lrlab.data.sources import CIFAR_SOURCES, IDX_FILES, IDX_SOURCES
from lrlab.data.idx import read_idx
from lrlab.engine import train
from lrlab.errors import UsageError
from lrlab.runs import RunDirectory

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_are_read_gzipped_or_not(tmp_path, compress):
    arrays = write_idx_set(tmp_path / "mnist", compress=compress)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert data.train_images.shape == (60, 1, 28, 28) and data.test_images.shape == (20, 1, 28, 28)
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(data.test_labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert data.source == str(tmp_path / "mnist")


def test_gzipped_idx_files_are_decoded_once_and_again_when_they_change(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mnist")
    first = load_dataset("mnist", data_dir=tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(idx.gzip, "decompress", lambda raw: pytest.fail("decoded again although nothing changed"))
        again = load_dataset("mnist", data_dir=tmp_path)
    assert all(torch.equal(getattr(first, name), getattr(again, name))
               for name in ("train_images", "train_labels", "test_images", "test_labels"))
    changed = write_idx_set(tmp_path / "mnist", seed=1)
    assert torch.equal(load_dataset("mnist", data_dir=tmp_path).train_images[:, 0], torch.from_numpy(changed["train-images-idx3-ubyte"]))
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_data_dir_wins_over_the_environment_folder(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "first", train=30)
    write_idx_set(tmp_path / "second", train=40)
    monkeypatch.setenv("LRLAB_DATA", str(tmp_path / "second"))
    assert len(load_dataset("mnist").train_labels) == 40
    assert len(load_dataset("mnist", data_dir=tmp_path / "first").train_labels) == 30


@pytest.mark.parametrize("damage, says", [
    (lambda raw: raw[:-100], "truncated or corrupt"),
    (lambda raw: b"\x00\x00\x09\x99" + raw[4:], "not an IDX file"),
    (lambda raw: raw[:10], "truncated inside its header"),
    (lambda raw: raw[:3], "too short"),
])
def test_damaged_idx_files_are_refused_with_a_clear_message(tmp_path, damage, says):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(idx_bytes(np.zeros((5, 28, 28), np.uint8))))
    with pytest.raises(UsageError, match=says):
        read_idx(path)


def test_a_damaged_gzip_is_refused(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))[:-20])
    with pytest.raises(UsageError, match="damaged gzip"):
        read_idx(path)


def serve_mnist(tmp_path, monkeypatch):
    """Put a small MNIST set on a local server and pin its checksums as the published ones."""
    served = tmp_path / "served" / "mnist"
    write_idx_set(served)
    digests = tuple(hashlib.sha256((served / f"{stem}.gz").read_bytes()).hexdigest() for stem in IDX_FILES)
    monkeypatch.setitem(IDX_SOURCES, "mnist", {**IDX_SOURCES["mnist"], "sha256": digests, "system_dirs": ()})
    return served


def test_missing_data_is_downloaded_verified_into_the_cache(tmp_path, monkeypatch):
    served = serve_mnist(tmp_path, monkeypatch)
    with http_server(served.parent) as url:
        monkeypatch.setenv("LRLAB_MIRROR", url)
        data = load_dataset("mnist")
    cache = tmp_path / "cache" / "lrlab" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES)
    assert len(data.train_labels) == 60
    assert data.source == str(cache)


def test_a_download_with_the_wrong_checksum_is_discarded(tmp_path, monkeypatch):
    served = serve_mnist(tmp_path, monkeypatch)
    (served / "train-images-idx3-ubyte.gz").write_bytes(b"not the real file")
    with http_server(served.parent) as url:
        monkeypatch.setenv("LRLAB_MIRROR", url)
        with pytest.raises(UsageError, match="does not match its published SHA-256"):
            load_dataset("mnist")
    cache = tmp_path / "cache" / "lrlab" / "mnist"
    assert not (cache / "train-images-idx3-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_without_network_the_error_says_where_to_put_the_files(tmp_path, monkeypatch):
    serve_mnist(tmp_path, monkeypatch)
    monkeypatch.setenv("LRLAB_MIRROR", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(UsageError) as error:
        load_dataset("mnist")
    message = str(error.value)
    assert "could not download" in message and str(tmp_path / "cache" / "lrlab" / "mnist") in message
    assert "train-images-idx3-ubyte.gz" in message and "\n" not in message


def test_cifar10_loads_from_the_archive_and_from_the_extracted_folder(tmp_path):
    write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    from_archive = load_dataset("cifar10", data_dir=tmp_path)
    assert from_archive.train_images.shape == (50, 3, 32, 32) and from_archive.test_images.shape == (10, 3, 32, 32)
    assert from_archive.classes == [f"c{i}" for i in range(10)]
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as archive:
        archive.extractall(tmp_path / "extracted", filter="data")
    from_folder = load_dataset("cifar10", data_dir=tmp_path / "extracted")
    assert torch.equal(from_folder.train_images, from_archive.train_images)


def test_cifar10_download_is_verified(tmp_path, monkeypatch):
    served = tmp_path / "served" / "cifar10"
    served.mkdir(parents=True)
    write_cifar10_archive(served / "cifar-10-python.tar.gz")
    digest = hashlib.sha256((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(CIFAR_SOURCES, "cifar10", {**CIFAR_SOURCES["cifar10"], "sha256": digest})
    with http_server(served.parent) as url:
        monkeypatch.setenv("LRLAB_MIRROR", url)
        data = load_dataset("cifar10")
    assert len(data.train_labels) == 50


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lrlab-pwned",))


def test_a_cifar_batch_crafted_to_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    Path("/tmp/lrlab-pwned").unlink(missing_ok=True)
    with pytest.raises(UsageError, match="not a valid CIFAR batch"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not Path("/tmp/lrlab-pwned").exists()


def test_digits_needs_no_files_and_splits_the_same_way_every_time():
    first, second = load_dataset("digits"), load_dataset("digits")
    assert len(first.train_labels) == 1437 and len(first.test_labels) == 360
    assert torch.equal(first.test_images, second.test_images)
    assert first.train_images.dtype == torch.uint8 and int(first.train_images.max()) == 255
    assert not first.flip_makes_sense


def test_synthetic_has_learnable_signal():
    data = load_dataset("synthetic")
    train_x = data.train_images.flatten(1).float() / 255
    test_x = data.test_images.flatten(1).float() / 255
    # Nearest class mean: a model with no training at all already beats chance (10%) by far.
    means = torch.stack([train_x[data.train_labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(test_x, means).argmin(1)
    assert (predicted == data.test_labels).float().mean() > 0.5


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=4, size=(20, 12)):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for item in range(per_class):
            colour = (40 * index + item, 100, 200)
            Image.new("RGB", size, colour).save(root / name / f"{item}.png")


def test_folder_with_train_and_test_is_resized_and_held_in_memory(tmp_path):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "test", per_class=2)
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert data.train_images.shape == (8, 3, 16, 16) and data.test_images.shape == (4, 3, 16, 16)
    assert data.classes == ["cat", "dog"]


def test_one_folder_holds_out_test_fraction_for_testing_stratified_by_class(tmp_path):
    write_image_folder(tmp_path, per_class=10)
    data = load_dataset(f"folder:{tmp_path}", image_size=8, test_fraction=0.2)
    assert len(data.test_labels) == 4 and len(data.train_labels) == 16
    assert data.test_labels.bincount().tolist() == [2, 2]


def test_validation_split_is_stratified_disjoint_and_fixed_by_its_seed():
    data = load_dataset("digits")
    split = data.split_validation(0.1, seed=0)
    assert len(split.val_labels) == round(0.1 * len(data.train_labels))
    assert len(split.train_labels) + len(split.val_labels) == len(data.train_labels)
    per_class = data.train_labels.bincount().double()
    assert ((split.val_labels.bincount().double() - 0.1 * per_class).abs() < 1).all()
    together = torch.cat([split.train_images, split.val_images]).flatten(1)
    assert len(torch.unique(together, dim=0)) == len(torch.unique(data.train_images.flatten(1), dim=0))
    assert torch.equal(split.val_images, data.split_validation(0.1, seed=0).val_images)
    assert not torch.equal(split.val_images, data.split_validation(0.1, seed=1).val_images)
    assert torch.equal(split.test_images, data.test_images)


def test_no_validation_fraction_keeps_every_training_image():
    data = load_dataset("digits")
    split = data.split_validation(0, seed=0)
    assert split.val_images is None and torch.equal(split.train_images, data.train_images)


def test_broken_images_and_non_images_are_skipped_with_a_count_or_fail_with_strict(tmp_path, capsys):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "test")
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("taken on a sunny day")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    data = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert len(data.train_labels) == 8
    assert "skipped 2 unreadable or non-image file(s)" in capsys.readouterr().err
    with pytest.raises(UsageError, match="(broken.png|notes.txt) cannot be read"):
        load_dataset(f"folder:{tmp_path}", image_size=8, strict=True)


def test_train_and_test_with_different_classes_are_refused(tmp_path):
    write_image_folder(tmp_path / "train", classes=("cat", "dog"))
    write_image_folder(tmp_path / "test", classes=("cat", "cow"))
    with pytest.raises(UsageError, match="only in train: \\['dog'\\], only in test: \\['cow'\\]"):
        load_dataset(f"folder:{tmp_path}")


def test_unknown_data_set_suggests_the_close_name():
    with pytest.raises(UsageError, match="did you mean 'fashion-mnist'"):
        load_dataset("fashion-mnst")


def test_subsets_are_fixed_and_seeded():
    data = load_dataset("digits")
    first, second = data.subset(100, 50, seed=0), data.subset(100, 50, seed=0)
    assert len(first.train_labels) == 100 and len(first.test_labels) == 50
    assert torch.equal(first.train_images, second.train_images)
    assert not torch.equal(first.train_images, data.subset(100, 50, seed=1).train_images)


def make_loader(augment="none", seed=0, count=100, batch_size=32):
    images = torch.arange(count, dtype=torch.uint8).view(count, 1, 1, 1).expand(count, 1, 8, 8).contiguous()
    return BatchLoader(images, torch.arange(count), batch_size, [0.0], [1.0], shuffle=True, augment=augment, seed=seed)


def test_an_epoch_visits_every_image_once_in_an_order_fixed_by_seed_and_epoch():
    loader = make_loader()
    loader.set_epoch(1)
    first = torch.cat([labels for _, labels in loader])
    assert sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, torch.cat([labels for _, labels in loader]))
    loader.set_epoch(2)
    assert not torch.equal(first, torch.cat([labels for _, labels in loader]))
    other_seed = make_loader(seed=1)
    other_seed.set_epoch(1)
    assert not torch.equal(first, torch.cat([labels for _, labels in other_seed]))


def test_images_are_normalised_and_match_their_labels():
    for images, labels in make_loader():
        assert torch.allclose(images[:, 0, 0, 0] * 255, labels.float())


def test_flip_mirrors_about_half_the_batch():
    images = torch.zeros(200, 1, 4, 4, dtype=torch.uint8)
    images[..., 0] = 255  # a bright left column: mirrored, it becomes the right column
    loader = BatchLoader(images, torch.zeros(200, dtype=torch.long), 200, [0.0], [1.0], shuffle=True, augment="flip")
    batch, _ = next(iter(loader))
    flipped = (batch[:, 0, 0, 3] == 1).sum().item()
    assert 60 < flipped < 140 and (batch[:, 0, 0, 0] + batch[:, 0, 0, 3] == 1).all()


def test_crop_shifts_images_within_the_padding_and_keeps_their_size():
    images = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)
    images[:, :, 8, 8] = 255
    loader = BatchLoader(images, torch.zeros(64, dtype=torch.long), 64, [0.0], [1.0], shuffle=True, augment="crop")
    batch, _ = next(iter(loader))
    assert batch.shape == (64, 1, 16, 16)
    positions = {tuple(torch.nonzero(image[0])[0].tolist()) for image in batch}
    assert len(positions) > 5
    assert all(abs(row - 8) <= 2 and abs(col - 8) <= 2 for row, col in positions)


def test_datasets_listing_names_every_source():
    names = [name for name, _ in describe_datasets()]
    assert names[:6] == ["fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "synthetic"]


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_is_found_in_the_debian_folder():
    data = load_dataset("fashion-mnist")
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert data.source == str(FASHION)
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10


def write_noisy_image_folder(root: Path, per_class: int = 30, size: int = 12) -> None:
    """Two classes told apart by brightness, with noise, as PNG files."""
    generator = torch.Generator().manual_seed(0)
    for label, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for item in range(per_class):
            pixels = (torch.rand(size, size, 3, generator=generator) * 128 + 100 * label).to(torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{item}.png")


def test_a_folder_over_the_memory_budget_streams_and_trains_exactly_as_in_memory(tmp_path, tiny_config, capsys):
    from lrlab.data.files import FileImages

    write_noisy_image_folder(tmp_path / "images" / "train")
    write_noisy_image_folder(tmp_path / "images" / "test", per_class=8)
    (tmp_path / "images" / "train" / "dark" / "notes.txt").write_text("not an image")
    dataset = f"folder:{tmp_path / 'images'}"
    streamed = load_dataset(dataset, image_size=8, memory_budget="4K")
    assert isinstance(streamed.train_images, FileImages) and len(streamed.train_labels) == 60
    err = capsys.readouterr().err
    assert "more than the memory budget" in err and "streaming it from disk" in err and "skipped 1" in err
    in_memory = load_dataset(dataset, image_size=8)
    assert isinstance(in_memory.train_images, torch.Tensor)
    assert torch.equal(streamed.train_images[torch.arange(60)].__getitems__(list(range(60))), in_memory.train_images)
    assert streamed.channel_statistics() == in_memory.channel_statistics()

    runs = {}
    for budget in ("4K", None):
        config = tiny_config(dataset=dataset, image_size=8, batch_size=16, augment="crop+flip", memory_budget=budget,
                             data_workers=2, out=str(tmp_path / f"run-{budget}"))
        train(config)
        runs[budget] = without_timing(RunDirectory(config.out).read_metrics())
    assert runs["4K"] == runs[None] and len(runs[None]) == 3


@pytest.mark.parametrize("text, expected", [("512M", 512 * 2**20), ("8G", 8 * 2**30), ("1.5k", 1536), ("2048", 2048)])
def test_memory_budget_sizes(text, expected):
    from lrlab.config import memory_budget_bytes

    assert memory_budget_bytes(text) == expected
    assert 0 < memory_budget_bytes("0.5") < memory_budget_bytes(None) * 4


def test_a_memory_budget_that_is_not_a_size_is_refused(tiny_config):
    with pytest.raises(UsageError, match="--memory-budget 'lots' should be a size like 512M"):
        tiny_config(memory_budget="lots").validate()
