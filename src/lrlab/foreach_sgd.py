"""SGD whose update reads the LR from a device tensor, so that a captured CUDA graph can replay it.

torch.optim.SGD reads a tensor LR back to the host (`.item()`), which a capture forbids, and a
float LR would be baked into the graph, so a schedule could not move it. This is torch's
multi-tensor SGD (momentum, dampening, Nesterov, weight decay; same state, same checkpoint)
with one change: the last step multiplies by the LR tensor instead of passing the LR as a
float `alpha`, which rounds once more (results agree with torch.optim.SGD to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

ARGUMENTS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")


class ForeachSGD(torch.optim.Optimizer):
    """torch.optim.SGD's arithmetic; `param_groups[i]["lr"]` stays a float a torch scheduler sets."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})
        self._negative_lrs: list[torch.Tensor] = []

    @torch.no_grad()
    def load_lr(self) -> None:
        """Copy each group's LR (a float) into the device tensor the update reads; no host wait."""
        if len(self._negative_lrs) != len(self.param_groups):
            self._negative_lrs = [torch.empty((), device=group["params"][0].device, dtype=group["params"][0].dtype)
                                  for group in self.param_groups]
        for negative_lr, group in zip(self._negative_lrs, self.param_groups):
            negative_lr.fill_(-group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        """One eager step: the current LR, then the update."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.load_lr()
        self.update()
        return loss

    @torch.no_grad()
    def update(self) -> None:
        """The update alone, with the LR `load_lr` last stored: capturable once momentum buffers exist."""
        if len(self._negative_lrs) != len(self.param_groups):
            raise RuntimeError("ForeachSGD.update() reads the LR that load_lr() stores; call load_lr() (or step()) first")
        for group, negative_lr in zip(self.param_groups, self._negative_lrs):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            momentum = group["momentum"]
            if momentum != 0:
                buffers = self._momentum_buffers(params, grads, momentum, group["dampening"])
                grads = torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"] else buffers
            torch._foreach_add_(params, torch._foreach_mul(grads, negative_lr))

    def _momentum_buffers(self, params: list[torch.Tensor], grads: list[torch.Tensor], momentum: float,
                          dampening: float) -> list[torch.Tensor]:
        """Each parameter's momentum buffer, updated in place (the first step starts it at the gradient, as torch does)."""
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        if any(buffer is None for buffer in buffers):
            for index, (p, grad) in enumerate(zip(params, grads)):
                if buffers[index] is None:
                    buffers[index] = self.state[p]["momentum_buffer"] = grad.detach().clone()
                else:
                    buffers[index].mul_(momentum).add_(grad, alpha=1 - dampening)
            return buffers
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads, alpha=1 - dampening)
        return buffers
