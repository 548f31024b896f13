"""Make MMSegmentation 1.2.2 run on mmcv-lite and torch >= 2.6.

Import this module before ``mmseg``; every fix is a no-op where not needed:

- mmcv-lite has no ``mmcv._ext``, yet ``mmseg.models``/``.utils``/``.datasets``/``.apis`` import
  ``mmcv.ops`` at import time -> ``ModuleNotFoundError: No module named 'mmcv._ext'``. A stand-in
  (with a loader-less ``__spec__``, so mmengine's is-mmcv-full probe reads "lite" and does not
  crash) lets everything import; UperNet, FCN, PSP and ASPP call no compiled op. A compiled mmcv
  is detected and used as is.
- torch >= 2.6 loads with ``weights_only=True`` by default, and MMEngine Runner checkpoints (message
  hub, numpy arrays) then fail on ``resume`` / ``load_from`` / test with ``UnpicklingError``. Only
  MMEngine's own local checkpoint loader is switched to ``weights_only=False``; pretrained weights
  that users hand in go through ``backbones.load_pretrained`` (``weights_only=True``).
- MMEngine writes checkpoints in place (``LocalBackend.put``: open, write), so a crash or a full
  disk mid-write leaves a truncated ``iter_N.pth`` that looks like a checkpoint. Local writes go
  to a temporary file in the same folder, flushed to disk, then renamed over the target; the
  ``last_checkpoint`` pointer is only written after that, so ``--resume`` never meets a partial
  file.
- setuptools 77-81 warns "pkg_resources is deprecated" each time MMEngine imports it (to resolve
  ``mmseg::`` base configs), four times per run; the warning says nothing a user can act on
  (setuptools < 82 is pinned because MMEngine needs it), so only that message is filtered.
"""
from __future__ import annotations

import os.path as osp
import warnings

import torch

from mae_transfer.tools.atomic import atomic_write
from mae_transfer.tools.stand_in import install_stand_in

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

HAS_STAND_IN_EXTENSION = install_stand_in("mmcv._ext")


def _register_runner_checkpoint_loader() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    # MMEngine logs "Loads checkpoint by <name[10:]> backend": this name reads "local".
    def load_from_local(filename, map_location):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f"{filename} can not be found.")
        return torch.load(filename, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)


_register_runner_checkpoint_loader()


def _make_local_writes_atomic() -> None:
    from mmengine.fileio.backends.local_backend import LocalBackend

    if getattr(LocalBackend.put, "__mae_transfer_atomic__", False):
        return

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(filepath, lambda tmp: tmp.write_bytes(obj))

    put.__doc__ = LocalBackend.put.__doc__
    put.__mae_transfer_atomic__ = True
    LocalBackend.put = put


_make_local_writes_atomic()
