"""How a group of runs takes a step: plain (one model and its torch optimizer) or stacked (K models as one).

The engine's one loop (`engine.train_epoch`, `engine.evaluate`) talks to either kind the same way,
arm by arm: `train` gives each arm's loss and logits on a batch, `evaluation_losses` each arm's
loss and logits in evaluation mode. A run alone always takes the plain step and never goes through
vmap; only runs that share their batches take the stacked step, which is built once for their
group and hands each run its ordinary model and optimizer state when a checkpoint is written.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any, Protocol

import torch
from torch import nn

from lrlab import distributed
from lrlab.optimizers import is_schedule_free, set_training_mode

# The schedulefree README recomputes BatchNorm statistics on 50 training batches before evaluating.
BATCHNORM_RECOMPUTE_BATCHES = 50


class Step(Protocol):
    """What the loop needs of a step; tensors have a leading axis of `arms`."""

    arms: int
    device: torch.device

    def start_epoch(self) -> None: ...

    def train(self, images: torch.Tensor, labels: torch.Tensor, loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]: ...

    def evaluation_losses(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def keep(self, positions: list[int]) -> None: ...

    def export(self) -> None: ...

    def evaluation_point(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         ranks: distributed.Ranks) -> contextlib.AbstractContextManager[list[dict | None]]: ...


class PlainStep:
    """One model and its torch optimizer: the PyTorch quickstart's step (forward, loss, backward,
    optimizer step). Under torchrun `forward_model` is the DDP wrapper around `model`."""

    arms = 1

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                 autocast: Callable[[], Any] = nullcontext, forward_model: nn.Module | None = None):
        self.model, self.optimizer, self.loss_fn, self.autocast = model, optimizer, loss_fn, autocast
        self.forward_model = forward_model or model
        self.device = next(model.parameters()).device

    def start_epoch(self) -> None:
        self.forward_model.train()
        set_training_mode(self.optimizer, True)

    def train(self, images: torch.Tensor, labels: torch.Tensor, loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and optimizer step on one batch; the (detached) loss and logits, as one arm."""
        with self.autocast():
            logits = self.forward_model(images)
            loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if loss_scale == 1.0 else loss * loss_scale).backward()
        self.optimizer.step()
        return loss.detach().unsqueeze(0), logits.detach().unsqueeze(0)

    def evaluation_losses(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        with self.autocast():
            logits = self.model(images)
        return self.loss_fn(logits.float(), labels).unsqueeze(0), logits.unsqueeze(0)

    def keep(self, positions: list[int]) -> None:
        """A lone run that diverged ends its loop; there is nothing to drop."""

    def export(self) -> None:
        """The model and optimizer are the run's own already."""

    @contextlib.contextmanager
    def evaluation_point(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         ranks: distributed.Ranks = distributed.SINGLE) -> Iterator[list[dict | None]]:
        """The weights to evaluate are in the model while this holds; yields the weights best.pt should keep
        (None: the model's own).

        A schedule-free optimizer takes its gradients at one point (y) and returns the average of its
        iterates (x); x is what is evaluated and kept. BatchNorm's running statistics were gathered at
        y, so, as the schedulefree README asks, they are recomputed at x on `batches` (the first
        training batches of the epoch just trained). Afterwards the weights, BatchNorm statistics, RNG
        and model mode are put back bit for bit (switching x back to y with the optimizer's own
        arithmetic is not exact in floating point), so training goes on as if it had not been evaluated.
        """
        was_training = self.model.training
        if not is_schedule_free(self.optimizer):
            try:
                yield [None]
            finally:
                self.model.train(was_training)
            return
        training_state = {name: value.clone() for name, value in self.model.state_dict().items()}
        set_training_mode(self.optimizer, False)
        try:
            recompute_batchnorm(self.model, itertools.islice(batches, BATCHNORM_RECOMPUTE_BATCHES), self.autocast, ranks)
            yield [{name: value.clone() for name, value in self.model.state_dict().items()}]
        finally:
            set_training_mode(self.optimizer, True)
            self.model.load_state_dict(training_state)
            self.model.train(was_training)


def recompute_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Any = nullcontext,
                        ranks: distributed.Ranks = distributed.SINGLE) -> None:
    """BatchNorm running statistics made the plain average over `batches` at the current weights.

    torch's `update_bn` (from SWA, which has the same problem) does the work; the RNG is forked so
    that a layer drawing random numbers in training mode (dropout) leaves the run's RNG as it was.
    Under torchrun the ranks' statistics are averaged, so every rank evaluates the same model.
    """
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast():
        torch.optim.swa_utils.update_bn(batches, model)
    if ranks.distributed:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                for statistic in (module.running_mean, module.running_var):
                    statistic.copy_(distributed.sum_over_ranks(statistic.clone(), ranks) / ranks.world)


class StackedStep:
    """The models of a group's runs stacked along a leading axis (`StackedModel`, under torch.func.vmap)
    and stepped by one `VectorOptimizer`, each run's hyperparameters read from its own `ArmOptimizer`.

    Built once for the group; `export` writes each run's slice back into its own model and
    ArmOptimizer (torch's layouts), which is what its checkpoint saves.
    """

    def __init__(self, models: list[nn.Module], optimizers: list[Any], loss_fn: nn.Module,
                 autocast: Callable[[], Any] = nullcontext):
        from lrlab.stacked import StackedModel
        from lrlab.vectorized import VectorOptimizer

        self.models, self.autocast = list(models), autocast
        self.stacked = StackedModel(self.models, loss_fn)
        self.optimizer = VectorOptimizer(self.stacked.parameter_list(), list(optimizers))
        self.device = self.stacked.parameter_list()[0].device
        self._per_arm_loss = torch.func.vmap(loss_fn, in_dims=(0, None))

    @property
    def arms(self) -> int:
        return self.stacked.arms

    def start_epoch(self) -> None:
        """The stacked model is put in training mode by each training call."""

    def train(self, images: torch.Tensor, labels: torch.Tensor, loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            losses, logits = self.stacked.losses_and_logits(images, labels)
        self.optimizer.zero_grad()
        (losses.sum() if loss_scale == 1.0 else losses.sum() * loss_scale).backward()
        self.optimizer.step()
        return losses.detach().float(), logits.detach()

    @torch.no_grad()
    def evaluation_losses(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.stacked.logits(images)
        return self._per_arm_loss(logits.float(), labels), logits

    def keep(self, positions: list[int]) -> None:
        """Go on with the arms at `positions` only (the others ended); their order is kept."""
        self.stacked.keep(positions)
        self.optimizer.keep(positions, self.stacked.parameter_list())
        self.models = [self.models[position] for position in positions]

    def export(self) -> None:
        self.stacked.copy_into(self.models)
        self.optimizer.export_state()

    @contextlib.contextmanager
    def evaluation_point(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         ranks: distributed.Ranks = distributed.SINGLE) -> Iterator[list[dict | None]]:
        """Groups hold no schedule-free runs (`group.alone_reason`): the weights trained are those evaluated."""
        yield [None] * self.arms
