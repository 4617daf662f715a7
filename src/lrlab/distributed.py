"""One run over several processes under `torchrun`: which rank this is, and the few collectives the engine needs.

Outside torchrun everything here is a no-op, so the engine has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lrlab.errors import UsageError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def from_environment() -> Ranks:
    """The ranks torchrun announces through WORLD_SIZE, RANK and LOCAL_RANK; one process otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise UsageError("WORLD_SIZE, RANK and LOCAL_RANK should be integers; start lrlab with torchrun") from None


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU) unless already in one; returns this rank's device."""
    if not ranks.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UsageError(f"torchrun training runs on CUDA or the CPU, not {device.type}; pass --device cpu or cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop(ranks: Ranks) -> None:
    """Leave the process group at the end of a torchrun run."""
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """`tensor` summed over every rank (itself when there is one process)."""
    if ranks.distributed:
        dist.all_reduce(tensor)
    return tensor


def pass_totals(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, ranks: Ranks) -> tuple[float, int, int]:
    """A pass's summed loss, correct predictions and images over every rank, read from the device once."""
    if not ranks.distributed:
        return float(loss_sum), int(correct), seen
    counts = torch.stack([loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=loss_sum.device)])
    summed = sum_over_ranks(counts, ranks)
    return float(summed[0]), int(summed[1]), int(summed[2])


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()
