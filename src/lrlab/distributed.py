"""One run over several processes under `torchrun`: which rank this is, and the few collectives the engine needs.

Outside torchrun everything here is a no-op, so the engine has one code path.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lrlab.errors import UsageError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine

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
        return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")),
                     int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    except ValueError:
        raise UsageError("WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE should be integers; start lrlab with torchrun") from None


def start(ranks: Ranks, device: torch.device, chosen_automatically: bool = False) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU) unless already in one; returns this rank's device."""
    if not ranks.distributed:
        return device
    device = rank_device(ranks, device, chosen_automatically)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def rank_device(ranks: Ranks, device: torch.device, chosen_automatically: bool) -> torch.device:
    """This rank's device: its own GPU, or the CPU for every rank when the machine has fewer GPUs than processes."""
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"torchrun training runs on CUDA or the CPU, not {device.type}; pass --device cpu or cuda")
    gpus = torch.cuda.device_count()
    if ranks.local_world <= gpus:
        return torch.device("cuda", ranks.local_rank)
    if not chosen_automatically:
        raise UsageError(f"torchrun started {ranks.local_world} processes on this machine, which has {gpus} GPU(s); "
                         f"start at most {gpus} (--nproc-per-node {gpus}) or pass --device cpu")
    if ranks.main:
        print(f"lrlab: note: torchrun started {ranks.local_world} processes for {gpus} GPU(s), so every process "
              f"trains on the CPU (gloo); start --nproc-per-node {gpus} to train on the GPU", file=sys.stderr)
    return torch.device("cpu")


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
    # One float32 tensor (MPS has no float64): counts stay exact up to 2**24 images a pass.
    counts = torch.stack([loss_sum, correct.to(loss_sum.dtype), torch.full((), float(seen), device=loss_sum.device)])
    loss_total, correct_total, seen_total = sum_over_ranks(counts, ranks).tolist()
    return loss_total, round(correct_total), round(seen_total)


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()
