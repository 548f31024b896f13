"""Two processes on the CPU (gloo): evaluation equals one process, training saves once, resumes,
stops cleanly on SIGTERM; a torchrun start without --launcher joins as a real rank.

The multi-process runs start torchrun (through ``tools/torchrun.py`` where a signal is
sent); the process-group helpers are tested with two forked processes.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


def torchrun_cmd(repo_root: Path, *args, launcher="torchrun") -> list:
    head = ([sys.executable, "-m", "torch.distributed.run"] if launcher == "torchrun"
            else [sys.executable, "-m", "mae_transfer.tools.torchrun"])
    return [*head, "--standalone", "--nproc_per_node", "2",
            str(repo_root / "tools" / "train_seg.py"), *map(str, args)]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def log_text(work_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(work_dir.glob("*/*.log")))


@pytest.fixture
def random_checkpoint(tiny_cfg, tmp_path) -> Path:
    """The tiny segmentor with random weights as an MMEngine checkpoint: far from 100 mIoU, so
    that a difference in evaluation shows in the numbers."""
    from mae_transfer.segmentation.distributed import sync_bn_to_bn
    from mmseg.registry import MODELS

    sync_bn_to_bn(tiny_cfg, cuda=False)
    torch.manual_seed(0)
    model = MODELS.build(tiny_cfg.model)
    model.init_weights()
    path = tmp_path / "random.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(repo_root, ade_root, random_checkpoint,
                                                  tmp_path, capsys):
    from mae_transfer.tools.train_seg import main

    one = tmp_path / "one.json"
    assert main([TINY, "--eval-only", "--checkpoint", str(random_checkpoint), "--data-root",
                 str(ade_root), "--work-dir", str(tmp_path / "w1"), "--out", str(one)]) == 0
    line_one = [x for x in capsys.readouterr().out.splitlines() if x.startswith("test:")]
    two = tmp_path / "two.json"
    two.write_text(json.dumps({"metrics": {"mIoU": 12.34}}))  # stale: must not be printed
    proc = subprocess.run(torchrun_cmd(repo_root, TINY, "--launcher", "pytorch", "--eval-only",
                                       "--checkpoint", random_checkpoint, "--data-root",
                                       ade_root, "--work-dir", tmp_path / "w2", "--out", two),
                          cwd=repo_root, capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert 0 < r1["metrics"]["mIoU"] < 100  # random weights: a number that can differ
    assert r2["metrics"] == r1["metrics"] and r2["per_class"] == r1["per_class"]
    # rank 0 alone prints, the same line as one process; rank 1 prints nothing
    assert [x for x in proc.stdout.splitlines() if x.startswith("test:")] == line_one
    assert "rank 1 of 2" in proc.stdout + proc.stderr


def wait_for(pattern: str, folder: Path, proc, timeout: float = 240) -> re.Match:
    end = time.time() + timeout
    while time.time() < end:
        match = re.search(pattern, log_text(folder)) if folder.is_dir() else None
        if match:
            return match
        assert proc.poll() is None, "the run ended before the pattern appeared"
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} not in the log after {timeout} s")


@pytest.mark.slow
def test_sigterm_saves_once_exits_0_and_resume_continues_as_a_real_rank(repo_root, ade_root,
                                                                      tmp_path):
    work = tmp_path / "run"
    long_run = ["train_cfg.max_iters=200", "train_cfg.val_interval=200",
                "default_hooks.checkpoint.interval=200", "default_hooks.logger.interval=1"]
    proc = subprocess.Popen(
        torchrun_cmd(repo_root, TINY, "--launcher", "pytorch", "--data-root", ade_root,
                     "--work-dir", work, "--cfg-options", *long_run, launcher="graceful"),
        cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        wait_for(r"Iter\(train\) \[\s*2/200\]", work, proc)
        proc.send_signal(signal.SIGTERM)  # what scancel / SLURM preemption send
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    saved = sorted(work.glob("iter_*.pth"))
    assert len(saved) == 1, saved  # rank 0 wrote it, once
    step = int(saved[0].stem.split("_")[1])
    assert step >= 2
    assert (work / "last_checkpoint").read_text().strip() == str(saved[0])
    assert f"stopped by a signal after iteration {step}" in out
    assert out.count("stopped by a signal") == 1  # rank 0 alone prints
    assert torch.load(saved[0], weights_only=False)["meta"]["iter"] == step

    # Resumed by torchrun WITHOUT --launcher: the processes join as ranks of one job.
    resume = subprocess.run(
        torchrun_cmd(repo_root, TINY, "--data-root", ade_root, "--work-dir", work, "--resume",
                     "--cfg-options", *long_run[1:], f"train_cfg.max_iters={step + 2}"),
        cwd=repo_root, capture_output=True, text=True, timeout=300, env=env())
    assert resume.returncode == 0, resume.stderr[-3000:]
    log = log_text(work)
    assert "joins the job as rank 1 (--launcher pytorch)" in resume.stdout + resume.stderr
    assert f"resumed epoch: 0, iter: {step}" in log
    chosen = f"--resume: {work / f'iter_{step}.pth'} (chosen by rank 0, loaded by all 2 ranks)"
    assert chosen in resume.stdout
    assert re.search(rf"Iter\(train\) \[{step + 2}/{step + 2}\]", log)
    assert (work / f"iter_{step + 2}.pth").is_file()
    assert torch.load(work / f"iter_{step + 2}.pth", weights_only=False)["meta"]["iter"] == step + 2


# --- the process-group helpers, two forked processes ----------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_group(rank: int, port: int, target, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        results[rank] = target(rank)
    except Exception as exc:  # noqa: BLE001  (reported to the test)
        results[rank] = f"{type(exc).__name__}: {exc}"
    finally:
        dist.destroy_process_group()


def run_two(target) -> list:
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager:
        results = manager.dict()
        procs = [ctx.Process(target=_in_group, args=(r, PORT[0], target, results))
                 for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        return [results.get(r) for r in range(2)]


PORT = [0]


@pytest.fixture
def group_port():
    PORT[0] = free_port()


def _rank1_fails(rank):
    from mae_transfer.segmentation.distributed import stop_if_any_failed

    stop_if_any_failed("FileNotFoundError: gone" if rank == 1 else None, "checkpoint c.pth")
    return "no error"


def _signal_on_rank1(rank):
    from mae_transfer.tools.preemption import StopRequest

    stop = StopRequest().install()
    try:
        if rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return (stop.requested(), stop.agree())
    finally:
        stop.uninstall()


def _resume_choice(rank):
    from mmengine.config import Config
    from mae_transfer.segmentation.distributed import decide_resume

    folder = Path(os.environ["SEG21_WORK"]) / f"rank{rank}"  # not shared: only rank 0 has one
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (folder / "last_checkpoint").write_text(str(folder / "iter_8.pth"))
    cfg = Config(dict(work_dir=str(folder), resume=True, load_from=None))
    decide_resume(cfg)
    return (cfg.resume, cfg.load_from)


def test_an_error_on_one_rank_stops_both_with_one_line(group_port):
    results = run_two(_rank1_fails)
    assert results == ["RankError: checkpoint c.pth on rank 1: FileNotFoundError: gone; "
                       "every rank stops"] * 2


def test_a_signal_on_one_rank_is_agreed_by_both(group_port):
    assert run_two(_signal_on_rank1) == [(False, True), (True, True)]


def test_rank_0_decides_the_resume_checkpoint_for_all(group_port, tmp_path, monkeypatch):
    monkeypatch.setenv("SEG21_WORK", str(tmp_path))
    expected = (True, str(tmp_path / "rank0" / "iter_8.pth"))
    assert run_two(_resume_choice) == [expected, expected]


def test_sync_bn_becomes_bn_on_cpu_and_stays_under_a_gpu_launcher(tiny_cfg):
    from mae_transfer.segmentation.distributed import sync_bn_to_bn

    for head in (tiny_cfg.model.backbone, tiny_cfg.model.decode_head,
                 tiny_cfg.model.auxiliary_head):
        head.norm_cfg = dict(type="SyncBN", requires_grad=True)
    gpu = tiny_cfg.copy()
    gpu.launcher = "pytorch"
    assert sync_bn_to_bn(gpu, cuda=True) == 0 and gpu.model.decode_head.norm_cfg.type == "SyncBN"
    assert sync_bn_to_bn(tiny_cfg, cuda=False) == 3
    assert {h.norm_cfg.type for h in (tiny_cfg.model.backbone, tiny_cfg.model.decode_head,
                                      tiny_cfg.model.auxiliary_head)} == {"BN"}


def test_torchrun_environment_without_launcher_joins_and_launcher_without_it_is_one_line():
    from mmengine.config import Config
    from mae_transfer.segmentation.distributed import choose_launcher

    cfg = Config(dict(launcher="none"))
    choose_launcher(cfg, {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                          "MASTER_ADDR": "localhost", "MASTER_PORT": "1234"})
    assert cfg.launcher == "pytorch"
    alone = Config(dict(launcher="none"))
    choose_launcher(alone, {})
    assert alone.launcher == "none"
    with pytest.raises(ValueError, match=r"^--launcher pytorch: RANK, WORLD_SIZE, LOCAL_RANK, "
                                         r"MASTER_ADDR, MASTER_PORT not set; start the processes "
                                         r"with torchrun"):
        choose_launcher(Config(dict(launcher="pytorch")), {})


class _SignalDispositions(torch.utils.data.Dataset):
    """Each item: what SIGTERM / SIGUSR1 do in the process that loads it."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.tensor([int(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN),
                             int(signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN)])


def test_loader_workers_leave_stop_signals_to_the_main_process():
    import mae_transfer.segmentation.registration  # noqa: F401  (the runner and its samplers)
    from mae_transfer.segmentation.runner import FullCheckpointRunner

    def build(workers):
        return FullCheckpointRunner.build_dataloader(
            dict(batch_size=2, num_workers=workers, dataset=_SignalDispositions(),
                 sampler=dict(type="DefaultSampler", shuffle=False)), seed=0)

    def first_batch(workers):  # MMEngine's pseudo_collate: a list of the items
        return [item.tolist() for item in next(iter(build(workers)))]

    assert first_batch(1) == [[1, 1], [1, 1]]  # ignored in the worker
    assert first_batch(0) == [[0, 0], [0, 0]]  # the main process: untouched
