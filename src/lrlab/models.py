"""Models by name: `mlp`, `cnn`, `convnet`, `resnet`, and `torchvision:<name>` for any torchvision classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lrlab.errors import UsageError
from lrlab.specs import suggestion

NAMES = ("mlp", "cnn", "convnet", "resnet", "torchvision:<name>")


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


def _torchvision_model(name: str, channels: int, num_classes: int) -> nn.Module:
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


def build_model(name: str, channels: int, image_size: tuple[int, int], num_classes: int, width: int | None = None) -> nn.Module:
    """The model `name` for images of `channels` x `image_size` and `num_classes` classes."""
    builders = {"mlp": mlp, "cnn": cnn, "convnet": convnet, "resnet": resnet}
    if name.startswith("torchvision:"):
        if width is not None:
            raise UsageError("--width applies to mlp, cnn, convnet and resnet, not to torchvision models")
        model = _torchvision_model(name.partition(":")[2], channels, num_classes)
    elif name in builders:
        if width is not None and width < 1:
            raise UsageError(f"--width {width} should be a positive whole number")
        keywords = {"width": width} if width is not None else {}
        model = builders[name](channels, image_size, num_classes, **keywords)
    else:
        raise UsageError(f"unknown model {name!r}{suggestion(name, builders)}; known: {', '.join(NAMES)}")
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, channels, *image_size))
    except RuntimeError as error:
        raise UsageError(f"model {name!r} does not accept {channels}x{image_size[0]}x{image_size[1]} images "
                         f"({str(error).splitlines()[0]}); try --image-size") from None
    return model.train()


def training_bytes(name: str, channels: int, image_size: tuple[int, int], num_classes: int, width: int | None,
                   batch_size: int) -> int | None:
    """About what training the model takes: weights, gradients and two optimizer states per parameter,
    plus one batch's layer outputs (kept for the backward pass). Sized on torch's meta device, so
    nothing is allocated; None where a model cannot be built there."""
    outputs: list[int] = []

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        outputs.append(output.numel() if isinstance(output, torch.Tensor) else 0)

    try:
        with torch.device("meta"):
            model = build_model(name, channels, image_size, num_classes, width)
            for module in model.modules():
                if not any(module.children()):
                    module.register_forward_hook(count)
            with torch.no_grad():
                model(torch.zeros(1, channels, *image_size))
    except UsageError:
        raise
    except Exception:  # noqa: BLE001 - a model that cannot be sized without memory is simply built
        return None
    parameters = sum(p.numel() for p in model.parameters())
    return 4 * (4 * parameters + batch_size * sum(outputs))
