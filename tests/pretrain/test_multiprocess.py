"""Pretraining with 2 processes under torchrun (gloo, CPU, the mini ViT at 64 px): a scheduler's
signal stops every rank after the same step with a checkpoint and exit 0, whatever --log_every
is; the SLURM script requeues; --resume is decided once, by rank 0.

(2-process training equals 1 process: tests/pretrain/test_train.py::
test_two_processes_ddp_match_one_process; pretraining has no loss-only evaluation mode.)
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from mae_transfer.pretrain.main import main
from mae_transfer.tools.synthetic_data import write_synthetic_images

pytestmark = pytest.mark.slow

#: Epochs of 10,000 steps logged every 1,000: no log line, no epoch end before the signal.
LONG = ["--model", "mae_vit_mini_patch16", "--input_size", 64, "--device", "cpu",
        "--num_workers", 0, "--batch_size", 2, "--epochs", 1, "--steps_per_epoch", 10000,
        "--log_every", 1000, "--vis_every", 0, "--warmup_epochs", 0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_synthetic_images(tmp_path_factory.mktemp("data") / "imgs", count=8,
                                  size=(72, 80), seed=7)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def launch(repo_root, script, *args, cwd=None, env_extra=None):
    """``bash tools/SCRIPT args`` in a session of its own, output merged, as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "PYTHONPATH": str(repo_root), **(env_extra or {})}
    return subprocess.Popen(["bash", str(repo_root / "tools" / script), *map(str, args)],
                            cwd=cwd or repo_root, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def finish(proc, timeout=60):
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running {timeout} s after the signal or error: it hangs")


def signal_once_training(proc, sig):
    """Send ``sig`` to the launcher (only) once its ranks train; returns the output so far."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "2 processes" in line:  # rank 0's last line before its first step
            time.sleep(1)
            proc.send_signal(sig)
            return "".join(lines)
    return "".join(lines)


def assert_stopped_cleanly(log, returncode, out):
    assert returncode == 0, log[-3000:]
    assert "SignalException" not in log and "Traceback" not in log
    assert log.count("stopped on request after") == 2  # both ranks, after the same step
    ckpt = load(out / "checkpoint-last.pth")
    assert ckpt["epoch"] == 0 and ckpt["step_in_epoch"] == ckpt["global_step"] >= 1
    return ckpt["global_step"]


def test_sigterm_to_torchrun_saves_exits_0_and_resume_continues(repo_root, images, tmp_path):
    out = tmp_path / "out"
    proc = launch(repo_root, "pretrain.sh", "--nproc_per_node", 2, "--", "--data_path", images,
                  "--output_dir", out, *LONG)
    log = signal_once_training(proc, signal.SIGTERM)
    log += finish(proc)
    done = assert_stopped_cleanly(log, proc.returncode, out)
    assert f"stopped on request after {done} steps" in log

    resumed = launch(repo_root, "pretrain.sh", "--nproc_per_node", 2, "--", "--data_path", images,
                     "--output_dir", out, *LONG, "--resume", "auto", "--max_steps", done + 1)
    log = finish(resumed)
    assert resumed.returncode == 0, log[-3000:]
    assert f"{done} steps done" in log  # rank 0's resume line
    assert load(out / "checkpoint-last.pth")["global_step"] == done + 1


def test_slurm_script_saves_on_usr1_requeues_and_resumes(repo_root, images, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    out = tmp_path / "out"
    args = ["pretrain", "--nproc_per_node", 2, "--", "--data_path", images, "--output_dir", out,
            *LONG]
    proc = launch(repo_root, "slurm.sh", *args, env_extra=slurm)
    log = signal_once_training(proc, signal.SIGUSR1)
    log += finish(proc)
    done = assert_stopped_cleanly(log, proc.returncode, out)
    assert calls.read_text() == "requeue 4242\n"
    # The requeued job: the same command line, no signal; it resumes by itself (--resume auto).
    again = launch(repo_root, "slurm.sh", *args, "--max_steps", done + 1, env_extra=slurm)
    log = finish(again)
    assert again.returncode == 0, log[-3000:]
    assert f"{done} steps done" in log
    assert load(out / "checkpoint-last.pth")["global_step"] == done + 1
    assert calls.read_text() == "requeue 4242\n"  # no signal this time: no second requeue


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(repo_root, images, node_dirs, *extra):
    """Two torchrun "nodes" on this machine, one process each; each runs in its own folder with
    ``--output_dir out``, so the two output folders are not shared (as on two real nodes)."""
    port = free_port()
    procs = [launch(repo_root, "pretrain.sh", "--nnodes", 2, "--node_rank", rank,
                    "--nproc_per_node", 1, "--master_addr", "127.0.0.1", "--master_port", port,
                    "--", "--data_path", images, "--output_dir", "out", *LONG,
                    "--resume", "auto", *extra, cwd=folder)
             for rank, folder in enumerate(node_dirs)]
    return [(p, finish(p, timeout=90)) for p in procs]


def first_checkpoint(images, folder, steps):
    """A checkpoint of ``steps`` steps in ``folder/out`` (one in-process run)."""
    assert main(["--data_path", str(images), "--output_dir", str(folder / "out"),
                 *map(str, LONG), "--max_steps", str(steps)]) == 0
    return load(folder / "out" / "checkpoint-last.pth")


def test_resume_is_decided_by_rank_0_a_rank_that_cannot_read_it_stops_all(repo_root, images,
                                                                          tmp_path):
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node1.mkdir()
    first_checkpoint(images, node0, 2)
    (p0, log0), (p1, log1) = two_nodes(repo_root, images, (node0, node1), "--max_steps", 3)
    assert p0.returncode != 0 and p1.returncode != 0, log0[-2000:] + log1[-2000:]
    assert ("error: rank 1 cannot resume from out/checkpoint-last.pth, the checkpoint rank 0 "
            "chose (is --output_dir shared by all nodes?): no checkpoint to resume at "
            "out/checkpoint-last.pth") in log1
    assert ("error: rank 1 cannot resume from out/checkpoint-last.pth (see its error): "
            "stopping every rank") in log0
    assert load(node0 / "out" / "checkpoint-last.pth")["global_step"] == 2  # nothing written
    assert not (node1 / "out").exists()


def test_rank_0_without_a_checkpoint_starts_every_rank_afresh(repo_root, images, tmp_path):
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir()
    theirs = first_checkpoint(images, node1, 2)  # only rank 1's folder holds a run
    (p0, log0), (p1, log1) = two_nodes(repo_root, images, (node0, node1), "--max_steps", 1)
    assert p0.returncode == 0 and p1.returncode == 0, log0[-2000:] + log1[-2000:]
    assert "resumed from" not in log0 + log1
    assert load(node0 / "out" / "checkpoint-last.pth")["global_step"] == 1
    assert load(node1 / "out" / "checkpoint-last.pth")["global_step"] == theirs["global_step"]


def test_the_stop_flag_is_asked_after_every_optimizer_step(images, tmp_path, monkeypatch):
    """One process, --log_every 1000: a stop requested during the 3rd optimizer step (with
    --accum_iter 2: micro-step 6) is acted on right after it, at that exact position."""
    from mae_transfer.tools.preemption import StopRequest

    asked = []
    monkeypatch.setattr(StopRequest, "requested", lambda self: asked.append(1) or len(asked) >= 3)
    assert main(["--data_path", str(images), "--output_dir", str(tmp_path), *map(str, LONG),
                 "--accum_iter", "2"]) == 0
    ckpt = load(tmp_path / "checkpoint-last.pth")
    assert len(asked) == 3
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (0, 6, 6)
