"""One training step of one model: forward, loss, backward, optimizer step."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn


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
