"""torchrun, except that a stop signal reaches the workers and the exit status is theirs.

    python tools/torchrun_graceful.py [torchrun options] SCRIPT [script options]

Stock torchrun turns SIGTERM (``scancel``, SLURM preemption) into an exception: it sends SIGTERM
to its workers, waits, and exits 1 with a ``SignalException`` traceback even when every worker
saved a checkpoint and exited 0; SIGUSR1 (``sbatch --signal=USR1@120``) kills it outright unless
``--signals-to-handle`` names it. Here torchrun's own handling of SIGTERM / SIGUSR1 is off (its
``--signals-to-handle`` default, ``PET_SIGNALS_TO_HANDLE``, keeps SIGINT, SIGHUP, SIGQUIT; do not
pass the option) and this process passes those
two signals on to its worker processes, which stop cleanly (``tools.preemption.StopRequest``);
torchrun then ends as it would after a finished run: exit 0 when every worker exited 0.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_transfer.tools.preemption import STOP_SIGNALS  # noqa: E402

#: what torchrun still handles itself (its default list, less the stop signals)
TORCHRUN_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def child_pids(parent: int) -> List[int]:
    """The processes whose parent is ``parent`` (Linux ``/proc``): torchrun's workers."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:  # the process has just ended
            continue
        # "pid (command) state ppid ...": the command may hold spaces and parentheses
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            pids.append(int(entry))
    return pids


def forward_to_workers(signum, frame) -> None:
    for pid in child_pids(os.getpid()):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def main(argv=None) -> int:
    os.environ["PET_SIGNALS_TO_HANDLE"] = TORCHRUN_SIGNALS  # torchrun's --signals-to-handle
    for sig in STOP_SIGNALS:
        signal.signal(sig, forward_to_workers)
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:] if argv is None else argv)  # raises (exit 1) when a worker failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
