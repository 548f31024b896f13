"""Detection with several processes on a CPU (gloo): the test mode of detection/launch.py.

Two processes, the tiny config, the generated shapes set: evaluation equals one process, training
writes each checkpoint once and resumes where it stopped, SIGTERM stops with a checkpoint and exit
0, a torchrun launch and an error in the processes are one line each, and the resume decision /
stop agreement of rank 0 reaches rank 1.
"""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = "detection/configs/mask_rcnn_vit_mini_cpu.py"
SHORT = ["train.eval_period=0", "train.log_period=2", "train.checkpointer.period=10"]


def train_det(data, out, *extra, flags=(), env=None, wait=True):
    cmd = [sys.executable, "tools/train_det.py", "--config", TINY, "--dist-url", "auto", *flags,
           "--dataset", f"custom={data}", f"train.output_dir={out}", *SHORT, *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def logs(out: Path) -> dict:
    """Every process's log: log.txt (rank 0), log.txt.rank1."""
    return {p.name: p.read_text() for p in sorted(out.glob("log.txt*"))}


def trained_iterations(out: Path) -> list:
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    return [m["iteration"] for m in lines if "total_loss" in m]


def trained_so_far(out: Path) -> bool:
    """metrics.json holds a logged step (the file itself exists before training starts)."""
    return (out / "metrics.json").is_file() and "total_loss" in (out / "metrics.json").read_text()


@pytest.fixture(scope="module")
def two_process_run(shapes_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("det_mp") / "run"
    run = train_det(shapes_dataset["coco"], out, "train.max_iter=20", flags=["--num-gpus", "2"])
    assert run.returncode == 0, run.stderr[-3000:]
    return {"out": out, "data": shapes_dataset["coco"]}


@pytest.mark.slow
def test_two_processes_train_and_rank0_writes_each_checkpoint_once(two_process_run):
    out = two_process_run["out"]
    found = logs(out)
    assert set(found) == {"log.txt", "log.txt.rank1"}
    assert "World size: 2" in found["log.txt"] and "Rank of current process: 1" in found["log.txt.rank1"]
    saves = re.findall(r"Saving checkpoint to (\S+)", "".join(found.values()))
    assert sorted(Path(s).name for s in saves) == [
        "model_0000009.pth", "model_0000019.pth", "model_final.pth"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert trained_iterations(out)[-1] == 19
    assert json.loads((out / "coco_eval.json").read_text())["iteration"] == 20


@pytest.mark.slow
def test_one_checkpoint_evaluated_by_two_processes_equals_one(two_process_run, tmp_path):
    weights = two_process_run["out"] / "model_final.pth"
    results = {}
    for n in (1, 2):
        out = tmp_path / f"eval{n}"
        run = train_det(two_process_run["data"], out, f"train.init_checkpoint={weights}",
                        flags=["--num-gpus", str(n), "--eval-only"])
        assert run.returncode == 0, run.stderr[-3000:]
        results[n] = json.loads((out / "coco_eval.json").read_text())["results"]
    assert set(results[1]) == {"bbox", "segm"}
    assert results[1]["bbox"]["AP"] > 0 and results[1]["segm"]["AP"] > 0  # a real comparison
    assert results[2] == results[1]  # every metric, per category too, exactly


@pytest.mark.slow
def test_sigterm_stops_every_process_with_a_checkpoint_and_resume_continues(shapes_dataset,
                                                                            tmp_path):
    out = tmp_path / "run"
    proc = train_det(shapes_dataset["coco"], out, "train.max_iter=5000",
                     flags=["--num-gpus", "2"], wait=False)
    deadline = time.time() + 120
    while not trained_so_far(out) and proc.poll() is None:
        assert time.time() < deadline, "training did not start"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # to the launching process, as scancel / SLURM do
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = re.search(r"stopped after iteration (\d+) of 5000", logs(out)["log.txt"])
    assert stopped, logs(out)["log.txt"][-2000:]
    last = int(stopped.group(1))
    assert (out / "last_checkpoint").read_text() == f"model_{last:07d}.pth"
    assert not (out / "model_final.pth").exists()

    run = train_det(shapes_dataset["coco"], out, f"train.max_iter={last + 3}",
                    flags=["--num-gpus", "2", "--resume"])
    assert run.returncode == 0, run.stderr[-3000:]
    for name, text in logs(out).items():  # both ranks load the one rank 0 chose
        assert f"resumed from {out / f'model_{last:07d}.pth'}: continuing at iteration " \
               f"{last + 1} of {last + 3}" in text, name
    assert trained_iterations(out)[-1] == last + 2


@pytest.mark.slow
def test_started_by_torchrun_is_one_line_naming_the_flag(shapes_dataset, tmp_path):
    torchrun_env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    run = train_det(shapes_dataset["coco"], tmp_path / "run", env=torchrun_env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if "error" in line.lower()] == [
        "error: started by torchrun/srun (WORLD_SIZE=2): tools/train_det.py starts its own "
        "processes; run it once per machine with --num-gpus 2 (several machines: "
        "--num-machines M --machine-rank R --dist-url tcp://HOST:PORT)"]
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow
def test_an_error_in_the_processes_is_one_line_from_the_launcher(shapes_dataset, tmp_path):
    missing = tmp_path / "missing.pth"
    run = train_det(shapes_dataset["coco"], tmp_path / "run", f"train.init_checkpoint={missing}",
                    flags=["--num-gpus", "2"])
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert [line for line in run.stderr.splitlines() if line.startswith("error")] == [
        f"error: no checkpoint file at {missing}"]  # both processes failed; printed once


def test_more_gpus_than_visible_is_one_line(monkeypatch):
    import torch

    from mae_transfer.detection.cli import UsageError
    from mae_transfer.detection.launch import check_launch

    check_launch(4, 1, "cpu")  # a CPU run: gloo processes, any number
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_launch(2, 1, "cuda")
    with pytest.raises(UsageError, match=r"^--num-gpus 8 but this machine has 2 visible GPU\(s\) "
                                         r".*; pass --num-gpus 2$"):
        check_launch(8, 1, "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no GPU is visible; pass train.device=cpu"):
        check_launch(1, 1, "cuda")


def test_stop_request_is_set_by_sigterm_and_sigusr1_and_restores_handlers():
    from mae_transfer.tools.preemption import StopRequest

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        before = signal.getsignal(sig)
        stop = StopRequest().install()
        assert not stop.requested() and not stop.agree()
        os.kill(os.getpid(), sig)
        assert stop.requested() and stop.agree()  # no process group: this process's flag
        stop.uninstall()
        assert signal.getsignal(sig) is before


#: Two gloo processes: rank 0's resume choice reaches rank 1 (which finds another file itself);
#: a rank that cannot read it stops both with one line; one rank's stop request stops both.
RANKS_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch.distributed as dist
    from mae_transfer.detection import resume
    from mae_transfer.tools.preemption import StopRequest
    rank, url, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=url, world_size=2, rank=rank)
    result = {"chosen": resume.decide_resume(lambda: f"{folder}/rank{rank}.pth")}
    if rank == 1:
        resume.read_problem = lambda path: "No such file or directory"
    try:
        resume.decide_resume(lambda: f"{folder}/rank{rank}.pth")
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    stop = StopRequest().install()
    result["agree_none"] = stop.agree()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is signalled
    result["agree_one"] = stop.agree()
    json.dump(result, open(f"{folder}/result{rank}.json", "w"))
""")


@pytest.mark.slow
def test_rank0_decides_resume_and_stop_for_every_rank(tmp_path):
    from mae_transfer.detection.launch import free_port

    (tmp_path / "rank0.pth").write_bytes(b"x")
    url = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RANKS_SCRIPT, str(r), url, str(tmp_path)],
                              cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()[-3000:]
    results = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1)]
    chosen = str(tmp_path / "rank0.pth")
    assert [r["chosen"] for r in results] == [chosen, chosen]
    expected = (f"CheckpointError: --resume: rank 1 cannot read {chosen}, the checkpoint rank 0 "
                "resumes from (No such file or directory); every process must see "
                "train.output_dir (shared storage)")
    assert [r["error"] for r in results] == [expected, expected]
    assert [(r["agree_none"], r["agree_one"]) for r in results] == [(False, True), (False, True)]
