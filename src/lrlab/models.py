"""Models by name: `mlp`, `cnn`, `convnet`, `resnet`, `torchvision:<name>` for any torchvision
classifier, and the user's own, `file.py:Name` or `package.module:Name`, all behind one registry."""

from __future__ import annotations

import functools
import random
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lrlab import imports
from lrlab.errors import UsageError
from lrlab.specs import check_arguments, parse_arguments, suggestion

NAMES = ("mlp", "cnn", "convnet", "resnet", "torchvision:<name>", "FILE.py:NAME", "package.module:NAME")
# What lrlab's own builders are told about the data; the user's own models are told nothing.
SHAPE_ARGUMENTS = ("channels", "image_size", "num_classes")


def mlp(channels: int, image_size: tuple[int, int], num_classes: int, width: int = 512) -> nn.Module:
    """The PyTorch quickstart network: two hidden layers of `width` ReLU units."""
    inputs = channels * image_size[0] * image_size[1]
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, num_classes),
    )


def _conv_block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


def cnn(channels: int, image_size: tuple[int, int], num_classes: int, width: int = 32) -> nn.Module:
    """A small conv net: three conv-BN-ReLU stages (widths w, 2w, 4w), max-pooling, a linear head."""
    stages = []
    inputs = channels
    for stage, multiple in enumerate((1, 2, 4)):
        outputs = width * multiple
        stages.append(_conv_block(inputs, outputs))
        if stage < 2 and min(image_size) >= 2 ** (stage + 2):
            stages.append(nn.MaxPool2d(2))
        inputs = outputs
    return nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, num_classes))


def convnet(channels: int, image_size: tuple[int, int], num_classes: int, width: int = 32) -> nn.Module:
    """The classic small MNIST-style net: two conv-BN-ReLU-pool stages (w, 2w), then a 128-unit layer
    on the flattened maps. It keeps where features are, which the global-pooled `cnn` gives up; on
    28-px images it reaches a given accuracy in fewer FLOPs (the speed-run configs use it)."""
    if min(image_size) < 4:
        raise UsageError(f"convnet pools twice and needs images of at least 4 x 4 pixels, not {image_size}; use --image-size or cnn")
    pooled = (image_size[0] // 4) * (image_size[1] // 4)
    return nn.Sequential(
        _conv_block(channels, width), nn.MaxPool2d(2),
        _conv_block(width, 2 * width), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * pooled, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes),
    )


def resnet(channels: int, image_size: tuple[int, int], num_classes: int, width: int = 16) -> nn.Module:
    """A ResNet-20-style net for 28-32 px inputs (He et al. 2016), built from torchvision's BasicBlock."""
    from torchvision.models.resnet import BasicBlock  # torchvision takes seconds to import; only resnet needs it

    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    inputs = width
    for stage, multiple in enumerate((1, 2, 4)):
        outputs = width * multiple
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            downsample = None
            if stride != 1 or inputs != outputs:
                downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))
            layers.append(BasicBlock(inputs, outputs, stride=stride, downsample=downsample))
            inputs = outputs
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, num_classes)]
    return nn.Sequential(*layers)


def _torchvision_model(name: str, channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """Any torchvision classifier, untrained, with `num_classes` outputs and `channels` inputs."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UsageError(f"unknown torchvision model {name!r}{suggestion(name, available)}")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as error:
        raise UsageError(f"torchvision model {name!r} cannot be built for {num_classes} classes: {error}") from None
    if channels != 3:
        _adapt_first_conv(model, channels, name)
    return model


def _adapt_first_conv(model: nn.Module, channels: int, name: str) -> None:
    """Replace the first convolution with one that takes `channels` inputs (grey images, say)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(
                    channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups if child.groups == 1 else 1, child.bias is not None,
                ))
                return
    raise UsageError(f"torchvision model {name!r} has no convolution to adapt to {channels} channels")


REGISTRY: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "convnet": convnet, "resnet": resnet}


