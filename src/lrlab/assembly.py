"""What a run is built from, before any training: its device, its data (loaded, then split as the run
says), its model factory and whether the device can hold it. The engine assembles runs from these;
the grid and the study use them to check a comparison before anything trains.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable

import torch
from torch import nn

from lrlab import __version__
from lrlab.config import RunConfig
from lrlab.data import ImageData, load_dataset
from lrlab.errors import UsageError
from lrlab.models import check_model, model_arguments, model_factory, training_bytes


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; asking for an absent device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def bf16_and_channels_last(config: RunConfig, device: torch.device) -> tuple[bool, bool]:
    """Whether a run on `device` trains under bf16 autocast, and in the channels-last layout.

    Measured here: bf16 autocast with channels-last halves a small conv net's epoch on the CPU, as it
    speeds up CUDA; MPS autocast support is patchy, so there `auto` stays in fp32.
    """
    fast_path = device.type in ("cuda", "cpu")
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and fast_path)
    channels_last = config.channels_last if config.channels_last is not None else fast_path
    return use_bf16, channels_last


def device_memory_bytes(device: torch.device) -> int:
    """All the memory of `device`: the GPU's own, or the machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def versions() -> dict[str, str]:
    # torchvision's version from its metadata: importing it takes seconds, and a run may not need it.
    return {"lrlab": __version__, "torch": str(torch.__version__), "torchvision": importlib.metadata.version("torchvision")}


def load_run_data(config: RunConfig) -> ImageData:
    """The data set `config` names, loaded as it says (size, test hold-out of a folder, strictness)."""
    return load_dataset(config.dataset, config.data_dir, config.image_size, config.test_fraction, config.strict,
                        config.memory_budget)


def split_for_run(data: ImageData, config: RunConfig) -> ImageData:
    """The images a run trains, validates and tests on: `--limit-*` subsets, then the validation split.

    Both depend only on `split_seed`, never on the run's seed, so every run of a comparison
    validates and tests on the same images (the pairing the statistics rely on).
    """
    limited = data.subset(config.limit_train, config.limit_test, seed=config.split_seed)
    return limited.split_validation(config.val_fraction, config.split_seed)


def run_model_factory(config: RunConfig, data: ImageData, builder: Callable[..., nn.Module] | None = None,
                      check: bool = True) -> Callable[[], nn.Module]:
    """A zero-argument callable building a fresh model as `config` says, for `data`; with `check`, built
    once here and tried on blank images (see `models.check_model`).

    `builder` is the user's model class or function when it was handed over as a Python object.
    The check sizes the model on the meta device first, as a run does, so a model too large for
    the device is refused before it is built.
    """
    factory = model_factory(config.model, model_arguments(config.model, config.model_args, config.width, builder is None),
                            channels=data.channels, image_size=data.image_size, num_classes=data.num_classes, builder=builder,
                            check=False)
    if check:
        check_footprint(config, data, factory, resolve_device(config.device))
        checked = check_model(config.model, factory, data.channels, data.image_size, data.num_classes)
        factory()  # a second build while the first lives: a builder returning one cached model is refused here
        del checked
    return factory


def check_footprint(config: RunConfig, data: ImageData, build_model: Callable[[], nn.Module], device: torch.device) -> None:
    """Refuse, before building anything, a model and batch that `device` cannot hold while training."""
    needed = training_bytes(build_model, data.channels, data.image_size, config.batch_size)
    available = device_memory_bytes(device)
    if needed is not None and needed > available:
        height, width = data.image_size
        raise UsageError(f"training {config.model} (width {config.width or 'default'}) on {height}x{width} images in "
                         f"batches of {config.batch_size} needs about {needed / 2**30:,.1f} GiB, more than the "
                         f"{available / 2**30:,.1f} GiB of {device.type} memory here; give a smaller --width, "
                         f"--image-size or --batch-size")
