"""tools/knn.py end to end on the CPU: an encoder our pretraining wrote, several checkpoints in one
call, results kept per checkpoint, one-line errors, and two processes equal to one."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torchvision import datasets

from mae_transfer.backbones import build_vit, load_pretrained
from mae_transfer.classification.data import eval_transform
from mae_transfer.classification.knn_eval import main
from mae_transfer.pretrain.main import main as pretrain_main
from mae_transfer.tools.make_cls_dataset import Settings, build
from mae_transfer.tools.synthetic_data import make_shapes_dataset, write_synthetic_images

TOOL = ["--model", "vit_mini_patch16", "--input_size", "64", "--device", "cpu",
        "--num_workers", "0", "--batch_size", "16"]


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory):
    """Shape crops at 64 px: 3 classes, about 20 train and 10 val images each."""
    tmp = tmp_path_factory.mktemp("cls")
    coco = make_shapes_dataset(tmp / "shapes", num_train=24, num_val=6, size=160,
                               layouts=("coco",))["coco"]
    build(tmp / "root", coco, Settings(per_class=30, min_size=24, size=64))
    return tmp / "root"


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    """Two epochs of 2 steps of MAE on generated images: checkpoint-0001/0002/last, encoder."""
    tmp = tmp_path_factory.mktemp("mae")
    images = write_synthetic_images(tmp / "imgs", count=16, size=(64, 64), seed=3)
    out = tmp / "run"
    assert pretrain_main(["--data_path", str(images), "--output_dir", str(out),
                          "--model", "mae_vit_mini_patch16", "--input_size", "64",
                          "--device", "cpu", "--num_workers", "0", "--batch_size", "8",
                          "--epochs", "2", "--warmup_epochs", "1", "--blr", "1e-2",
                          "--save_every", "1", "--vis_every", "0", "--log_every", "1"]) == 0
    return out


def results(out):
    return json.loads((out / "knn.json").read_text())["results"]


def direct_top1(encoder_file, root, k, T):
    """Top-1 % computed without the tool: torchvision ImageFolder, the cls token of
    forward_features, the whole similarity matrix, exp(sim / T) summed per class."""
    vit = build_vit("vit_mini_patch16", img_size=64)
    load_pretrained(vit, encoder_file, strict=True)
    vit.eval()

    def feats(split):
        ds = datasets.ImageFolder(str(root / split), transform=eval_transform(64))
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.no_grad():
            f = vit.forward_features(x)[:, 0]
        return f / f.norm(dim=1, keepdim=True), torch.tensor(ds.targets)

    (train, train_y), (val, val_y) = feats("train"), feats("val")
    sims = (val @ train.T).double()
    top, idx = sims.sort(dim=1, descending=True)
    correct = 0
    for q in range(len(val_y)):
        score = torch.zeros(3, dtype=torch.float64)
        for j in range(k):
            score[train_y[idx[q, j]]] += math.exp(top[q, j] / T)
        correct += int(score.argmax() == val_y[q])
    return 100.0 * correct / len(val_y)


@pytest.mark.slow
def test_checkpoints_of_a_pretraining_run(pretrain_run, cls_root, tmp_path, caplog):
    out = tmp_path / "knn"
    enc, last = pretrain_run / "encoder.safetensors", pretrain_run / "checkpoint-last.pth"
    first = pretrain_run / "checkpoint-0001.pth"
    args = ["--data_path", str(cls_root), "--output_dir", str(out), *TOOL, "--nb_knn", "5", "10"]
    assert main([*args, "--finetune", str(enc), str(last), str(first), "random"]) == 0
    res = results(out)
    assert len(res) == 4 and "random (seed 0)" in res
    by_file = {os.path.basename(v["checkpoint"]): v for v in res.values()}
    # the exported encoder and the training checkpoint hold the same weights: same numbers
    assert by_file["encoder.safetensors"]["knn"] == by_file["checkpoint-last.pth"]["knn"]
    entry = by_file["encoder.safetensors"]
    assert set(entry["knn"]) == {"5", "10"} and entry["top5_of"] == 3
    assert entry["num_val"] == sum(1 for _ in (cls_root / "val").rglob("*.jpg"))
    for k in (5, 10):
        assert entry["knn"][str(k)]["top1"] == pytest.approx(direct_top1(enc, cls_root, k, 0.07))
    assert (out / "knn.log").read_text().count("-NN top-1") == 8
    # the same command again: nothing is computed again, knn.json is not rewritten
    stamp = (out / "knn.json").stat().st_mtime_ns
    caplog.clear()
    assert main([*args, "--finetune", str(enc), "random"]) == 0
    assert (out / "knn.json").stat().st_mtime_ns == stamp
    assert caplog.text.count("not evaluated again") == 2
    # other settings (another temperature) are computed, and replace the stored entry
    assert main([*args, "--finetune", str(enc), "--temperature", "0.5"]) == 0
    assert results(out)[str(enc.resolve())]["settings"]["temperature"] == 0.5
    assert len(results(out)) == 4


def test_bad_inputs_stop_with_one_line(cls_root, tmp_path, capsys):
    base = ["--data_path", str(cls_root), "--output_dir", str(tmp_path / "o"), *TOOL]
    cases = [
        (["--finetune", str(tmp_path / "missing.pth")], "missing.pth: no such file"),
        (["--nb_knn", "20", "5000"], "--nb_knn 5000: k must lie in 1.."),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--data_path", str(tmp_path)], "has no train/ and no val/ folder"),
        (["--nb_classes", "7"], "--nb_classes 7 but"),
    ]
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"not a checkpoint")
    cases.append((["--finetune", str(bogus)], "bogus.pth"))
    tiny = tmp_path / "tiny.safetensors"  # a ViT of another width than --model
    from mae_transfer.tools.checkpoints import write_checkpoint
    write_checkpoint(build_vit("vit_tiny_patch16", img_size=64).state_dict(), tiny)
    cases.append((["--finetune", str(tiny)], "pass the --model it was trained as"))
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (extra, err)


@pytest.mark.slow
def test_two_processes_equal_one(repo_root, cls_root, tmp_path):
    """torchrun, 2 CPU processes (gloo): train features gathered, val shards scored apart and
    the hits summed; the same accuracies as one process (random init: same weights)."""
    common = ["--data_path", str(cls_root), *TOOL, "--nb_knn", "1", "5", "20",
              "--finetune", "random"]
    assert main([*common, "--output_dir", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo_root))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(repo_root / "tools" / "knn.py"), *common,
                          "--output_dir", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    a, b = results(tmp_path / "one"), results(tmp_path / "two")
    entry_a, entry_b = a["random (seed 0)"], b["random (seed 0)"]
    assert entry_b["processes"] == 2 and entry_a["processes"] == 1
    assert entry_a["knn"] == entry_b["knn"] and entry_a["num_val"] == entry_b["num_val"]
