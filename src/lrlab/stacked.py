"""K copies of any `nn.Module` trained as one: stacked parameters and buffers under `torch.func.vmap`.

Each arm's weights and BatchNorm statistics sit along a leading axis; `functional_call` runs the
module with one arm's slice, and `vmap` runs every arm at once on the same (unbatched) batch, so
convolutions become grouped convolutions and the arms never mix. BatchNorm's running statistics
are updated in place, per arm. (The recipe of torch.func's "model ensembling" tutorial.)
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call, vmap

# vmap runs an op without a batching rule (adaptive_avg_pool2d's as_strided_ on channels-last
# input) arm by arm and warns each time; what that costs is in the measured speed-up
# (benchmarks/README.md), so the warning would only alarm users.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule",
                        category=UserWarning)


def _batchnorm_in_float32(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    # Under bf16 autocast a vmapped BatchNorm gets bf16 activations but float32 running statistics,
    # which CUDA's kernel refuses in the backward ("Expected running_mean to have type BFloat16");
    # there BatchNorm runs in float32 and the next layer casts back. The CPU kernel takes the mix
    # (tested), and the casts would cost it time, so on the CPU BatchNorm runs as in a lone run.
    return tuple(value.float() for value in inputs)


class StackedModel:
    """The arms' models as one: `parameters` and `buffers` map each name to a [K, ...] tensor."""

    def __init__(self, models: list[nn.Module], loss_fn: nn.Module):
        self.template = copy.deepcopy(models[0])
        on_cpu = next(models[0].parameters()).device.type == "cpu"
        for module in self.template.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not on_cpu:
                module.register_forward_pre_hook(_batchnorm_in_float32)
        self.loss_fn = loss_fn
        self.parameters = {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_()
                           for name, _ in models[0].named_parameters()}
        self.buffers = {name: torch.stack([dict(m.named_buffers())[name] for m in models])
                        for name, _ in models[0].named_buffers()}
        # Dropout draws its own mask for each arm, as separate runs would.
        self._train_step = vmap(self._loss_and_logits, in_dims=(0, 0, None, None), randomness="different")
        self._predict = vmap(self._logits, in_dims=(0, 0, None), randomness="different")

    @property
    def arms(self) -> int:
        return next(iter(self.parameters.values())).shape[0]

    def parameter_list(self) -> list[torch.Tensor]:
        return list(self.parameters.values())

    def _logits(self, parameters: dict, buffers: dict, images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, (parameters, buffers), (images,))

    def _loss_and_logits(self, parameters: dict, buffers: dict, images: torch.Tensor,
                         labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self._logits(parameters, buffers, images)
        return self.loss_fn(logits, labels), logits

    def losses_and_logits(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each arm's mean loss on the batch ([K]) and its logits ([K, batch, classes]), in training mode."""
        self.template.train()
        return self._train_step(self.parameters, self.buffers, images, labels)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Each arm's logits in evaluation mode (BatchNorm uses its running statistics)."""
        self.template.eval()
        return self._predict(self.parameters, self.buffers, images)

    def keep(self, arm_indices: list[int]) -> None:
        """Drop every arm not in `arm_indices` (the order is kept)."""
        index = torch.tensor(arm_indices, device=next(iter(self.parameters.values())).device)
        self.parameters = {name: value.detach()[index].requires_grad_() for name, value in self.parameters.items()}
        self.buffers = {name: value[index] for name, value in self.buffers.items()}

    @torch.no_grad()
    def copy_into(self, models: Iterable[nn.Module]) -> None:
        """Write each arm's weights and buffers into its own ordinary model (for checkpoints)."""
        for arm, model in enumerate(models):
            for name, parameter in model.named_parameters():
                parameter.copy_(self.parameters[name][arm])
            for name, buffer in model.named_buffers():
                buffer.copy_(self.buffers[name][arm])
