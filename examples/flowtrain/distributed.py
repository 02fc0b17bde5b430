"""Process group set-up for runs under torchrun, and the collective sums they need.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each process's
environment. A plain `python` run has none of them, so it is rank 0 of a world of size 1.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "all_reduce_sum", "init_distributed", "shutdown_distributed", "world_from_environment"]


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the run: rank, number of processes and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes the outputs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether the run has more than one process."""
        return self.world_size > 1


def world_from_environment() -> tuple[int, int, int]:
    """Return (rank, world size, local rank) from torchrun's variables, (0, 1, 0) without them."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world_size, local_rank


def init_distributed(device_type: str, *, timeout_seconds: float = 300.0) -> DistributedContext:
    """Join the process group when torchrun started several processes, and pick the device.

    The backend is NCCL for CUDA and Gloo otherwise. Each CUDA process uses the GPU of its
    local rank. Torchrun's MASTER_ADDR and MASTER_PORT tell the processes where to meet.
    """
    rank, world_size, local_rank = world_from_environment()
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_type)

    if world_size > 1:
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_seconds),
        )
    return DistributedContext(rank, world_size, local_rank, device)


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group, if this run joined one."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Return the elementwise sum of a CPU tensor over all processes, as a CPU tensor.

    NCCL reduces only CUDA tensors, so the values travel through this process's device.
    """
    if not context.enabled:
        return values
    total = values.to(context.device, copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.cpu()
