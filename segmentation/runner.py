"""``FullCheckpointRunner``: MMEngine's ``Runner`` that reads its own checkpoints on torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True`` by default, and MMEngine 0.10.7 calls ``torch.load``
without saying otherwise, so the Runner's own checkpoints (message hub, numpy arrays) fail on
``resume`` / ``load_from`` / test with ``UnpicklingError``. This Runner reads them with
``weights_only=False`` for the duration of its own ``load_checkpoint`` (which resume, load_from
and test all go through), and nowhere else: pretrained weights that users hand in go through
``backbones.load_pretrained`` (``weights_only=True``), and any other MMEngine load keeps torch's
default. Our configs select it (``runner_type = 'FullCheckpointRunner'``), and
``segmentation.entry`` uses it for a config that names no runner.
"""
from __future__ import annotations

import contextlib
import os.path as osp
from typing import Iterator

import torch
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

#: CheckpointLoader's scheme for local paths (the prefix every path matches)
LOCAL_SCHEME = ""


def load_from_local(filename, map_location):
    """MMEngine's local loader, with ``weights_only=False`` (MMEngine logs "by local backend")."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return torch.load(filename, map_location=map_location, weights_only=False)


@contextlib.contextmanager
def runner_checkpoint_loading() -> Iterator[None]:
    """Within this block, MMEngine reads local checkpoints whole (``weights_only=False``).

    For checkpoints an MMEngine Runner wrote (ours, or a trained model given to the demo), never
    for weights of unknown origin. MMEngine's own local loader is put back on exit.
    """
    previous = CheckpointLoader._schemes.get(LOCAL_SCHEME)
    CheckpointLoader.register_scheme(prefixes=LOCAL_SCHEME, loader=load_from_local, force=True)
    try:
        yield
    finally:
        CheckpointLoader.register_scheme(prefixes=LOCAL_SCHEME, loader=previous, force=True)


@RUNNERS.register_module()
class FullCheckpointRunner(Runner):
    """``Runner`` whose ``load_checkpoint`` (resume, load_from, test) reads whole checkpoints."""

    def load_checkpoint(self, filename: str, *args, **kwargs):
        with runner_checkpoint_loading():
            return super().load_checkpoint(filename, *args, **kwargs)
