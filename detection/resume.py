"""``--resume`` decided once for all processes: rank 0 picks the checkpoint, every rank loads it.

Each process deciding for itself goes wrong as soon as the processes do not see the same files
(an output folder on a machine-local disk, a checkpoint written while the others were looking):
one rank resumes at iteration 5000, another starts from scratch, and the run trains on with
mismatched weights or hangs. So rank 0 looks (``last_checkpoint`` in ``train.output_dir``), every
rank receives its answer (a path, or none: start from ``train.init_checkpoint``), and every rank
checks that it can read that file; if one cannot, all of them stop with the same one-line
``CheckpointError`` naming the rank, the file and the cause.
"""
from __future__ import annotations

from typing import Callable, Optional

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.utils import comm  # noqa: E402

from mae_transfer.tools.checkpoints import CheckpointError  # noqa: E402
from mae_transfer.tools.run_dir import os_cause  # noqa: E402


def read_problem(path: str) -> Optional[str]:
    """Why this process cannot read ``path`` (e.g. "No such file or directory"), None if it can."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return os_cause(exc)
    return None


def decide_resume(find_on_rank0: Callable[[], Optional[str]]) -> Optional[str]:
    """The checkpoint every process resumes from: ``find_on_rank0()`` on rank 0 (a path or None),
    the same answer on every rank; ``CheckpointError`` on all ranks if one cannot read it."""
    path = find_on_rank0() if comm.is_main_process() else None
    if comm.get_world_size() == 1:
        return path
    path = comm.all_gather(path)[0]  # rank 0's answer (all_gather: a gloo group on every backend)
    if path is None:
        return None
    problems = comm.all_gather(read_problem(path))
    bad = [(rank, problem) for rank, problem in enumerate(problems) if problem]
    if bad:
        rank, problem = bad[0]
        others = f" (and {len(bad) - 1} more ranks)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"--resume: rank {rank}{others} cannot read {path}, the checkpoint rank 0 resumes from "
            f"({problem}); every process must see train.output_dir (shared storage)")
    return path
