"""``StopOnSignalHook``: SIGTERM / SIGUSR1 stop training after the current iteration, saved.

A scheduler's stop signal (``scancel``, SLURM preemption, ``--signal=USR1@N`` before the time
limit, torchrun forwarding what it got) kills an MMEngine run mid-iteration by default, and
everything since the last periodic checkpoint is lost. This hook installs
``tools.preemption.StopRequest`` for the run and, after every training iteration, asks all ranks
whether any got a signal (one all-reduce of one number); if so every rank finishes that
iteration, the ``CheckpointHook`` saves it (rank 0 writes; ``last_checkpoint`` names it) unless
it has just done so, and the loop ends: the run returns normally and ``--resume`` continues at
the next iteration. The check runs every iteration, whatever the logging interval, so the stop
takes one iteration (plus a validation if that iteration is a validation one).

SLURM signals every process of a job step, DataLoader workers included; a worker that dies of it
crashes the main process at its next batch, before it can save. ``ignoring_stop_signals`` makes
the workers leave the stop signals to the main process (``FullCheckpointRunner`` applies it to
every loader with workers).
"""
from __future__ import annotations

import functools
import os.path as osp
import signal
from typing import Callable, Optional

from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS

from mae_transfer.tools.preemption import SCHEDULER_SIGNALS, StopRequest


def _worker_init(inner: Optional[Callable], worker_id: int) -> None:
    for sig in SCHEDULER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if inner is not None:
        inner(worker_id)


def ignoring_stop_signals(loader):
    """``loader`` (a DataLoader) with workers that ignore the stop signals, then run the
    ``worker_init_fn`` it had (MMEngine's seeding)."""
    if getattr(loader, "num_workers", 0) > 0:
        loader.worker_init_fn = functools.partial(_worker_init, loader.worker_init_fn)
    return loader


def _checkpoint_hook(runner) -> Optional[CheckpointHook]:
    return next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)


@HOOKS.register_module()
class StopOnSignalHook(Hook):
    """See the module docstring. Runs after the checkpoint hook of each iteration."""

    priority = "LOWEST"

    def __init__(self):
        self.stop = StopRequest()
        #: the iteration the run stopped after, and the checkpoint it left (None: not stopped)
        self.stopped_at: Optional[int] = None
        self.checkpoint: Optional[str] = None

    def before_train(self, runner) -> None:
        self.stop.install()

    def after_train(self, runner) -> None:
        self.stop.uninstall()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.stop.agree():
            return
        step = runner.iter + 1
        hook = _checkpoint_hook(runner)
        if hook is None:
            name = f"iter_{step}.pth"
            runner.save_checkpoint(runner.work_dir, name)
            self.checkpoint = osp.join(runner.work_dir, name)
        else:
            name = hook.filename_tmpl.format(step)
            if not str(hook.last_ckpt or "").endswith(name):  # not saved at this step yet
                hook._save_checkpoint(runner)
            self.checkpoint = hook.last_ckpt
        self.stopped_at = step
        runner.train_loop.stop_training = True
        runner.logger.warning(f"stop requested ({self.stop.signal_name or 'by another rank'}): "
                              f"stopped after iteration {step}, checkpoint {self.checkpoint}; "
                              f"--resume continues from it")
