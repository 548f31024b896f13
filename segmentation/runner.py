"""``FullCheckpointRunner``: MMEngine's ``Runner`` that reads its own checkpoints on torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True`` by default, and MMEngine 0.10.7 calls ``torch.load``
without saying otherwise, so the Runner's own checkpoints (message hub, numpy arrays) fail on
``resume`` / ``load_from`` / test with ``UnpicklingError``. This Runner reads them with
``weights_only=False`` for the duration of its own ``load_checkpoint`` (which resume, load_from
and test all go through), and nowhere else: pretrained weights that users hand in go through
``backbones.load_pretrained`` (``weights_only=True``), and any other MMEngine load keeps torch's
default. Our configs select it (``runner_type = 'FullCheckpointRunner'``), and
``segmentation.entry`` uses it for a config that names no runner.

In a multi-process run every rank loads the same checkpoint at the same point; a rank that cannot
read it would exit while the others wait in the next collective until its timeout (30 minutes).
So the ranks agree on the outcome first (``distributed.stop_if_any_failed``): any rank's failure
is one line, naming the rank, raised on every rank.
"""
from __future__ import annotations

import contextlib
import os.path as osp
from typing import Iterator

import torch
from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

from mae_transfer.segmentation.distributed import is_distributed, stop_if_any_failed
from mae_transfer.segmentation.stop_hook import ignoring_stop_signals

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
    """``Runner`` whose ``load_checkpoint`` (resume, load_from, test) reads whole checkpoints,
    agreed on by every rank, and whose DataLoader workers leave SIGTERM / SIGUSR1 to the main
    process (``stop_hook.ignoring_stop_signals``)."""

    @staticmethod
    def build_dataloader(dataloader, seed=None, diff_rank_seed=False):
        loader = Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        return ignoring_stop_signals(loader)

    def load_checkpoint(self, filename: str, *args, **kwargs):
        if not is_distributed():
            with runner_checkpoint_loading():
                return super().load_checkpoint(filename, *args, **kwargs)
        loaded, error = None, None
        try:
            with runner_checkpoint_loading():
                loaded = super().load_checkpoint(filename, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (any failure: every rank has to hear of it)
            from mae_transfer.segmentation.entry import error_line  # entry imports this module
            error = error_line(exc)
        stop_if_any_failed(error, f"checkpoint {filename}")
        return loaded
