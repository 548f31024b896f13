"""End to end through the entry points: train with pretrained weights, resume, evaluate, demo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"


def run(repo_root, script, *args, timeout=300):
    # One thread: the tiny model gains nothing from two, and two spin badly on a shared machine.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(repo_root / "tools" / script), *map(str, args)],
                          cwd=repo_root, capture_output=True, text=True, timeout=timeout, env=env)
    return proc


def log_text(work_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(work_dir.glob("*/*.log")))


@pytest.fixture(scope="module")
def trained(repo_root, ade_root, mae_checkpoint, tmp_path_factory):
    """20 iterations of the tiny config from an MAE-style pretraining file (val + ckpt at 20)."""
    work = tmp_path_factory.mktemp("seg_run")
    proc = run(repo_root, "train_seg.py", TINY, "--work-dir", work, "--data-root", ade_root,
               "--pretrained", mae_checkpoint,
               "--cfg-options", "train_cfg.max_iters=20", "train_cfg.val_interval=20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


@pytest.mark.slow
def test_training_writes_checkpoint_metrics_table_and_json(trained):
    work, proc = trained
    assert (work / "iter_20.pth").is_file()
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_20.pth")
    record = json.loads((work / "val_results" / "iter_20.json").read_text())
    assert record["iter"] == 20
    assert set(record["metrics"]) == {"aAcc", "mIoU", "mAcc"}
    assert record["classes"] == ["disc", "square", "triangle"]
    ious = [record["per_class"][c]["IoU"] for c in record["classes"]]
    assert all(v is None or 0 <= v <= 100 for v in ious)
    present = [v for v in ious if v is not None]
    assert record["metrics"]["mIoU"] == pytest.approx(sum(present) / len(present), abs=0.02)
    log = log_text(work)
    assert "per class results" in log and "| triangle |" in log
    assert "MAEViT: loaded pretrained weights" in log and "missing keys: none" in log
    assert "final validation (iter 20)" in proc.stdout


@pytest.mark.slow
def test_pretrained_weights_are_the_starting_point(trained, mae_checkpoint):
    """Blocks trained 20 steps at a decayed lr stay close to the pretrained ones, not random."""
    work, _ = trained
    state = torch.load(work / "iter_20.pth", map_location="cpu", weights_only=False)["state_dict"]
    pre = torch.load(mae_checkpoint, weights_only=True)["model"]
    w, w0 = state["backbone.blocks.0.attn.qkv.weight"], pre["blocks.0.attn.qkv.weight"]
    assert (w - w0).abs().max() < 0.05 * w0.abs().max()


@pytest.mark.slow
def test_the_runs_iter_checkpoint_is_read_as_pretrained_weights(repo_root, trained, tmp_path):
    """Our own iter_N.pth (MMEngine objects inside) through the one reader, weights_only=True."""
    from mae_transfer.backbones.checkpoint_reader import read_weights

    work, _ = trained
    state = torch.load(work / "iter_20.pth", map_location="cpu", weights_only=False)["state_dict"]
    weights = read_weights(work / "iter_20.pth")
    assert weights.report.layout == "MMEngine checkpoint: MMSeg MAEViT (backbone.*)"
    assert weights.meta["dataset_meta"]["classes"] == ("disc", "square", "triangle")
    assert torch.equal(weights.state["blocks.0.attn.qkv.weight"],
                       state["backbone.blocks.0.attn.qkv.weight"])
    proc = run(repo_root, "convert_checkpoint.py", work / "iter_20.pth",
               tmp_path / "vit.safetensors")
    assert proc.returncode == 0 and "MMEngine checkpoint" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_resume_continues_from_the_last_iteration(repo_root, trained, ade_root, tmp_path):
    work, _ = trained
    # On resume every weight comes from the run's checkpoint: the pretraining file is not read.
    unreadable = tmp_path / "moved.pth"
    unreadable.write_bytes(b"no longer a checkpoint")
    proc = run(repo_root, "train_seg.py", TINY, "--work-dir", work, "--data-root", ade_root,
               "--pretrained", unreadable, "--resume", "--cfg-options", "train_cfg.max_iters=30", "train_cfg.val_interval=10",
               "default_hooks.checkpoint.interval=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = log_text(work)
    assert "resumed epoch: 0, iter: 20" in log
    assert "Iter(train) [25/30]" in log and "Iter(train) [ 5/30]" not in log
    ckpt = torch.load(work / "iter_30.pth", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["iter"] == 30
    assert json.loads((work / "val_results" / "latest.json").read_text())["iter"] == 30
    assert "final validation (iter 30)" in proc.stdout


@pytest.mark.slow
def test_eval_only_reproduces_the_validation_metrics(repo_root, trained, ade_root, tmp_path):
    work, _ = trained
    out = tmp_path / "test.json"
    proc = run(repo_root, "test_seg.py", TINY, work / "iter_20.pth", "--data-root", ade_root,
               "--work-dir", tmp_path / "eval", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    val = json.loads((work / "val_results" / "iter_20.json").read_text())
    test = json.loads(out.read_text())
    assert test["metrics"] == val["metrics"] and test["per_class"] == val["per_class"]
    assert test["checkpoint"] == str(work / "iter_20.pth")
    assert "test: aAcc" in proc.stdout


@pytest.mark.slow
def test_demo_writes_overlays_and_label_maps(repo_root, trained, ade_root, tmp_path):
    work, _ = trained
    images = sorted((ade_root / "images" / "validation").glob("*.jpg"))[:2]
    proc = run(repo_root, "demo_seg.py", TINY, work / "iter_20.pth", *images, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for img in images:
        src = np.array(Image.open(img))
        over = np.array(Image.open(tmp_path / f"{img.stem}.png"))
        labels = np.array(Image.open(tmp_path / f"{img.stem}_labels.png"))
        assert over.shape == src.shape and labels.shape == src.shape[:2]
        assert set(np.unique(labels)) <= {1, 2, 3}
        assert not np.array_equal(over, src)
    assert proc.stdout.count("->") == 2


def test_bad_inputs_are_one_line_errors(repo_root, tmp_path, capsys):
    sys.path.insert(0, str(repo_root))
    from mae_transfer.tools.train_seg import main

    assert main([TINY, "--data-root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]
    assert main([TINY, "--eval-only", "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err
    assert main([TINY, "--pretrained", str(tmp_path / "absent.pth")]) == 2
    assert "absent.pth" in capsys.readouterr().err


@pytest.mark.slow
def test_unreadable_pretrained_file_is_one_line_error(repo_root, ade_root, tmp_path, capsys):
    sys.path.insert(0, str(repo_root))
    from mae_transfer.tools.train_seg import main

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main([TINY, "--data-root", str(ade_root), "--work-dir", str(tmp_path / "w"),
                 "--pretrained", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pth" in err[0] and err[0].startswith("error: ")


@pytest.fixture
def ade_without_classes_txt(ade_root, tmp_path):
    """The shapes set as a plain ADE20K-layout folder: no classes.txt, so ADE20K's 150 classes."""
    import shutil

    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ade_root, root, ignore=shutil.ignore_patterns("classes.txt"))
    return root


