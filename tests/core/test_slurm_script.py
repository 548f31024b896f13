"""tools/slurm.sh's command lines (``--print``) for the three stages, on one node and on two
(``srun``, the rendezvous on the job's first node). The signal, requeue and resume behaviour:
tests/pretrain/test_multiprocess.py."""
import os
import shlex
import subprocess

import pytest

TWO_NODES = {"SLURM_NNODES": "2", "SLURM_JOB_ID": "55", "SLURM_JOB_NODELIST": "gpu[07-08]",
             "SLURM_GPUS_ON_NODE": "8"}


@pytest.fixture
def printed(repo_root, tmp_path):
    # a stand-in scontrol that expands the node list
    (tmp_path / "scontrol").write_text('#!/bin/sh\nprintf "gpu07\\ngpu08\\n"\n')
    (tmp_path / "scontrol").chmod(0o755)

    def run(*args, env=None):
        outside = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env = {**outside, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTHON": "py",
               **(env or {})}
        done = subprocess.run(["bash", str(repo_root / "tools" / "slurm.sh"), "--print", *args],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return shlex.split(done.stdout)

    return run


def test_pretrain_resumes_by_itself_and_rendezvouses_on_the_first_node(printed, repo_root):
    script = str(repo_root / "tools" / "pretrain.sh")
    assert printed("pretrain", "--nproc_per_node", "8", "--", "--data_path", "D") == [
        "bash", script, "--nproc_per_node", "8", "--", "--data_path", "D", "--resume", "auto"]
    assert printed("pretrain", "--nproc_per_node", "8", "--", "--resume", "X",
                   env=TWO_NODES) == [
        "srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", script,
        "--nproc_per_node", "8", "--nnodes", "2", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", "gpu07:29500", "--rdzv_id", "55", "--", "--resume", "X"]


def test_det_flags_come_before_the_config_overrides(printed, repo_root):
    script = str(repo_root / "tools" / "train_det.py")
    assert printed("det", "--config", "C.py", "train.max_iter=10") == [
        "py", script, "--resume", "--num-gpus", "1", "--config", "C.py", "train.max_iter=10"]
    cmd = printed("det", "--config", "C.py", "train.max_iter=10", env=TWO_NODES)
    assert cmd[:5] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c"]
    # what each node's task runs: its own machine rank, before the overrides
    on_node = subprocess.run(["bash", "-c", cmd[5].replace("exec ", "echo "), *cmd[6:]],
                             env={**os.environ, "SLURM_NODEID": "1"}, capture_output=True,
                             text=True).stdout.split()
    assert on_node == ["py", script, "--machine-rank", "1", "--resume", "--num-gpus", "8",
                       "--num-machines", "2", "--dist-url", "tcp://gpu07:29500", "--config",
                       "C.py", "train.max_iter=10"]


def test_seg_runs_under_the_signal_forwarding_torchrun(printed, repo_root):
    script = str(repo_root / "tools" / "train_seg.py")
    assert printed("seg", "C.py", "--work-dir", "W") == [
        "py", "-m", "mae_transfer.tools.torchrun", "--standalone", "--nproc_per_node", "1",
        script, "C.py", "--resume", "--launcher", "pytorch", "--work-dir", "W"]


def test_an_unknown_stage_is_one_line(repo_root):
    done = subprocess.run(["bash", str(repo_root / "tools" / "slurm.sh"), "train"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == ("usage: tools/slurm.sh pretrain|det|seg ARGS... (see the top of "
                           "tools/slurm.sh)\n")