def find_builder(name: str) -> tuple[Callable[..., Any], tuple[str, ...]]:
    """The callable behind model `name`, and which of its arguments lrlab fills in from the data."""
    if name.startswith("torchvision:"):
        return functools.partial(_torchvision_model, name.partition(":")[2]), SHAPE_ARGUMENTS
    if name in REGISTRY:
        return REGISTRY[name], SHAPE_ARGUMENTS
    if imports.is_import_path(name):
        return imports.load(name, "--model"), ()
    if imports.is_python_object(name):
        raise UsageError(f"model {name!r} was a Python object handed to lrlab.train or lrlab.compare and cannot be "
                         f"imported again; pass it again from Python, or name it by import path (nets.py:Net)")
    raise UsageError(f"unknown model {name!r}{suggestion(name, REGISTRY)}; known: {', '.join(NAMES)}")


def model_factory(
    name: str,
    arguments: dict[str, Any],
    *,
    channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    builder: Callable[..., Any] | None = None,
    check: bool = True,
) -> Callable[[], nn.Module]:
    """A zero-argument callable that builds a fresh, untrained model `name` for this data.

    `builder` is the user's class or function when it was given as a Python object (then `name`
    only labels it). With `check` the model is built once here and tried on a batch of blank
    images, so a model that cannot work ends with one line before any run starts.
    """
    filled: tuple[str, ...] = ()
    if builder is None:
        builder, filled = find_builder(name)
    if isinstance(builder, nn.Module) or not callable(builder):
        what = "an nn.Module instance" if isinstance(builder, nn.Module) else f"a {type(builder).__name__}"
        raise UsageError(f"model {name!r} is {what}; give an nn.Module class or a function that returns a new model "
                         f"(every run starts from fresh weights)")
    try:
        check_arguments(builder, arguments, f"model {name!r}", filled_by_lrlab=filled)
    except ValueError:  # a callable whose signature Python cannot read: let the call itself complain
        pass
    shape = {"channels": channels, "image_size": image_size, "num_classes": num_classes}
    factory = _fresh_each_call(name, functools.partial(builder, **{k: shape[k] for k in filled}, **arguments))
    if check:
        check_model(name, factory, channels, image_size, num_classes)
    return factory


# Every model a factory has returned in this process and that is still alive: a builder that returns one
# of these again (a cached instance) would start a run from another run's trained weights.
_BUILT: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _fresh_each_call(name: str, factory: Callable[[], Any]) -> Callable[[], Any]:
    """`factory`, refusing a model it returned before: every run must start from its own fresh weights."""

    def build() -> Any:
        model = factory()
        if isinstance(model, nn.Module):
            if model in _BUILT:
                raise UsageError(f"model {name!r} returned a model object it had returned before (a cached instance?); it "
                                 f"should build a new model on every call, or each run would start from another run's weights")
            _BUILT.add(model)
        return model

    return build


MODEL_SOURCE = "model_source_sha256"  # in config.yaml's versions: the user's model file the run started with


def model_source(name: str) -> dict[str, str]:
    """For config.yaml's versions: the sha256 of the file that defines model `name`, when it is the user's."""
    digest = imports.source_digest(name)
    return {MODEL_SOURCE: digest} if digest else {}


def model_source_change(name: str, config_path: Any) -> str | None:
    """What to tell a user resuming a run whose model file has changed since config.yaml was written; None if it has not."""
    from lrlab.config import read_yaml_mapping

    saved = read_yaml_mapping(config_path).get("versions")
    saved = saved.get(MODEL_SOURCE) if isinstance(saved, dict) else None
    now = imports.source_digest(name)
    if saved and now and saved != now:
        return (f"{name.partition(':')[0]} has changed since this run started (its sha256 differs from the one in "
                f"config.yaml); the epochs left train the edited model")
    return None


def seed_generators(seed: int) -> None:
    """Seed torch's, numpy's and Python's generators: a model that draws its initial weights from any of
    them starts alike for one seed."""
    import numpy

    torch.manual_seed(seed)
    numpy.random.seed(seed % 2**32)
    random.seed(seed)


def check_model(name: str, factory: Callable[[], Any], channels: int, image_size: tuple[int, int],
                num_classes: int) -> nn.Module:
    """Build the model and try it on two blank images: one line for each way it cannot work. The
    model that passed is returned in training mode, as built, so a run can train it."""
    try:
        model = factory()
    except UsageError:
        raise
    except (Exception, SystemExit) as error:  # the user's code (sys.exit too): which model, what went wrong, one line
        raise UsageError(f"model {name!r} could not be built: {type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {name!r} returned a {type(model).__name__}, not an nn.Module")
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(2, channels, *image_size))
    except (Exception, SystemExit) as error:
        raise UsageError(f"model {name!r} does not accept {channels}x{image_size[0]}x{image_size[1]} images "
                         f"({_first_line(error)}); try --image-size") from None
    _check_logits(name, logits, num_classes, "")
    _check_training_step(name, model, channels, image_size, num_classes)
    return model.train()


