"""A diverged training run (non-finite loss or weights): one error, one line, no NaN checkpoint.

Shared by detection (``detection.training``, ``detection.checkpointing``) and segmentation
(``segmentation.hooks.FiniteLossHook``). Both frameworks keep a ``last_checkpoint`` file in the
output folder naming the newest checkpoint (``--resume`` starts there); a diverged run must leave
it naming the last checkpoint whose weights are finite, and say so.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import torch

#: Exit status of an entry point whose training diverged (2 is bad input).
EXIT_DIVERGED = 3


class TrainingDiverged(FloatingPointError):
    """Training stopped at a non-finite loss or weight (one-line message)."""


def first_non_finite(state_dict: Mapping) -> Optional[str]:
    """Name of the first floating-point tensor holding a NaN or an infinity, else None."""
    for name, value in state_dict.items():
        if (isinstance(value, torch.Tensor) and value.is_floating_point()
                and not bool(torch.isfinite(value).all())):
            return name
    return None


def last_checkpoint_note(folder: str) -> str:
    """What ``<folder>/last_checkpoint`` names now (it is never moved to non-finite weights)."""
    path = os.path.join(folder, "last_checkpoint")
    if not os.path.isfile(path):
        return "no checkpoint was saved"
    with open(path, encoding="utf-8") as f:
        return f"last_checkpoint still names {f.read().strip()}"


def diverged(where: str, what: str, folder: str) -> TrainingDiverged:
    """``training diverged at <where>: <what>; <last checkpoint>; lower the learning rate``."""
    return TrainingDiverged(f"training diverged at {where}: {what.rstrip('.')}; nothing saved "
                            f"there ({last_checkpoint_note(folder)}); lower the learning rate")
