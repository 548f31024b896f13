"""torchrun that passes a scheduler's SIGTERM / SIGUSR1 to its workers and exits with their status.

``python -m mae_transfer.tools.torchrun [torchrun options] SCRIPT ...`` is ``torchrun``, except
for SIGTERM and SIGUSR1. Plain torchrun (torch 2.x) turns SIGTERM into a ``SignalException``: it
signals the workers, waits ``--shutdown_timeout`` for them, kills the rest, and exits 1 with a
traceback even when every worker saved and exited 0; SIGUSR1 (not handled) kills it at once,
workers orphaned. Here, torchrun is told not to handle these two (its ``--signals_to_handle``)
and this process forwards them to its worker processes instead; the workers save, stop and exit
(0), and torchrun ends as after any run: with the workers' status. SIGINT (Ctrl-C) reaches
the workers as SIGTERM (torchrun starts them in sessions of their own, so a terminal's Ctrl-C
reaches this process only): it saves and stops the same way, and a second Ctrl-C changes
nothing. SIGHUP and SIGQUIT keep torchrun's own handling.

A scheduler that signals every process of the job (SLURM's ``srun`` steps) reaches the workers
directly too; they receive the signal twice, which changes nothing (``tools.preemption``).
Linux only (the workers are found in ``/proc``), as torchrun's SLURM and GPU use is. Needs
torch >= 2.9 (torchrun's ``--signals_to_handle``); an older torchrun keeps SIGTERM and SIGINT
(its workers still get them, save and stop, but it exits 1), with a warning.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import List

from mae_transfer.tools.preemption import SCHEDULER_SIGNALS

#: The signals torchrun keeps handling itself (its default list without those forwarded here).
TORCHRUN_HANDLES = "SIGHUP,SIGQUIT"
#: What this process sends its workers for each signal it receives.
FORWARD = {**{sig: sig for sig in SCHEDULER_SIGNALS}, signal.SIGINT: signal.SIGTERM}


def child_pids(parent: int) -> List[int]:
    """The processes whose parent is ``parent`` (Linux ``/proc``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            pids.append(int(entry))
    return pids


def forward_to_workers(signum, frame) -> None:
    """Signal handler: send ``FORWARD[signum]`` to this process's children (torchrun's
    workers)."""
    for pid in child_pids(os.getpid()):
        try:
            os.kill(pid, FORWARD[signum])
        except ProcessLookupError:
            pass


def torchrun_knows_signal_option() -> bool:
    """torch >= 2.9's torchrun has ``--signals_to_handle``; older ones always handle SIGTERM."""
    from torch.distributed.launcher.api import LaunchConfig

    return "signals_to_handle" in getattr(LaunchConfig, "__dataclass_fields__", {})


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from torch.distributed import run

    if torchrun_knows_signal_option():
        argv = ["--signals_to_handle", TORCHRUN_HANDLES, *argv]
    else:
        print("warning: this torchrun (torch < 2.9) handles SIGTERM and SIGINT itself: the workers "
              "still save and stop, but torchrun then exits 1", file=sys.stderr)
    for sig in FORWARD:
        signal.signal(sig, forward_to_workers)
    run.main(argv)
    return 0  # torchrun raises (ChildFailedError -> exit 1) when a worker failed


if __name__ == "__main__":
    sys.exit(main())
