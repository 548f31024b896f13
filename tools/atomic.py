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
``OSError(ENOSPC)`` that callers can report as "No space left on device" (torch's zip writer
then raises a RuntimeError of its own while closing; the ``OSError`` under it is raised instead).
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


def error_code(exc: OSError) -> int | None:
    """The errno of ``exc``, also of one made with an errno alone (``OSError(errno.ENOSPC)``
    sets neither ``errno`` nor ``strerror``)."""
    if exc.errno is None and len(exc.args) == 1 and isinstance(exc.args[0], int):
        return exc.args[0]
    return exc.errno


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, fsync it, give it the umask's mode, and rename it over
    ``path``; returns ``path``. An ``OSError`` of the write (a full disk) names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except OSError as exc:
        code = error_code(exc)
        if code is not None and exc.filename in (None, str(tmp), tmp):
            # name the file being written, not its temporary (and a bare OSError(ENOSPC) its cause)
            raise OSError(code, exc.strerror or os.strerror(code), str(path)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` through ``atomic_write``, written by Python (see above)."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as exc:
                raise _write_error(exc) from None

    return atomic_write(path, write)


def _write_error(exc: RuntimeError) -> BaseException:
    """The ``OSError`` behind torch's RuntimeError, if one is: when a write of ``torch.save``
    fails, its zip writer's ``__exit__`` writes again and raises "unexpected pos ..." in place of
    the ``OSError(ENOSPC)``, which stays only as the context. Else ``exc`` itself."""
    cause = exc.__context__
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__context__
    return cause if cause is not None else exc
