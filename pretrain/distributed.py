"""Process-group setup for one process, several GPUs, or several nodes (torchrun / SLURM).

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` > 1 a process group
is created (NCCL on GPUs, gloo on CPUs) and each process takes the GPU of its local rank. Without
them the run is a single process and nothing is initialised.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import List

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int) -> torch.device:
    """``cuda`` -> this process's GPU, ``cpu`` -> CPU; a clear error if CUDA is missing."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was given but no CUDA GPU is available "
                               "(use --device cpu for a CPU run)")
        index = local_rank if name == "cuda" else torch.device(name).index
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}: use cuda or cpu")
    return torch.device("cpu")


def init_distributed(device_name: str) -> DistInfo:
    """Read torchrun's environment, pick the device, and create the process group if needed."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_sum(values: List[float], device: torch.device) -> List[float]:
    """Sum a few numbers over all processes (identity when not distributed)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
