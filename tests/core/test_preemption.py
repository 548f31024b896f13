"""tools/preemption.py (stop flag, agreement over ranks, SLURM requeue) and tools/torchrun.py's
child lookup; the launches themselves: tests/pretrain/test_multiprocess.py."""
import os
import signal
import subprocess
import sys

import pytest

from mae_transfer.tools import preemption
from mae_transfer.tools.preemption import StopRequest, requeue_job
from mae_transfer.tools.torchrun import child_pids


@pytest.fixture
def stop():
    request = StopRequest()
    yield request
    request.uninstall()


def test_a_signal_sets_the_flag_and_uninstall_restores_the_handlers(stop):
    before = signal.getsignal(signal.SIGUSR1)
    stop.install()
    assert not stop.requested() and not stop.agree()  # no process group: this process's view
    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop.requested() and stop.agree() and stop.signal_name == "SIGUSR1"
    os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
    assert stop.signal_name == "SIGUSR1"
    stop.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_second_ctrl_c_stops_at_once(stop):
    stop.install((signal.SIGINT,))
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    """``scontrol`` on PATH recording its arguments; exits with ``$FAKE_STATUS``."""
    calls = tmp_path / "calls"
    script = tmp_path / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                      f'[ "${{FAKE_STATUS:-0}}" = 0 ] || echo "Job not requeueable" >&2\n'
                      f'exit ${{FAKE_STATUS:-0}}\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    return calls


def test_requeue_runs_scontrol_under_slurm_only(fake_scontrol, monkeypatch, caplog):
    caplog.set_level("INFO", logger="mae_transfer.preemption")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert requeue_job() is False and not fake_scontrol.exists()
    assert "not running under SLURM" in caplog.text
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert requeue_job() is True
    assert fake_scontrol.read_text() == "requeue 77\n"
    monkeypatch.setenv("FAKE_STATUS", "1")
    assert requeue_job("78") is False
    assert "scontrol requeue 78 failed (exit 1): Job not requeueable" in caplog.text


def test_only_the_time_limit_signal_asks_for_a_requeue(fake_scontrol, monkeypatch, stop):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    stop.install()
    assert stop.requeue() is False  # no signal
    os.kill(os.getpid(), signal.SIGTERM)  # scancel / preemption: stop, no requeue
    assert stop.requeue() is False and not fake_scontrol.exists()
    usr1 = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert usr1.requeue() is True
    finally:
        usr1.uninstall()
    assert fake_scontrol.read_text() == "requeue 77\n"


def test_requeue_command_line(fake_scontrol, repo_root):
    env = {**os.environ, "SLURM_JOB_ID": "91", "PYTHONPATH": str(repo_root)}
    done = subprocess.run([sys.executable, "-m", "mae_transfer.tools.preemption", "requeue"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert fake_scontrol.read_text() == "requeue 91\n"
    assert preemption.main(["bogus"]) == 2


# One rank of two (gloo, a file rendezvous): prints agree() before and after rank 1 alone got
# a stop signal.
AGREE = """
import sys, torch.distributed as dist
from mae_transfer.tools.preemption import StopRequest
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
stop = StopRequest()
before = stop.agree()
if rank == 1:
    stop.signal_name = "SIGTERM"  # what the handler sets
print(before, stop.agree())
dist.destroy_process_group()
"""


@pytest.mark.slow  # two interpreters start
def test_agree_gives_every_rank_the_same_answer(repo_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    ranks = [subprocess.Popen([sys.executable, "-c", AGREE, str(r), str(tmp_path / "init")],
                              env=env, stdout=subprocess.PIPE, text=True) for r in range(2)]
    assert [p.communicate(timeout=120)[0] for p in ranks] == ["False True\n"] * 2


def test_child_pids_finds_the_launchers_workers():
    kids = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        assert {k.pid for k in kids} <= set(child_pids(os.getpid()))
        assert child_pids(kids[0].pid) == []
    finally:
        for k in kids:
            k.kill()
            k.wait()
