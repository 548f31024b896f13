"""A stop request from the cluster (SIGTERM, SLURM's ``--signal``), agreed on by every process.

Schedulers ask a job to stop with a signal: ``scancel``, SLURM preemption and torchrun forward
SIGTERM, and ``sbatch --signal=USR1@120`` sends SIGUSR1 some seconds before the time limit. A
training loop cannot stop inside a step, and in a multi-process run every process has to stop
after the *same* step (one missing from a collective hangs the others), so:

- ``StopRequest.install()`` replaces the handlers of those signals with one that only sets a flag;
- the training loop asks ``agree()`` once per step: an all-reduce (MAX) of the flag over the
  process group, so if any process got the signal, all of them see True at the same step;
- then the main process saves a checkpoint and every process returns normally (exit status 0).

Framework-neutral: the Detectron2 hook (``detection.training``) calls it; the other stages can do
the same from their own loops or hooks.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Dict, Iterable, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger("mae_transfer.preemption")

#: What a scheduler sends to ask for a clean stop.
SCHEDULER_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """A flag set by the stop signals; ``agree()`` makes every process of a group see it."""

    def __init__(self) -> None:
        self._requested = False
        self._previous: Dict[int, object] = {}

    def install(self, signals: Iterable[int] = SCHEDULER_SIGNALS) -> "StopRequest":
        """Handle ``signals`` by setting the flag (the previous handlers come back on
        ``uninstall``). Only the main thread can handle signals: elsewhere this warns and
        installs nothing."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("stop signals not handled: not in the main thread")
            return self
        for sig in signals:
            self._previous.setdefault(sig, signal.signal(sig, self._handle))
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if not self._requested:
            logger.warning("received %s: stopping after this step with a checkpoint",
                           signal.Signals(signum).name)
        self._requested = True

    def requested(self) -> bool:
        """Whether this process got a stop signal."""
        return self._requested

    def agree(self, group: Optional[object] = None) -> bool:
        """True on every process of ``group`` (default: all) if any of them got a stop signal.

        A collective: every process of the group must call it at the same step. Without a
        process group it is ``requested()``.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self._requested
        backend = dist.get_backend(group)
        device = (torch.device("cuda", torch.cuda.current_device())
                  if backend == "nccl" else torch.device("cpu"))
        flag = torch.tensor([int(self._requested)], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        self._requested = bool(flag.item())
        return self._requested
