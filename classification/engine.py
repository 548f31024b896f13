"""One epoch of classification training, evaluation (top-1 / top-5), and the run's files.

What MAE's ``engine_finetune.py`` does, for fine-tuning and the linear probe alike: the lr is set
per iteration at accumulation boundaries (``pretrain.schedule``: warm-up, half-cosine to
``min_lr``, times each group's ``lr_scale``), mixup / cutmix mix the batch on the device, the loss
is checked for NaN / inf every step (the run stops before anything is saved), gradients are
accumulated over ``accum_iter`` micro-batches (DDP's ``no_sync`` in between). Added: bf16
autocast (no loss scaling needed), a stop request agreed on after every optimizer step
(``tools.preemption``), and progress lines with the time left.

``evaluate`` counts correct top-1 / top-5 predictions and sums the loss, then sums the counts over
processes when each evaluated a share (``--dist_eval``): an exact accuracy, no sample counted
twice. Checkpoints and JSON results are written atomically (``tools.atomic``).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

import torch

from mae_transfer.pretrain.distributed import all_reduce_sum
from mae_transfer.pretrain.engine import NonFiniteLoss, Progress
from mae_transfer.pretrain.schedule import apply_lr
from mae_transfer.tools.atomic import atomic_torch_save, atomic_write

logger = logging.getLogger("mae_transfer.classification")

__all__ = ["EpochConfig", "EpochResult", "NonFiniteLoss", "Progress", "evaluate",
           "topk_correct", "train_one_epoch", "save_checkpoint", "write_json"]


@dataclass
class EpochConfig:
    accum_iter: int
    steps_per_epoch: int
    epochs: int
    batch_size: int  # per process
    world_size: int
    lr_fn: Callable[[float], float]  # fractional epoch -> lr
    amp_dtype: Optional[torch.dtype] = None
    clip_grad: Optional[float] = None
    log_every: int = 20


@dataclass
class EpochResult:
    loss: float = float("nan")
    lr: float = 0.0
    images_per_s: float = 0.0
    stopped: bool = False  # a stop was requested: the run saves and ends


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def train_one_epoch(model: torch.nn.Module, criterion: Callable, loader: Iterable,
                    optimizer: torch.optim.Optimizer, device: torch.device, cfg: EpochConfig,
                    progress: Progress, mixup_fn: Optional[Callable] = None,
                    no_sync: Optional[Callable] = None,
                    stop_requested: Callable[[], bool] = lambda: False) -> EpochResult:
    """Train from ``progress`` (epoch, step in it) to the end of the epoch or an agreed stop;
    updates ``progress``. ``no_sync``: DDP's. ``stop_requested`` is called after every
    optimizer step on every process (it may be a collective)."""
    model.train(True)
    result = EpochResult()
    loss_sum, loss_count, done = 0.0, 0, 0
    t0 = t_log = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for images, targets in loader:
        step = progress.step_in_epoch
        if step % cfg.accum_iter == 0:
            result.lr = cfg.lr_fn(progress.epoch + step / cfg.steps_per_epoch)
            apply_lr(optimizer, result.lr)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        boundary = (step + 1) % cfg.accum_iter == 0
        sync = no_sync() if (no_sync is not None and not boundary) else contextlib.nullcontext()
        with sync:
            with _autocast(device, cfg.amp_dtype):
                loss = criterion(model(images), targets)
            loss_value = float(loss.item())
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(f"non-finite loss ({loss_value}) in epoch "
                                    f"{progress.epoch + 1}, step {step + 1}, lr {result.lr:.3g}")
            (loss / cfg.accum_iter).backward()
        if boundary:
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss_value
        loss_count += 1
        done += 1
        progress.step_in_epoch += 1
        progress.global_step += 1
        if not boundary:
            continue
        if progress.step_in_epoch % cfg.log_every == 0 or \
                progress.step_in_epoch >= cfg.steps_per_epoch:
            now = time.perf_counter()
            _log_step(progress, cfg, loss_value, result.lr, now - t0, done,
                      cfg.log_every * cfg.batch_size * cfg.world_size / max(now - t_log, 1e-9))
            t_log = now
        if stop_requested():
            result.stopped = True
            break
    total, count = all_reduce_sum([loss_sum, float(loss_count)], device)
    result.loss = total / count if count else float("nan")
    result.images_per_s = done * cfg.batch_size * cfg.world_size / max(
        time.perf_counter() - t0, 1e-9)
    return result


def _log_step(p: Progress, cfg: EpochConfig, loss: float, lr: float, elapsed: float, done: int,
              speed: float) -> None:
    remaining = cfg.steps_per_epoch - p.step_in_epoch + (cfg.epochs - p.epoch - 1) * \
        cfg.steps_per_epoch
    eta = datetime.timedelta(seconds=int(remaining * elapsed / max(done, 1)))
    logger.info("epoch %d/%d  step %d/%d  loss %.4f  lr %.3e  %.0f img/s  eta %s", p.epoch + 1,
                cfg.epochs, p.step_in_epoch, cfg.steps_per_epoch, loss, lr, speed, eta)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> Dict[int, int]:
    """Number of samples whose target is among the ``k`` highest logits, for each ``k`` (``k``
    capped at the number of classes, as timm's ``accuracy``)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax), highest first
    hit = top.eq(targets[:, None])
    return {k: int(hit[:, :min(k, kmax)].any(dim=1).sum().item()) for k in ks}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, device: torch.device,
             amp_dtype: Optional[torch.dtype] = None, reduce: bool = False) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy of ``model`` on ``loader``.
    ``reduce``: each process saw a share of the set (``--dist_eval``); counts are summed."""
    model.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets,
                                                            reduction="sum").item())
        hits = topk_correct(logits, targets)
        correct1 += hits[1]
        correct5 += hits[5]
        n += targets.shape[0]
    if reduce:
        correct1, correct5, loss_sum, n = all_reduce_sum([correct1, correct5, loss_sum, n],
                                                         device)
        correct1, correct5, n = int(round(correct1)), int(round(correct5)), int(round(n))
    if n == 0:
        return {"acc1": float("nan"), "acc5": float("nan"), "loss": float("nan"), "n": 0}
    return {"acc1": 100.0 * correct1 / n, "acc5": 100.0 * correct5 / n, "loss": loss_sum / n,
            "n": n}


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save(state)`` atomically (a crash mid-write keeps the previous file)."""
    return atomic_torch_save(state, path)


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))
