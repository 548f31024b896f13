"""Fine-tuning and linear probing end to end on the CPU, from an encoder our pretraining wrote:
a 4-block 64-d ViT (patch 8) at 32 px on a generated 3-class ImageFolder (seconds per run)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mae_transfer.classification import finetune, linprobe
from mae_transfer.pretrain.main import main as pretrain_main
from mae_transfer.tools.checkpoints import read_checkpoint
from mae_transfer.tools.synthetic_data import write_synthetic_images

pytestmark = pytest.mark.slow

COLORS = {"red": (200, 50, 50), "green": (50, 190, 60), "blue": (40, 60, 210)}
TINY = ["--model", "vit_mini_patch8", "--input_size", "32", "--device", "cpu",
        "--num_workers", "0", "--batch_size", "4", "--log_every", "2"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """``encoder.safetensors`` of a 2-step MAE pretraining run (``pretrain.main``)."""
    root = tmp_path_factory.mktemp("pretrain")
    images = write_synthetic_images(root / "images", count=8, size=(40, 40), seed=3)
    out = root / "run"
    assert pretrain_main(["--data_path", str(images), "--output_dir", str(out), "--model",
                          "mae_vit_mini_patch8", "--input_size", "32", "--device", "cpu",
                          "--num_workers", "0", "--batch_size", "4", "--epochs", "1",
                          "--vis_every", "0", "--blr", "1e-3"]) == 0
    return out / "encoder.safetensors"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``train/`` 8 and ``val/`` 3 noisy images of each of three colours."""
    root = tmp_path_factory.mktemp("cls")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for name, color in COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.array(color)[None, None] + rng.integers(-40, 40, (32, 36, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                    root / split / name / f"{i}.png")
    return root


def run(module, data, out, *extra):
    return module.main(["--data_path", str(data), "--output_dir", str(out), *TINY,
                        *map(str, extra)])


def results(path):
    return json.loads(path.read_text())


def model_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_finetune_runs_evaluates_reproducibly_and_resumes_exactly(encoder, data, tmp_path):
    straight = tmp_path / "straight"
    args = ("--finetune", encoder, "--epochs", 2, "--warmup_epochs", 1, "--save_every", 1,
            "--mixup", 0.8, "--cutmix", 1.0, "--blr", 5e-3)
    assert run(finetune, data, straight, *args) == 0
    res = results(straight / "results.json")
    assert (res["recipe"], res["epoch"], res["n_val"], res["nb_classes"]) == ("finetune", 2, 9, 3)
    assert 0 <= res["acc1"] <= res["acc5"] == 100.0  # 3 classes: top-5 holds every label
    epochs = [json.loads(line) for line in (straight / "log.txt").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and epochs[1]["test_acc1"] == res["acc1"]
    log = (straight / "train.log").read_text()
    assert f"loaded {encoder}" in log and "SoftTargetCrossEntropy" in log
    assert "missing keys ['fc_norm.weight', 'fc_norm.bias']" in log

    # --eval --resume reproduces the logged accuracy and loss exactly
    assert run(finetune, data, tmp_path / "eval", "--eval", "--resume",
               straight / "checkpoint-last.pth") == 0
    again = results(tmp_path / "eval" / "eval.json")
    assert (again["acc1"], again["acc5"], again["loss"]) == (res["acc1"], res["acc5"],
                                                               res["loss"])

    # resuming after epoch 1 ends where the straight run ended, bit for bit
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint-0001.pth").write_bytes((straight / "checkpoint-0001.pth").read_bytes())
    assert run(finetune, data, resumed, *args, "--resume", resumed / "checkpoint-0001.pth") == 0
    a, b = model_of(straight / "checkpoint-last.pth"), model_of(resumed / "checkpoint-last.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert results(resumed / "results.json")["acc1"] == res["acc1"]


def test_linprobe_trains_only_the_head_and_evaluates_reproducibly(encoder, data, tmp_path):
    out = tmp_path / "probe"
    assert run(linprobe, data, out, "--finetune", encoder, "--epochs", 2, "--warmup_epochs", 1,
               "--blr", 1.0, "--save_every", 1) == 0
    res = results(out / "results.json")
    assert res["recipe"] == "linprobe" and res["epoch"] == 2
    state = model_of(out / "checkpoint-last.pth")
    pretrained, _ = read_checkpoint(encoder)
    assert all(torch.equal(state[k], v) for k, v in pretrained.items())  # encoder frozen
    assert {"head.0.running_mean", "head.1.weight"} <= state.keys()
    assert "fc_norm.weight" not in state  # cls token probe
    assert state["head.0.num_batches_tracked"] == 2 * 6  # BN ran on every training step
    first = model_of(out / "checkpoint-0001.pth")
    assert not torch.equal(first["head.1.weight"], state["head.1.weight"])  # the head trains
    log = (out / "train.log").read_text()
    assert "training head.1.weight, head.1.bias" in log
    assert run(linprobe, data, tmp_path / "eval", "--eval", "--resume",
               out / "checkpoint-0002.pth") == 0
    again = results(tmp_path / "eval" / "eval.json")
    assert (again["acc1"], again["acc5"], again["loss"]) == (res["acc1"], res["acc5"],
                                                               res["loss"])


@pytest.mark.parametrize("fault, expected", [
    ("nb_classes", "--nb_classes 4 but"),
    ("no_val", "has no val/ folder"),
    ("other_size", "--model vit_mini_patch16 has"),
    ("eval_other_model", "does not fit --model vit_mini_patch8 with 3 classes (cls token)"),
])
def test_bad_input_stops_with_one_line(encoder, data, tmp_path, capsys, fault, expected):
    args = ["--finetune", encoder, "--epochs", 1]
    root = data
    if fault == "nb_classes":
        args += ["--nb_classes", 4]
    elif fault == "no_val":
        root = tmp_path / "only_train"
        (root / "train").mkdir(parents=True)
        (root / "train" / "red").symlink_to(data / "train" / "red")
    elif fault == "other_size":
        args += ["--model", "vit_mini_patch16"]
    else:  # a fine-tuned (global pool) checkpoint evaluated as a cls-token probe
        args = ["--eval", "--resume", tmp_path / "ft.pth"]
        from mae_transfer.classification.head import build_classifier

        torch.save({"model": build_classifier("vit_mini_patch8", 3, 32).state_dict()},
                   tmp_path / "ft.pth")
    module = linprobe if fault == "eval_other_model" else finetune
    assert run(module, root, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err
    assert not (tmp_path / "out" / "checkpoint-last.pth").exists()


def test_two_processes_with_dist_eval_match_one_process(repo_root, encoder, data, tmp_path):
    """torchrun, 2 CPU processes (gloo, DDP): the probe trains; each process evaluates half of
    val (--dist_eval) and the summed counts equal a one-process evaluation of the same
    checkpoint."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo_root))
    cmd = [sys.executable, "-m", "mae_transfer.tools.torchrun", "--nproc_per_node", "2",
           "--master_port", "29731", str(repo_root / "tools" / "linprobe.py"),
           "--data_path", str(data), "--output_dir", str(out), *TINY, "--batch_size", "2",
           "--finetune", str(encoder), "--epochs", "1", "--warmup_epochs", "0", "--dist_eval"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    res = results(out / "results.json")
    assert res["n_val"] == 9
    assert "total batch 4" in (out / "train.log").read_text()  # 2 per process x 2 processes
    assert run(linprobe, data, tmp_path / "eval", "--eval", "--resume",
               out / "checkpoint-last.pth", "--batch_size", 2) == 0
    one = results(tmp_path / "eval" / "eval.json")
    assert (one["acc1"], one["acc5"], one["n_val"]) == (res["acc1"], res["acc5"], 9)
    assert one["loss"] == pytest.approx(res["loss"], rel=1e-6)