def _check_logits(name: str, logits: Any, num_classes: int, mode: str) -> None:
    if not isinstance(logits, torch.Tensor):
        hint = (" (torchvision's googlenet and inception_v3 add auxiliary outputs: --model-args aux_logits=False)"
                if isinstance(logits, tuple) else "")
        raise UsageError(f"model {name!r} returned a {type(logits).__name__}{mode}, not a tensor of logits{hint}")
    if tuple(logits.shape) != (2, num_classes):
        raise UsageError(f"model {name!r} should return logits of shape (batch, {num_classes}) for this data set's "
                         f"{num_classes} classes, but returned {tuple(logits.shape)}{mode} for a batch of 2")
    if not logits.is_floating_point():
        raise UsageError(f"model {name!r} returned logits of type {str(logits.dtype).removeprefix('torch.')}{mode}; "
                         f"the loss needs floating-point logits")


def _check_training_step(name: str, model: nn.Module, channels: int, image_size: tuple[int, int], num_classes: int) -> None:
    """One training step's forward, loss and backward on two blank images: a model that cannot train
    ends here with one line. The model comes back as it was: its BatchNorm statistics, its gradients
    (none) and the random generator (dropout draws from it) are restored."""
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise UsageError(f"model {name!r} has no parameter to train (none, or all frozen with requires_grad=False)")
    saved = {key: buffer.clone() for key, buffer in model.named_buffers()}
    with torch.random.fork_rng(devices=[]):
        try:
            logits = model.train()(torch.zeros(2, channels, *image_size))
        except (Exception, SystemExit) as error:  # noqa: BLE001 - the user's code: one line saying what failed
            raise UsageError(f"model {name!r} fails in training mode ({_first_line(error)})") from None
        _check_logits(name, logits, num_classes, " in training mode")
        try:
            nn.functional.cross_entropy(logits.float(), torch.zeros(2, dtype=torch.long)).backward()
        except (Exception, SystemExit) as error:  # noqa: BLE001
            raise UsageError(f"model {name!r}: its loss cannot be backpropagated ({_first_line(error)})") from None
    with torch.no_grad():
        for key, buffer in model.named_buffers():
            buffer.copy_(saved[key])
    model.zero_grad(set_to_none=True)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def model_arguments(name: str, model_args: str, width: int | None, by_name: bool = True) -> dict[str, Any]:
    """The keyword arguments for model `name`: --model-args, with --width as a shorthand for width= for
    lrlab's own models (`by_name` False: the model was handed over as a Python object)."""
    arguments = parse_arguments(model_args or "", "--model-args")
    if width is not None:
        if not by_name or name not in REGISTRY:
            if by_name:
                find_builder(name)  # an unknown name is the first thing to say
            raise UsageError(f"--width applies to {', '.join(REGISTRY)}; for {name!r} pass --model-args width={width} "
                             f"if it takes one")
        if width < 1:
            raise UsageError(f"--width {width} should be a positive whole number")
        if "width" in arguments:
            raise UsageError("width is given twice, by --width and by --model-args; keep one")
        arguments["width"] = width
    return arguments


def training_bytes(factory: Callable[[], nn.Module], channels: int, image_size: tuple[int, int], batch_size: int) -> int | None:
    """About what training the model `factory` builds takes: weights, gradients and two optimizer states
    per parameter, plus one batch's layer outputs (kept for the backward pass). Sized on torch's meta
    device, so nothing is allocated; None where a model cannot be built there."""
    outputs: list[int] = []

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        outputs.append(output.numel() if isinstance(output, torch.Tensor) else 0)

    try:
        with torch.device("meta"):
            model = factory()
            for module in model.modules():
                if not any(module.children()):
                    module.register_forward_hook(count)
            with torch.no_grad():
                model(torch.zeros(1, channels, *image_size))
    except UsageError:
        raise
    except (Exception, SystemExit):  # noqa: BLE001 - a model that cannot be sized without memory is simply built
        return None
    parameters = sum(p.numel() for p in model.parameters())
    return 4 * (4 * parameters + batch_size * sum(outputs))
