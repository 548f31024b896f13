"""Starting the processes of a detection run: Detectron2's ``launch`` on GPUs, gloo on a CPU.

``tools/train_det.py --num-gpus N`` starts N processes per machine itself (Detectron2's
convention). What this module adds, on Detectron2 0.6 and a current official build alike:

- **a CPU run with N processes** (``train.device=cpu``): Detectron2 0.6's workers assert CUDA and
  use NCCL, so on a CPU the processes are spawned here, join a gloo process group and get
  Detectron2's per-machine group (``comm.create_local_process_group`` where the installed
  Detectron2 has it, the same group set by hand on 0.6). A test mode: it runs DDP wrapping, the
  distributed samplers, evaluation gathering, rank-0 checkpointing and logging in the test suite;
  it is no way to train (docs/detection.md);
- **misuse in one line** (``UsageError``): started by torchrun or ``srun`` (``WORLD_SIZE`` > 1 in
  the environment), which would run N independent copies writing one folder; ``--num-gpus N``
  with fewer GPUs visible; a GPU config on a machine without one;
- **errors of the processes in one line**: a worker's bad-input error (``cli.error_report``) is
  passed to the launching process, which prints it once instead of N tracebacks, with its status;
- **stop signals forwarded**: SIGTERM / SIGUSR1 sent to the launching process (what ``scancel``
  or SLURM's ``--signal`` reach) go to every worker, which stop together after a step
  (``tools.preemption``, ``training.StopOnRequest``); the launcher then exits 0.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from datetime import timedelta
from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mae_transfer.detection import compat

compat.setup()  # Detectron2 v0.6 cannot be imported without it (no compiled _C, Image.LINEAR)
from detectron2.engine import launch as detectron2_launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from mae_transfer.detection.cli import UsageError, error_report  # noqa: E402
from mae_transfer.tools.preemption import SCHEDULER_SIGNALS  # noqa: E402

#: How long a process waits for the others in a collective before failing.
TIMEOUT = timedelta(minutes=30)


class WorkersFailed(Exception):
    """Workers stopped on reported errors: ``lines`` (distinct, one each) and the exit status."""

    def __init__(self, status: int, lines: List[str]):
        super().__init__("; ".join(lines))
        self.status, self.lines = status, lines


def no_gpu_message(device: str) -> str:
    return f"train.device={device} but no GPU is visible; pass train.device=cpu"


def check_not_under_torchrun(environ=os.environ) -> None:
    """Refuse a process started by torchrun / srun: each would run the whole job on its own."""
    world = environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise UsageError(
            f"started by torchrun/srun (WORLD_SIZE={world}): tools/train_det.py starts its own "
            f"processes; run it once per machine with --num-gpus "
            f"{environ.get('LOCAL_WORLD_SIZE', 'N')} (several machines: --num-machines M "
            "--machine-rank R --dist-url tcp://HOST:PORT)")


def check_launch(num_gpus: int, num_machines: int, device: str) -> None:
    """Refuse, in one line, a launch that cannot run as asked (see the module docstring)."""
    if num_gpus < 1 or num_machines < 1:
        raise UsageError(f"--num-gpus and --num-machines must be >= 1, got {num_gpus} and "
                         f"{num_machines}")
    if not str(device).startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise UsageError(no_gpu_message(device))
    visible = torch.cuda.device_count()
    if num_gpus > visible:
        raise UsageError(f"--num-gpus {num_gpus} but this machine has {visible} visible GPU(s) "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                         f"pass --num-gpus {visible}")


class ReportingMain:
    """The worker's main: a reported error (``cli.error_report``) goes to the launcher through
    ``queue`` and ends the process with its status, instead of a traceback per process."""

    def __init__(self, main_func: Callable, queue):
        self.main_func, self.queue = main_func, queue

    def __call__(self, *args):
        try:
            return self.main_func(*args)
        except Exception as exc:
            report = error_report(exc)
            if report is None:
                raise
            self.queue.put(report)
            sys.exit(report[0])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_local_group(per_machine: int) -> None:
    """Detectron2's per-machine process group (``comm.get_local_rank`` needs it)."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after 0.6
        comm.create_local_process_group(per_machine)
        return
    machines = dist.get_world_size() // per_machine
    for machine in range(machines):  # every process creates every group, in the same order
        group = dist.new_group(list(range(machine * per_machine, (machine + 1) * per_machine)))
        if machine == dist.get_rank() // per_machine:
            comm._LOCAL_PROCESS_GROUP = group


def gloo_worker(local_rank: int, main_func: Callable, world_size: int, per_machine: int,
                machine_rank: int, dist_url: str, args: tuple) -> None:
    """One CPU process: join the gloo group as rank ``machine_rank * per_machine + local_rank``."""
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size,
                            rank=machine_rank * per_machine + local_rank, timeout=TIMEOUT)
    create_local_group(per_machine)
    comm.synchronize()
    main_func(*args)


@contextlib.contextmanager
def forwarding_stop_signals() -> Iterator[None]:
    """While workers run, send them the stop signals this (launching) process receives."""
    def forward(signum, frame):
        for child in mp.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in SCHEDULER_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _reports(queue) -> List[Tuple[int, str]]:
    found = []
    while not queue.empty():
        found.append(queue.get())
    return found


def launch(main_func: Callable, num_gpus: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: Optional[str] = None, device: str = "cpu", args: tuple = ()) -> None:
    """Run ``main_func(*args)`` in ``num_gpus`` processes per machine (one: in this process).

    Raises ``WorkersFailed`` when workers stopped on reported errors.
    """
    world_size = num_gpus * num_machines
    if world_size == 1:
        main_func(*args)
        return
    queue = mp.get_context("spawn").SimpleQueue()
    worker = ReportingMain(main_func, queue)
    try:
        with forwarding_stop_signals():
            if str(device).startswith("cuda"):
                detectron2_launch(worker, num_gpus, num_machines=num_machines,
                                  machine_rank=machine_rank, dist_url=dist_url, args=args)
            else:
                if dist_url in (None, "auto"):
                    if num_machines > 1:
                        raise UsageError("--dist-url tcp://HOST:PORT is required with "
                                         "--num-machines > 1")
                    dist_url = f"tcp://127.0.0.1:{free_port()}"
                mp.spawn(gloo_worker, nprocs=num_gpus, daemon=False,
                         args=(worker, world_size, num_gpus, machine_rank, dist_url, args))
    except (mp.ProcessExitedException, mp.ProcessRaisedException):
        reports = _reports(queue)
        if not reports:
            raise
        lines = list(dict.fromkeys(line for _, line in reports))
        raise WorkersFailed(reports[0][0], lines) from None
