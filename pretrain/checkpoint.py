"""Training checkpoints: everything needed to continue a run bit for bit, in plain data only.

A checkpoint is ``{'model', 'optimizer', 'scaler', 'epoch', 'step_in_epoch', 'global_step',
'args', 'model_config', 'rng', 'meta'}``. Every value is a tensor, a number, a string, a bool,
None, or a list / dict of those: torch >= 2.6 loads with ``weights_only=True`` and refuses pickled
Python objects, so the run arguments are stored as a plain dict and RNG states as tensors.
``model`` holds the full MAE state dict under the official names (encoder + ``decoder_*`` +
``mask_token``), so ``load_pretrained`` and tools that read official MAE checkpoints take it too.

Writes are atomic: a temporary file in the same folder, flushed to disk, then renamed over the
target, so a crash mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from mae_transfer.tools.atomic import atomic_torch_save
from mae_transfer.tools.checkpoints import CheckpointError

#: the checkpoint a run rewrites every epoch (and on a stop): what ``--resume auto`` continues
LAST = "checkpoint-last.pth"

_PLAIN = (str, int, float, bool, type(None))


def plain(value: Any) -> Any:
    """``value`` with paths turned into strings and anything else non-plain refused."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint: {value!r}")


def rng_state() -> Dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, Python) as tensors and numbers."""
    np_state = np.random.get_state()
    py_version, py_words, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_version),
        "python_words": torch.tensor(py_words, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved (CUDA states only where the devices match)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(state["python_words"].tolist()),
                     state["python_gauss"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def atomic_save(obj: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename over ``path``."""
    return atomic_torch_save(obj, path)


def load_training_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint (weights_only: no code runs); errors are one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint to resume at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle refusal, ...
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"cannot read training checkpoint {path} "
                              f"({type(exc).__name__}: {first})") from exc
    missing = [k for k in ("model", "optimizer", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a pretraining checkpoint (missing {missing}); "
                              f"an encoder export cannot be resumed")
    return ckpt


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random`` (each rank passes its own seed + rank)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resume_path(args) -> Optional[Path]:
    """The checkpoint ``--resume`` names: ``auto`` is ``<output_dir>/checkpoint-last.pth`` when it
    exists (None otherwise, a fresh start); no ``--resume`` is None."""
    if not args.resume:
        return None
    if args.resume == "auto":
        path = Path(args.output_dir) / LAST
        return path if path.is_file() else None
    return Path(args.resume)
