"""Stop requests from a cluster scheduler, seen by every process of a run at the same step.

A scheduler asks a job to stop with a signal: ``scancel``, SLURM preemption and torchrun (which
forwards what it receives) send SIGTERM; ``sbatch --signal=USR1@120`` sends SIGUSR1 some seconds
before the time limit. Python's default for both is to die at once, mid-step, with no checkpoint.
``StopRequest.install()`` turns them into a flag instead; a training loop (or a framework hook)
asks ``agree()`` once per step. ``agree`` is an all-reduce (MAX) of the flag, so when any one
process got the signal every process sees True after the same step: they save (the main process
writes) and return normally, and nobody waits in a collective the others have left.

Framework-neutral: no Detectron2 / MMEngine here; their hooks call this.
"""
from __future__ import annotations

import logging
import signal
from typing import Callable, Dict, Iterable, Optional, Union

import torch
import torch.distributed as dist

logger = logging.getLogger("mae_transfer.preemption")

#: The signals a scheduler sends to ask for a clean stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

Handler = Union[Callable, int, None]


class StopRequest:
    """A flag set by a stop signal; ``agree`` makes all processes of a group see the same value."""

    def __init__(self) -> None:
        self._flag = False
        self._received: Optional[str] = None
        self._saved: Dict[int, Handler] = {}

    def install(self, signals: Iterable[int] = STOP_SIGNALS) -> "StopRequest":
        """Set the flag on ``signals`` instead of dying (main thread only, as ``signal.signal``)."""
        for sig in signals:
            previous = signal.signal(sig, self._on_signal)
            self._saved.setdefault(sig, previous)
        return self

    def uninstall(self) -> None:
        """Put back the handlers ``install`` replaced."""
        while self._saved:
            sig, previous = self._saved.popitem()
            signal.signal(sig, previous)

    def _on_signal(self, signum: int, frame) -> None:
        if not self._flag:
            self._received = signal.Signals(signum).name
            logger.warning("received %s: stopping after the current step, with a checkpoint",
                           self._received)
        self._flag = True

    @property
    def signal_name(self) -> Optional[str]:
        """The signal this process received (``None``: none, or the stop came from another rank)."""
        return self._received

    def requested(self) -> bool:
        """True once this process received a stop signal."""
        return self._flag

    def agree(self, group=None) -> bool:
        """True on every process of ``group`` when any of them received a stop signal.

        A collective (every process of the group calls it at the same step); without an
        initialised process group it is ``requested()``.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self._flag
        on_gpu = dist.get_backend(group) == dist.Backend.NCCL
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu"
        flag = torch.tensor([1 if self._flag else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        self._flag = bool(flag.item())
        return self._flag