def test_heads_with_fewer_classes_than_the_data_stop_before_the_run(
        repo_root, ade_without_classes_txt, tmp_path, capsys):
    """3-class heads on ADE20K's 150 classes: one line naming the override, in train and eval
    modes, before the Runner starts (before: a run that crashes in the loss, ``IndexError: Target
    4 is out of bounds``, on the first label past the heads, or, as here, where the labels stay
    below 3, trains and evaluates over 150 classes without a word)."""
    sys.path.insert(0, str(repo_root))
    from mae_transfer.tools.train_seg import main

    root = ade_without_classes_txt
    for extra in ([], ["--eval-only", "--checkpoint", str(tmp_path / "iter_20.pth")]):
        with warnings.catch_warnings():  # library deprecation notes are not the error line
            warnings.simplefilter("ignore")
            assert main([TINY, "--data-root", str(root), "--work-dir", str(tmp_path / "w"),
                         *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert f"the data at {root} has 150 classes (ADE20K's" in err[0]
        assert "UPerHead predicts 3" in err[0]
        assert ("--cfg-options model.decode_head.num_classes=150 "
                "model.auxiliary_head.num_classes=150") in err[0]
        assert f"{root}/classes.txt" in err[0]
    assert not (tmp_path / "w").exists()  # stopped before the Runner made its work dir


def test_the_named_override_or_a_classes_txt_is_accepted(repo_root, ade_without_classes_txt):
    from mae_transfer.segmentation.entry import load_config
    from mae_transfer.tools.train_seg import parse_args

    root = str(ade_without_classes_txt)
    cfg = load_config(parse_args([TINY, "--data-root", root, "--cfg-options",
                                  "model.decode_head.num_classes=150",
                                  "model.auxiliary_head.num_classes=150"]))
    assert cfg.model.decode_head.num_classes == 150
    (ade_without_classes_txt / "classes.txt").write_text("disc\nsquare\ntriangle\n")
    assert load_config(parse_args([TINY, "--data-root", root])).model.decode_head.num_classes == 3


def _tiny_checkpoint(tiny_cfg, path, num_classes, classes=None):
    """An MMEngine-style checkpoint of the tiny segmentor with ``num_classes`` outputs."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    model_cfg = tiny_cfg.model.copy()
    model_cfg.decode_head.num_classes = num_classes
    model_cfg.auxiliary_head.num_classes = num_classes
    torch.manual_seed(0)
    state = MODELS.build(model_cfg).state_dict()
    meta = {"dataset_meta": {"classes": tuple(classes)}} if classes else {}
    torch.save({"state_dict": state, "meta": meta}, path)
    return path


def test_demo_takes_the_class_count_from_the_checkpoint(repo_root, tiny_cfg, ade_root, tmp_path,
                                                        capsys):
    sys.path.insert(0, str(repo_root))
    from mmseg.datasets import ADE20KDataset
    from mae_transfer.tools.demo_seg import main

    image = sorted((ade_root / "images" / "validation").glob("*.jpg"))[0]
    # dataset_meta that disagrees with the weights: one line, not a failed strict load
    ade = ADE20KDataset.METAINFO["classes"]
    bad = _tiny_checkpoint(tiny_cfg, tmp_path / "bad.pth", 3, classes=ade)
    capsys.readouterr()  # what building the model printed
    with warnings.catch_warnings():  # library deprecation notes are not the error line
        warnings.simplefilter("ignore")
        assert main([TINY, str(bad), str(image), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lists 150 classes" in err[0] and "predicts 3" in err[0]
    # no class list: the count comes from the weights (5), not from the config (3)
    five = _tiny_checkpoint(tiny_cfg, tmp_path / "five.pth", 5)
    assert main([TINY, str(five), str(image), "--out", str(tmp_path / "o2")]) == 0
    labels = np.array(Image.open(tmp_path / "o2" / f"{image.stem}_labels.png"))
    assert labels.min() >= 1 and labels.max() <= 5
