"""Multi-process segmentation runs: the launcher, the process group, SyncBN, decisions made once.

MMEngine's ``pytorch`` launcher binds every process to a CUDA device and talks NCCL. Here:

- ``choose_launcher``: a process started by torchrun (``WORLD_SIZE`` > 1) without
  ``--launcher`` joins the job as a real rank (``--launcher pytorch``, logged), instead of N
  independent copies writing one work dir; ``--launcher pytorch`` without torchrun's
  ``RANK`` / ``WORLD_SIZE`` is one line.
- ``start_process_group``: without CUDA, the process group is started here with gloo (MMEngine
  then skips its own CUDA-only start) and DDP wraps the CPU model (``device_ids=None``). This is a
  test mode: it lets DDP wrapping, the samplers, evaluation gathering, rank-0 checkpointing and
  logging run in the test suite on a CPU; it is not a way to train.
- ``sync_bn_to_bn``: ``SyncBN`` needs CUDA and more than one process; on a CPU or in one process
  the config's ``SyncBN`` norm layers become ``BN`` (logged).
- ``decide_resume``: rank 0 alone picks the checkpoint to resume (MMEngine's
  ``find_latest_checkpoint``) and every rank gets that path; ``stop_if_any_failed`` turns an
  error on any rank into the same one-line error on every rank (``RankError``), so no rank is
  left waiting in a collective for one that has exited.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Any, List, Optional, Type

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner.checkpoint import find_latest_checkpoint

from mae_transfer.tools.checkpoints import CheckpointError


class RankError(CheckpointError):
    """An error one rank met, raised on every rank; rank 0 prints it (``reported_by_rank0``)."""

    reported_by_rank0 = True


def env_rank() -> int:
    """This process' rank as torchrun / SLURM set it (0 outside a multi-process launch)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else env_rank()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def choose_launcher(cfg: Config, environ=os.environ) -> None:
    """``cfg.launcher`` from ``--launcher`` and the environment torchrun made (see module doc)."""
    launched = int(environ.get("WORLD_SIZE", 1))
    if cfg.get("launcher", "none") == "none" and launched > 1:
        print_log(f"WORLD_SIZE={launched} in the environment (torchrun) without --launcher: this "
                  f"process joins the job as rank {environ.get('RANK', '?')} "
                  f"(--launcher pytorch)", logger="current", level=logging.WARNING)
        cfg.launcher = "pytorch"
    if cfg.get("launcher") == "pytorch":
        missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                   if k not in environ]
        if missing:
            raise ValueError(f"--launcher pytorch: {', '.join(missing)} not set; start the "
                             f"processes with torchrun (torchrun --nproc_per_node N "
                             f"tools/train_seg.py ... --launcher pytorch)")


def start_process_group(cfg: Config, cuda: Optional[bool] = None) -> None:
    """Without CUDA: a gloo process group for ``--launcher pytorch`` and DDP on the CPU.

    With CUDA nothing happens here: MMEngine starts the group itself (``env_cfg.dist_cfg``).
    """
    launcher = cfg.get("launcher", "none")
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if launcher == "none" or cuda:
        return
    if launcher != "pytorch":
        raise ValueError(f"--launcher {launcher} needs GPUs; on a CPU start the processes with "
                         f"torchrun and --launcher pytorch (gloo, a test mode)")
    env_cfg = cfg.setdefault("env_cfg", {})
    dist_cfg = env_cfg.setdefault("dist_cfg", {})
    dist_cfg["backend"] = "gloo"
    if not is_distributed():
        timeout = dist_cfg.get("timeout")
        kwargs = {"timeout": datetime.timedelta(seconds=timeout)} if timeout else {}
        dist.init_process_group(backend="gloo", **kwargs)
    wrapper = cfg.get("model_wrapper_cfg") or dict(
        type="MMDistributedDataParallel", broadcast_buffers=False,
        find_unused_parameters=cfg.get("find_unused_parameters", False))
    wrapper["device_ids"] = None  # DDP of a CPU model takes no device ids
    cfg.model_wrapper_cfg = wrapper
    print_log(f"no CUDA: process group on gloo, rank {rank()} of {world_size()}, DDP on the CPU "
              f"(a test mode of the multi-process path, not a way to train)", logger="current",
              level=logging.WARNING)


def _replace_sync_bn(node: Any) -> int:
    count = 0
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
            count += 1
        for value in node.values():
            count += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_sync_bn(value)
    return count


def sync_bn_to_bn(cfg: Config, cuda: Optional[bool] = None) -> int:
    """On a CPU or in one process: every ``SyncBN`` norm config of ``cfg.model`` -> ``BN``.

    Returns how many were replaced (logged). MMEngine's ``sync_bn`` option (convert the built
    model's BatchNorm to SyncBatchNorm) is dropped there too.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda and cfg.get("launcher", "none") != "none":
        return 0  # GPUs under a launcher: SyncBN as the config asks
    why = "no CUDA" if not cuda else "one process"
    count = _replace_sync_bn(cfg.model)
    if count:
        print_log(f"{why}: SyncBN -> BN in {count} norm configs of the model", logger="current",
                  level=logging.WARNING)
    if cfg.pop("sync_bn", None):
        print_log(f"{why}: the config's sync_bn is ignored", logger="current",
                  level=logging.WARNING)
    return count


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (itself without a process group)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stop_if_any_failed(error: Optional[str], what: str,
                       single: Type[Exception] = CheckpointError) -> None:
    """A collective: raise ``RankError`` on every rank if any rank passes an ``error``.

    ``what`` names the step ("checkpoint work_dirs/x/iter_20.pth"); the line names the ranks
    that failed and the first error. In one process: ``single(f"{what}: {error}")``.
    """
    if not is_distributed():
        if error:
            raise single(f"{what}: {error}")
        return
    errors: List[Optional[str]] = [None] * world_size()
    dist.all_gather_object(errors, error)
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if failed:
        ranks = ", ".join(str(r) for r, _ in failed)
        raise RankError(f"{what} on rank {ranks}: {failed[0][1]}; every rank stops")


def decide_resume(cfg: Config) -> None:
    """``--resume`` without a file: rank 0 finds the latest checkpoint, every rank loads it.

    Each rank looking for itself can disagree (work dirs not shared between nodes, a checkpoint
    written between two looks): one would resume and another start from scratch.
    """
    if not cfg.get("resume") or cfg.get("load_from"):
        return
    latest = find_latest_checkpoint(cfg.work_dir) if rank() == 0 else None
    latest = broadcast_from_rank0(latest)
    if latest is None:
        cfg.resume = False
        print_log(f"--resume: no checkpoint in {cfg.work_dir} yet; starting from iteration 0",
                  logger="current", level=logging.WARNING)
        return
    cfg.load_from = latest
    print_log(f"--resume: {latest} (chosen by rank 0, loaded by all {world_size()} ranks)",
              logger="current")
