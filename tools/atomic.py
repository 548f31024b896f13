"""Write a file so that readers see the old version or the new one, never half of it.

Every file a long run leaves behind (checkpoints, evaluation JSON, stage markers, pictures) goes
through ``atomic_write``: the content is written to a temporary file in the same folder, flushed
to disk, then renamed over the target (``os.replace`` is atomic on one filesystem). A crash or a
kill mid-write leaves the previous file intact and no stray temporary file behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync it, and rename it over ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
