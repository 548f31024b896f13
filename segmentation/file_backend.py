"""``AtomicLocalBackend``: MMEngine's local file backend whose writes are all or nothing.

MMEngine writes checkpoints in place (``LocalBackend.put``: open, write), so a crash or a full
disk mid-write leaves a truncated ``iter_N.pth`` that looks like a checkpoint. This backend writes
through ``tools.atomic.atomic_write`` (temporary file in the same folder, fsync, rename) and is
registered in MMEngine's file-backend registry as ``atomic_local``, with no URI prefix: only what
selects it by name uses it, nothing else in the process changes. Our configs select it for the
checkpoint hook::

    default_hooks = dict(checkpoint=dict(type='CheckpointHook', backend_args=ATOMIC_BACKEND_ARGS))

``CheckpointHook`` hands its ``backend_args`` to ``Runner.save_checkpoint`` and only writes the
``last_checkpoint`` pointer after that returns, i.e. after the rename, so ``--resume`` never meets
a partial file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from mmengine.fileio import register_backend
from mmengine.fileio.backends.local_backend import LocalBackend

from mae_transfer.tools.atomic import atomic_write

BACKEND_NAME = "atomic_local"
#: ``backend_args`` that select this backend (CheckpointHook, ``save_checkpoint``, ``put``)
ATOMIC_BACKEND_ARGS = {"backend": BACKEND_NAME}


@register_backend(BACKEND_NAME)
class AtomicLocalBackend(LocalBackend):
    """``LocalBackend`` whose ``put`` / ``put_text`` replace the target whole or not at all."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(filepath, lambda tmp: tmp.write_bytes(obj))

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        atomic_write(filepath, lambda tmp: tmp.write_text(obj, encoding=encoding))
