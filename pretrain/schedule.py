"""Learning-rate schedule of MAE: linear warm-up, then half-cosine decay, per iteration.

The schedule is a function of the fractional epoch (``epoch + step / steps_per_epoch``), so it is
the same whatever the batch size, and a resumed run picks it up exactly where it stopped.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer


def effective_lr(blr: float, batch_size: int, accum_iter: int, world_size: int) -> float:
    """``blr x total batch / 256``: the linear scaling rule of the MAE recipes."""
    return blr * batch_size * accum_iter * world_size / 256


def lr_at(epoch: float, lr: float, epochs: float, warmup_epochs: float, min_lr: float = 0.0
          ) -> float:
    """Learning rate at fractional ``epoch``: linear from 0 over the warm-up, then cosine to
    ``min_lr`` at ``epochs``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lr(optimizer: Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` times its ``lr_scale`` (from ``tools.lr_decay``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
