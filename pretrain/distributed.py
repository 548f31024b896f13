"""Process-group setup for one process, several GPUs, or several nodes (torchrun / SLURM).

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` > 1 a process group
is created (NCCL on GPUs, gloo on CPUs) and each process takes the GPU of its local rank. Without
them the run is a single process and nothing is initialised.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, List, Optional, Sequence

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


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (a picklable value; identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def fail_together(error: Optional[Exception], device: torch.device,
                  others_error: Callable[[Sequence[int]], Exception]) -> None:
    """A collective for a step every rank does, that can fail on some ranks only: each rank
    passes its own error (or None); if any rank failed, every rank raises, its own error or
    ``others_error(failed_ranks)``, so the whole job stops instead of some ranks hanging in the
    next collective."""
    initialized = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialized else 1
    flags = [0.0] * world
    if error is not None:
        flags[dist.get_rank() if initialized else 0] = 1.0
    failed = [r for r, f in enumerate(all_reduce_sum(flags, device)) if f]
    if error is not None:
        raise error
    if failed:
        raise others_error(failed)


def cpu_group():
    """A gloo group of all ranks when the default one is NCCL (small CPU collectives, such as
    the per-step stop agreement, then never wait on the GPU queue); else None (the default)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return dist.new_group(backend="gloo")
    return None


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
