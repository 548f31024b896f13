"""Pretraining faults (#20): errors and signals end every process; the output folder is claimed,
never silently taken over, and its faults are one line. CPU, the mini ViT at 64 px, seconds each."""
import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mae_transfer.pretrain.data import STOP_SIGNALS, worker_init
from mae_transfer.pretrain.main import main
from mae_transfer.tools.run_dir import claim_output_dir
from mae_transfer.tools.synthetic_data import write_synthetic_images

pytestmark = pytest.mark.slow

TINY = ["--model", "mae_vit_mini_patch16", "--input_size", "64", "--device", "cpu",
        "--batch_size", "4", "--log_every", "1", "--vis_every", "0", "--warmup_epochs", "1"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_synthetic_images(tmp_path_factory.mktemp("data") / "imgs", count=16,
                                  size=(72, 80), seed=3)


def run(images, out, *extra):
    return main(["--data_path", str(images), "--output_dir", str(out), *TINY,
                 "--num_workers", "0", "--epochs", "1", *map(str, extra)])


def alive(pid: int) -> bool:
    """A process that still exists and is not a zombie (a dead child awaiting its parent)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def start(repo_root, code_or_module, args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    return subprocess.Popen([sys.executable, *code_or_module, *map(str, args)], cwd=repo_root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, **popen)


def finish(proc, timeout):
    """Output of ``proc`` once it exits; a hang past ``timeout`` fails the test (and is killed)."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running {timeout} s after the error or signal: it hangs")


# The second batch raises in the training process while 2 workers (ignoring SIGTERM) are busy.
INJECT = """
import os, sys
import mae_transfer.pretrain.engine as engine
from mae_transfer.pretrain.data import STOP_SIGNALS, worker_init
from mae_transfer.pretrain.main import main
real, calls = engine.normalize_batch, []
def failing(*a, **k):
    calls.append(1)
    if len(calls) == 2:
        children = [p for p in os.listdir('/proc') if p.isdigit()
                    and f'PPid:\\t{os.getpid()}\\n' in open(f'/proc/{p}/status').read()]
        print('workers', *children, flush=True)
        raise RuntimeError('injected failure')
    return real(*a, **k)
engine.normalize_batch = failing
sys.exit(main(sys.argv[1:]))
"""


def test_an_error_with_workers_exits_and_leaves_no_worker(repo_root, images, tmp_path):
    proc = start(repo_root, ["-c", INJECT],
                 ["--data_path", images, "--output_dir", tmp_path, *TINY, "--num_workers", 2,
                  "--epochs", 100])
    log = finish(proc, timeout=120)
    assert proc.returncode == 1, log
    assert "RuntimeError: injected failure" in log
    workers = [int(p) for p in next(l for l in log.splitlines() if l.startswith("workers"))
               .split()[1:]]
    assert len(workers) >= 2, log
    assert not [p for p in workers if alive(p)]


def test_ctrl_c_saves_the_position_and_resume_continues(repo_root, images, tmp_path):
    """Ctrl-C in a terminal signals the whole process group (workers too): the run saves where
    it is, like SIGTERM, exits 0, and --resume auto continues from that step."""
    proc = start(repo_root, ["-m", "mae_transfer.pretrain.main"],
                 ["--data_path", images, "--output_dir", tmp_path, *TINY, "--num_workers", 2,
                  "--epochs", 1000])
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1/1000  step 2/" in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    log = "".join(lines) + finish(proc, timeout=120)
    assert proc.returncode == 0, log
    assert "received SIGINT: saving a checkpoint" in log and "stopped on request" in log
    saved = torch.load(tmp_path / "checkpoint-last.pth", weights_only=True)
    done = saved["global_step"]
    assert 2 <= done < 4000 and saved["step_in_epoch"] == done % 4
    assert main(["--data_path", str(images), "--output_dir", str(tmp_path), *TINY,
                 "--num_workers", "0", "--epochs", "1000", "--resume", "auto",
                 "--max_steps", str(done + 2)]) == 0
    resumed = torch.load(tmp_path / "checkpoint-last.pth", weights_only=True)
    assert resumed["global_step"] == done + 2
    assert f"{done} steps done" in (tmp_path / "train.log").read_text()  # the resume line


def test_a_used_folder_needs_resume_or_overwrite(images, tmp_path, capsys):
    assert run(images, tmp_path, "--steps_per_epoch", 1) == 0
    first = (tmp_path / "checkpoint-last.pth").read_bytes()
    encoder = (tmp_path / "encoder.safetensors").read_bytes()
    capsys.readouterr()
    assert run(images, tmp_path, "--steps_per_epoch", 1, "--seed", 1) == 2
    err = capsys.readouterr().err
    assert err == (f"error: output folder {tmp_path} holds another run (checkpoint-0001.pth, "
                   f"checkpoint-last.pth, encoder.safetensors, log.txt): pass --resume to "
                   f"continue it or --overwrite to replace it\n")
    assert (tmp_path / "checkpoint-last.pth").read_bytes() == first
    assert (tmp_path / "encoder.safetensors").read_bytes() == encoder
    assert run(images, tmp_path, "--steps_per_epoch", 1, "--seed", 1, "--overwrite") == 0
    assert (tmp_path / "checkpoint-last.pth").read_bytes() != first
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 1  # the new run's epoch only


def test_a_folder_in_use_is_refused(images, tmp_path, capsys):
    with claim_output_dir(tmp_path, resume=False, overwrite=False, run_files=()):
        assert run(images, tmp_path, "--steps_per_epoch", 1) == 2
    assert f"output folder {tmp_path} is in use by another run" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint-last.pth").exists()


def test_an_unusable_folder_is_one_line(images, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert run(images, tmp_path / "file" / "out") == 2
    assert capsys.readouterr().err == (f"error: cannot create output folder "
                                       f"{tmp_path}/file/out: Not a directory\n")


def test_a_full_disk_is_one_line_naming_the_folder(images, tmp_path, capsys, monkeypatch):
    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC)

    monkeypatch.setattr(torch, "save", full)
    assert run(images, tmp_path, "--steps_per_epoch", 1) == 2
    assert capsys.readouterr().err == (f"error: cannot write {tmp_path / 'checkpoint-last.pth'} "
                                       f"into output folder {tmp_path}: No space left on device\n")
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


PR_GET_PDEATHSIG = 2


def _worker_state(parent_pid):
    """Run ``worker_init`` in a forked child; what it left: (death signal, stop-signal handlers)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, whatever happens
        try:
            worker_init(parent_pid(), 0)
            sig = ctypes.c_int(-1)
            ctypes.CDLL(None).prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
            ignored = [signal.getsignal(s) == signal.SIG_IGN for s in STOP_SIGNALS]
            os.write(write, json.dumps([sig.value, ignored]).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        return json.loads(f.read())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_forked_workers_ignore_stop_signals_and_die_with_the_main_process():
    assert _worker_state(os.getppid) == [signal.SIGKILL, [True, True, True]]
    # a worker whose parent is not the main process (a fork server's child) is left alone
    assert _worker_state(lambda: 1) == [0, [True, True, True]]
