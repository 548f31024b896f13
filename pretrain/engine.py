"""One epoch of MAE pretraining: the step loop, gradient accumulation, logging, stop checks.

The loss is never read back to the CPU inside a step (that would stall the GPU queue): losses
are summed on the device and, every ``log_every`` steps, summed over the processes and checked.
A non-finite sum stops the run before any checkpoint is written, so the last good one survives.
The "stop requested" flag (SIGTERM/SIGUSR1 from a scheduler, ``tools.preemption``) is agreed on
after every optimizer step, whatever ``log_every`` is, so every process stops after the same step
and the save fits in the scheduler's grace period.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

import torch

from mae_transfer.pretrain.data import normalize_batch
from mae_transfer.pretrain.device_decode import batch_pixels
from mae_transfer.pretrain.distributed import DistInfo, all_reduce_sum
from mae_transfer.pretrain.schedule import apply_lr

logger = logging.getLogger("mae_transfer.pretrain")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run must stop without saving."""


@dataclass
class Progress:
    """Where the run is: ``epoch`` in progress, micro-steps done in it, micro-steps done in all."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class StepConfig:
    mask_ratio: float
    accum_iter: int
    steps_per_epoch: int
    epochs: int
    log_every: int
    batch_size: int
    lr_fn: Callable[[float], float]
    amp_dtype: Optional[torch.dtype] = None
    clip_grad: Optional[float] = None
    max_steps: Optional[int] = None


@dataclass
class EpochResult:
    loss: float = float("nan")
    lr: float = 0.0
    images_per_s: float = 0.0
    stopped: bool = False  # max_steps reached or a stop requested: end the run after this
    stop_requested: bool = False  # the stop was requested (a signal on some process)


def train_one_epoch(model: torch.nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, cfg: StepConfig, progress: Progress,
                    dist_info: DistInfo, no_sync: Optional[Callable] = None,
                    stop_requested: Callable[[], bool] = lambda: False,
                    on_log: Callable[[Dict[str, float], int], None] = lambda v, s: None
                    ) -> EpochResult:
    """Train from ``progress`` to the end of its epoch (or an earlier stop); updates ``progress``.

    ``no_sync`` is DDP's ``no_sync`` (skips the gradient all-reduce on accumulation steps).
    ``stop_requested`` is called after every optimizer step on every process (it may be a
    collective, ``StopRequest.agree``); True ends the epoch there, losses checked and logged.
    """
    device = dist_info.device
    model.train()
    autocast = (torch.autocast(device.type, dtype=cfg.amp_dtype) if cfg.amp_dtype
                else contextlib.nullcontext())
    monitor = _Monitor(cfg, progress, dist_info, on_log)
    lr = 0.0
    start_step = progress.step_in_epoch
    result = EpochResult()

    for batch, noise in loader:
        step = progress.step_in_epoch
        if step % cfg.accum_iter == 0:
            lr = cfg.lr_fn(progress.epoch + step / cfg.steps_per_epoch)
            apply_lr(optimizer, lr)
        imgs = normalize_batch(batch_pixels(batch, device), device)  # --decode_on_device: there
        noise = noise.to(device, non_blocking=True)
        boundary = (step + 1) % cfg.accum_iter == 0
        sync = no_sync() if (no_sync is not None and not boundary) else contextlib.nullcontext()
        with sync:
            with autocast:
                loss = model(imgs, cfg.mask_ratio, noise)[0]
            scaler.scale(loss / cfg.accum_iter).backward()
        if boundary:
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        monitor.add(loss.detach())
        progress.step_in_epoch += 1
        progress.global_step += 1

        if not boundary:
            continue
        at_end = progress.step_in_epoch >= cfg.steps_per_epoch
        at_max = cfg.max_steps is not None and progress.global_step >= cfg.max_steps
        stop = stop_requested()
        if at_end or at_max or stop or progress.step_in_epoch % cfg.log_every == 0:
            monitor.check(lr)  # before any save: a non-finite loss must not be saved
        if at_max or stop:
            result.stopped, result.stop_requested = True, stop
            break
    if monitor.steps:  # the loader ended early: still check (and log) what it gave
        monitor.check(lr)

    elapsed = time.perf_counter() - monitor.t_start
    done = progress.step_in_epoch - start_step
    result.loss = monitor.epoch_loss / monitor.epoch_steps if monitor.epoch_steps else float("nan")
    result.lr = lr
    result.images_per_s = done * cfg.batch_size * dist_info.world_size / max(elapsed, 1e-9)
    return result


class _Monitor:
    """Sums losses on the device; every check, reduces them over processes, stops on non-finite
    values and logs."""

    def __init__(self, cfg: StepConfig, progress: Progress, dist_info: DistInfo,
                 on_log: Callable[[Dict[str, float], int], None]):
        self.cfg, self.progress, self.dist_info = cfg, progress, dist_info
        self.on_log = on_log
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=dist_info.device)
        self.steps = 0
        self.epoch_loss, self.epoch_steps = 0.0, 0
        self.t_start = self.t_log = time.perf_counter()
        self.start_step = progress.step_in_epoch

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1

    def check(self, lr: float) -> None:
        """Reduce, check, log."""
        p, cfg = self.progress, self.cfg
        total, count = all_reduce_sum([self.loss_sum.item(), float(self.steps)],
                                      self.dist_info.device)
        if not math.isfinite(total):
            raise NonFiniteLoss(
                f"non-finite loss ({total}) in epoch {p.epoch + 1}, steps "
                f"{p.step_in_epoch - self.steps + 1}-{p.step_in_epoch} of the epoch (global "
                f"step {p.global_step}), lr {lr:.3g}")
        now = time.perf_counter()
        mean_loss = total / count
        speed = self.steps * cfg.batch_size * self.dist_info.world_size / max(now - self.t_log,
                                                                              1e-9)
        self.epoch_loss += total
        self.epoch_steps += int(count)
        _log_line(p, cfg, mean_loss, lr, speed, now - self.t_start,
                  p.step_in_epoch - self.start_step, self.dist_info.device)
        self.on_log({"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": speed},
                    p.global_step)
        self.loss_sum.zero_()
        self.steps = 0
        self.t_log = now


def _log_line(progress: Progress, cfg: StepConfig, loss: float, lr: float, speed: float,
              elapsed: float, steps_done: int, device: torch.device) -> None:
    remaining = (cfg.steps_per_epoch - progress.step_in_epoch
                 + (cfg.epochs - progress.epoch - 1) * cfg.steps_per_epoch)
    if cfg.max_steps is not None:
        remaining = min(remaining, cfg.max_steps - progress.global_step)
    eta = datetime.timedelta(seconds=int(remaining * elapsed / max(steps_done, 1)))
    mem = ""
    if device.type == "cuda":
        mem = f"  mem {torch.cuda.max_memory_allocated(device) / 2**30:.1f}G"
    logger.info("epoch %d/%d  step %d/%d  loss %.4f  lr %.3e  %.0f img/s  eta %s%s",
                progress.epoch + 1, cfg.epochs, progress.step_in_epoch, cfg.steps_per_epoch,
                loss, lr, speed, eta, mem)
