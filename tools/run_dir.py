"""Claiming an output folder for one training run, and one-line errors about writing into it.

Every training entry point (pretraining, detection, segmentation) writes checkpoints and logs
into one folder. Three faults are refused here, in one place, before any work is done:

- a folder that cannot be used (a missing parent that cannot be made, a path under a regular
  file, no permission): one line naming the folder and the cause;
- a folder that already holds another run's results (``run_files``, glob patterns each entry
  point names): a new run would silently overwrite them, so it is refused unless the caller
  continues that run (``resume``) or asks to replace it (``overwrite``: the old run's files are
  removed first, so logs that are appended to do not mix two runs);
- two runs writing into one folder at the same time: an exclusive ``fcntl.flock`` on
  ``LOCK_NAME`` in the folder, held until the claim is released. The kernel drops a flock when
  the last process holding the file open dies, so a crashed run never leaves a stale lock.

``writing_into(folder)`` turns an ``OSError`` of a later write (a full disk, above all) into the
same kind of one-line error, naming the folder and the cause ("No space left on device");
``output_fault`` tells such an error apart from others (an input that cannot be read) where a
whole training run is wrapped (``writing_into(..., only_output_faults=True)``: the detection and
segmentation entry points).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator, List, Sequence

from mae_transfer.tools.atomic import error_code

logger = logging.getLogger("mae_transfer.run_dir")

#: The lock file a running run holds in its output folder (never a run result itself).
LOCK_NAME = ".run.lock"
#: flock errors of filesystems without locks (Lustre mounted without ``flock``, some FUSE ones):
#: the run goes ahead with a warning rather than not at all.
NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class OutputDirError(ValueError):
    """An output folder that cannot be used or written; the message is one line that says why."""


def os_cause(exc: OSError) -> str:
    """The reason of an ``OSError`` in words ("No space left on device"), also for one made with
    an errno alone (``OSError(errno.ENOSPC)`` has neither ``strerror`` nor ``errno`` set)."""
    if exc.strerror:
        return exc.strerror
    code = error_code(exc)
    if code:
        return os.strerror(code)
    return str(exc) or type(exc).__name__


def existing_run_files(folder: Path, run_files: Sequence[str]) -> List[Path]:
    """Files directly in ``folder`` that match one of the ``run_files`` glob patterns, sorted."""
    found = {p for pattern in run_files for p in folder.glob(pattern) if p.is_file()}
    return sorted(found)


class OutputDirClaim:
    """A claimed output folder: holds the lock until ``release()`` (or the end of a ``with``)."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self._fd = folder, fd

    def release(self) -> None:
        """Unlock now (a forked child may still hold the file open) and close."""
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a filesystem without locks (NO_LOCKING)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputDirClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _cannot_create(folder: str | os.PathLike, exc: OSError) -> OutputDirError:
    if os.path.exists(folder) and not os.path.isdir(folder):
        return OutputDirError(f"output folder {folder} is not a folder (a file of that name "
                              f"exists)")
    return OutputDirError(f"cannot create output folder {folder}: {os_cause(exc)}")


def _make_folder(folder: Path) -> None:
    try:
        if folder.exists() and not folder.is_dir():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(folder))
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot_create(folder, exc) from None


def _lock(folder: Path) -> int:
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputDirError(f"cannot write into output folder {folder}: {os_cause(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in NO_LOCKING:
            logger.warning("output folder %s: this filesystem has no file locks (%s): a second "
                           "run writing into it at the same time would not be noticed", folder,
                           os_cause(exc))
            return fd
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise OutputDirError(f"output folder {folder} is in use by another run (process "
                                 f"{holder} holds {path})") from None
        raise OutputDirError(f"cannot lock output folder {folder}: {os_cause(exc)}") from None
    try:  # who holds it, for the message above; also proves the folder takes writes
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise OutputDirError(f"cannot write into output folder {folder}: {os_cause(exc)}") from None
    return fd


def claim_output_dir(path: str | os.PathLike, resume: bool, overwrite: bool,
                     run_files: Sequence[str], resume_flag: str = "--resume",
                     overwrite_flag: str = "--overwrite") -> OutputDirClaim:
    """Make ``path`` if needed, lock it for this run, and refuse it if it holds another run.

    ``run_files``: glob patterns of the files that mark a run's results in the folder. With
    ``resume`` they are kept (the run continues them); with ``overwrite`` they are removed;
    with neither, their presence is an ``OutputDirError``. The flag names go into the message.
    """
    folder = Path(path)
    _make_folder(folder)
    fd = _lock(folder)
    claim = OutputDirClaim(folder, fd)
    try:
        found = [] if resume else existing_run_files(folder, run_files)
        if found and not overwrite:
            names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
            raise OutputDirError(f"output folder {folder} holds another run ({names}): pass "
                                 f"{resume_flag} to continue it or {overwrite_flag} to replace it")
        for p in found:
            p.unlink()
        if found:
            logger.warning("%s: removed the previous run's %s", overwrite_flag,
                           ", ".join(p.name for p in found))
    except OutputDirError:
        claim.release()
        raise
    except OSError as exc:
        claim.release()
        raise OutputDirError(f"cannot clear output folder {folder}: {os_cause(exc)}") from None
    return claim


#: errno values of a write that the folder cannot take, whichever file it was: a full disk or
#: quota, a read-only filesystem, a file past the filesystem's size limit.
WRITE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _fault_line(exc: OSError, folder: str | os.PathLike) -> OutputDirError:
    if exc.filename and os.path.abspath(exc.filename) == os.path.abspath(folder):
        return _cannot_create(folder, exc)  # the folder itself (its mkdir) failed
    name = f" {exc.filename}" if exc.filename else ""
    return OutputDirError(f"cannot write{name} into output folder {folder}: {os_cause(exc)}")


def output_fault(exc: BaseException, *folders: str | os.PathLike) -> OutputDirError | None:
    """The one-line ``OutputDirError`` for ``exc`` if it is a fault of writing into one of
    ``folders`` (the first is named when the error names no file), else None.

    A fault: an ``OSError`` about a file inside a folder (a missing parent, a path under a regular
    file, no permission, a full disk), or a ``WRITE_FAULTS`` error that names no file (a log file's
    flush on a full disk). Other ``OSError``s (an input that cannot be read) are not the folder's.
    """
    if not isinstance(exc, OSError) or not folders:
        return None
    if isinstance(exc.filename, (str, os.PathLike)):
        inside = [f for f in folders if _inside(exc.filename, f)]
        return _fault_line(exc, inside[0]) if inside else None
    return _fault_line(exc, folders[0]) if error_code(exc) in WRITE_FAULTS else None


@contextlib.contextmanager
def writing_into(folder: str | os.PathLike, *more: str | os.PathLike,
                 only_output_faults: bool = False) -> Iterator[None]:
    """Turn an ``OSError`` raised inside into an ``OutputDirError`` naming the folder, the file
    and the cause (a full disk reads "No space left on device").

    ``only_output_faults``: the block also reads inputs (a whole training run): only the errors
    ``output_fault`` recognises as writes into ``folder`` (or the ``more`` folders) are
    converted; any other ``OSError`` goes on unchanged.
    """
    try:
        yield
    except OSError as exc:
        fault = output_fault(exc, folder, *more)
        if fault is None and only_output_faults:
            raise
        raise (fault or _fault_line(exc, folder)) from None
