"""Stop on a scheduler's signal, on every rank at the same step, and requeue the SLURM job.

A scheduler ends a job with a signal: ``scancel`` and SLURM preemption send SIGTERM (and SIGKILL
some seconds later), ``sbatch --signal=B:USR1@120`` sends SIGUSR1 two minutes before the time
limit. A training loop installs a :class:`StopRequest`, asks ``agree()`` after every optimizer
step, and when it says yes, every rank leaves the loop after that same step, rank 0 saves, and all
exit 0. ``agree()`` is a collective: every rank must call it at the same steps; the signal may
reach the ranks at different moments (or one rank only), the all-reduce (MAX) makes the answer
the same everywhere.

Requeueing is the job script's business (``tools/slurm.sh`` calls ``python -m
mae_transfer.tools.preemption requeue`` once, after the stage saved and exited), so training
code never requeues and a job is requeued once, whatever the number of ranks.

    stop = StopRequest().install()          # SIGTERM, SIGUSR1
    for batch in loader:
        train_step(batch)
        if stop.agree():                    # all ranks, every step
            save(); break
    stop.uninstall()
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from typing import Dict, Iterable, Optional

logger = logging.getLogger("mae_transfer.preemption")

#: What a scheduler sends: SIGTERM (``scancel``, preemption), SIGUSR1 (``--signal=USR1@N``).
SCHEDULER_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: The signal that asks for a requeue (the time limit is near); SIGTERM only stops.
REQUEUE_SIGNAL = signal.SIGUSR1


class StopRequest:
    """A stop flag set by signals. ``requested()`` is this process's view, ``agree()`` every
    rank's (the same answer on all of them). With SIGINT among the signals, a second Ctrl-C
    raises ``KeyboardInterrupt`` at once (stop without saving)."""

    def __init__(self) -> None:
        self.signal_name: Optional[str] = None  # the first signal received
        self._previous: Dict[int, object] = {}

    def install(self, signals: Iterable[int] = SCHEDULER_SIGNALS) -> "StopRequest":
        """Handle ``signals`` in this process (main thread only); returns ``self``."""
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers ``install`` replaced."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.signal_name is not None:
            raise KeyboardInterrupt
        if self.signal_name is None:
            self.signal_name = name
        logger.warning("received %s: saving a checkpoint after this step and stopping%s", name,
                       " (Ctrl-C again: stop now, without saving)"
                       if signum == signal.SIGINT else "")

    def requested(self) -> bool:
        """Whether this process received a stop signal."""
        return self.signal_name is not None

    def agree(self, group=None) -> bool:
        """Whether any rank of ``group`` (default: the world) received a stop signal: an
        all-reduce (MAX), so every rank gets the same answer; a collective, so every rank calls
        it at the same steps. Without a process group, ``requested()``."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested()
        device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
        flag = torch.tensor([int(self.requested())], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())

    def requeue(self) -> bool:
        """Requeue this SLURM job if the stop asked for it (SIGUSR1, the time limit is near)
        and the process runs under SLURM; otherwise log why not. Call it once per job, after the
        position is saved (``tools/slurm.sh`` does)."""
        if self.signal_name != signal.Signals(REQUEUE_SIGNAL).name:
            logger.info("not requeued: stopped by %s, not by %s", self.signal_name or "no signal",
                        signal.Signals(REQUEUE_SIGNAL).name)
            return False
        return requeue_job()


def requeue_job(job_id: Optional[str] = None) -> bool:
    """``scontrol requeue JOB`` for ``job_id`` (default ``$SLURM_JOB_ID``); outside SLURM
    (no job id) a logged no-op. True when scontrol accepted it; its refusal is logged, one
    line (e.g. a job submitted without ``--requeue`` on a cluster that does not requeue)."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        logger.info("not requeued: not running under SLURM (no SLURM_JOB_ID)")
        return False
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        logger.warning("cannot requeue SLURM job %s: no scontrol on PATH", job_id)
        return False
    done = subprocess.run([scontrol, "requeue", job_id], capture_output=True, text=True)
    if done.returncode:
        why = (done.stderr or done.stdout).strip().splitlines()
        logger.warning("scontrol requeue %s failed (exit %d): %s", job_id, done.returncode,
                       why[0] if why else "no message")
        return False
    logger.warning("requeued SLURM job %s: it restarts and resumes from the saved position",
                   job_id)
    return True


def main(argv=None) -> int:
    """``python -m mae_transfer.tools.preemption requeue [JOB_ID]``: what ``tools/slurm.sh``
    runs after a stage stopped on SIGUSR1. Exit 0 when requeued, 1 otherwise."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "requeue" or len(argv) > 2:
        print("usage: python -m mae_transfer.tools.preemption requeue [JOB_ID]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return 0 if requeue_job(argv[1] if len(argv) > 1 else None) else 1


if __name__ == "__main__":
    sys.exit(main())
