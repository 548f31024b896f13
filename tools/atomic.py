"""Write a file so that readers see the old version or the new one, never half of it.

Every file a long run leaves behind (checkpoints, evaluation JSON, stage markers, pictures) goes
through ``atomic_write``: the content is written to a temporary file in the same folder, flushed
to disk, then renamed over the target (``os.replace`` is atomic on one filesystem). A crash or a
kill mid-write leaves the previous file intact and no stray temporary file behind.

The file gets the permissions any file this process creates gets (0666 less the umask), whatever
the writer did: safetensors' writer, for one, creates its file 0600, so an encoder exported on a
shared cluster was unreadable for everyone else while the ``.pth`` beside it was 0644.

``atomic_torch_save`` writes through a Python file object rather than a path: torch's own file
writer turns a full disk into a RuntimeError without the cause, a Python write raises
``OSError(ENOSPC)`` that callers can report as "No space left on device".
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def current_umask() -> int:
    """This process's umask (read from /proc where it can be, so that nothing changes it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (the only way POSIX offers)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync it, give it the umask's mode, and rename it over
    ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through ``atomic_write``, written by Python (see above)."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)
