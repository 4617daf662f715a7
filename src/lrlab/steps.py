"""One training step (forward, loss, backward, optimizer step): run eagerly, or replayed from a CUDA graph.

A small model's step on a GPU is bound by Python launching its kernels, not by the GPU. A CUDA
graph records every kernel of the step once and replays them with one launch. The recipe is
PyTorch's whole-network capture (https://pytorch.org/docs/stable/notes/cuda.html#cuda-graphs):
warm up eagerly on a side stream, capture with the gradients set to None so that backward
allocates them in the graph's memory, and feed the graph through static input tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from lrlab.foreach_sgd import ForeachSGD


def eager_step(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, autocast: Any = nullcontext, loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward and optimizer step on one batch; returns the (detached) loss and the logits."""
    with autocast():
        logits = model(images)
        loss = loss_fn(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    (loss if loss_scale == 1.0 else loss * loss_scale).backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def on_side_stream(run: Callable[[], Any]) -> Any:
    """`run()` on a fresh CUDA stream, ordered after and before the current one (the capture's warm-up)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        result = run()
    torch.cuda.current_stream().wait_stream(side)
    return result


def capture(body: Callable[[], None]) -> Callable[[], None]:
    """Record the kernels `body` launches as a CUDA graph (nothing runs now); returns its replay."""
    graph = torch.cuda.CUDAGraph()
    # thread_local: CUDA calls of other threads (a DataLoader's pinning thread) may go on meanwhile.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        body()
    return graph.replay


class GraphedStep:
    """The training step for batches of one shape, captured once as a CUDA graph and then replayed.

    The first batches of that shape train eagerly on a side stream (the warm-up the capture needs);
    a batch of another shape (the last, smaller one of an epoch) trains eagerly, with the same
    optimizer, so every batch is used exactly once and in order. The LR lives in a device tensor
    that `ForeachSGD` refills before each replay, so a schedule moves it without a new capture.
    """

    WARMUP_STEPS = 3  # PyTorch's recipe warms up for a few iterations; cuDNN and autograd set up there

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: ForeachSGD, autocast: Any = nullcontext):
        if not isinstance(optimizer, ForeachSGD):
            raise TypeError("graph capture needs the ForeachSGD optimizer, whose update reads the LR from the device")
        self.model, self.loss_fn, self.optimizer, self.autocast = model, loss_fn, optimizer, autocast
        self.shape: torch.Size | None = None
        self.warm_steps = 0
        self.replay: Callable[[], None] | None = None
        self.static: dict[str, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch; returns the loss and logits, valid until the next call."""
        if self.shape is None:
            self.shape = images.shape  # an epoch's first batch is a full one
        if images.shape != self.shape:
            return eager_step(self.model, self.loss_fn, self.optimizer, images, labels, self.autocast)
        if self.replay is None:
            if self.warm_steps < self.WARMUP_STEPS:
                self.warm_steps += 1
                return on_side_stream(lambda: eager_step(self.model, self.loss_fn, self.optimizer, images, labels, self.autocast))
            self.static = {"images": images.clone(), "labels": labels.clone()}
            self.replay = capture(self._step_on_static_tensors)
        self.static["images"].copy_(images)
        self.static["labels"].copy_(labels)
        self.optimizer.load_lr()
        self.replay()
        return self.static["loss"], self.static["logits"]

    def _step_on_static_tensors(self) -> None:
        """The captured step: gradients set to None first, so that backward writes them afresh each replay."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.model(self.static["images"])
            loss = self.loss_fn(logits, self.static["labels"])
        loss.backward()
        self.optimizer.update()
        self.static.update(loss=loss.detach(), logits=logits.detach())
