"""Multi-scale + flip test-time augmentation (``segmentation/tta.py``, ``--tta``).

The merged logits against the mean softmax of every ratio and flip computed by hand with the
segmentor; the 0.x resize rule; the configs' settings; ``--tta`` end to end on a model trained a
few iterations (its mIoU differs from single-scale), in one process and in two.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, the TTA parts)

TINY = "segmentation/configs/upernet_vit-mini_1xb4-40it_shapes-64x64.py"
CONFIGS = "segmentation/configs/"
RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the tiny model gains nothing from two, and two spin badly on a shared
    machine (the subprocess runs get OMP_NUM_THREADS=1 for the same reason)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grids(size: int, crop: int, stride: int) -> int:
    """Slide windows along one side (MMSeg's ``slide_inference`` rule)."""
    return max(size - crop + stride - 1, 0) // stride + 1


# --- the resize rule ------------------------------------------------------------------------

@pytest.mark.parametrize("h, w", [(512, 683), (700, 400), (300, 1500)])
def test_resize_to_ratio_is_mmseg_0x_resize_with_min_size(h, w):
    """Short side max(int(512 r), 512), long side by the aspect ratio (0.x ``min_size`` rule)."""
    from mae_transfer.segmentation.tta import ResizeToRatio

    img = np.zeros((h, w, 3), np.uint8)
    short, long_ = min(h, w), max(h, w)
    for r in RATIOS:
        out = ResizeToRatio(scale=(2048, 512), ratio=r, min_short=512).transform(dict(img=img))
        new_short = max(int(512 * r), 512)
        new_long = int(long_ * new_short / short + 0.5)
        expected = (new_short, new_long) if h <= w else (new_long, new_short)
        assert out["img_shape"] == expected == out["img"].shape[:2], (h, w, r)
        assert out["keep_ratio"] is True


def test_resize_to_ratio_without_minimum_fits_the_scaled_box():
    """Without ``min_short``: 0.x's plain keep-ratio resize into (int(2048 r), int(512 r))."""
    from mae_transfer.segmentation.tta import ResizeToRatio

    img = np.zeros((512, 683, 3), np.uint8)
    out = ResizeToRatio(scale=(2048, 512), ratio=0.5).transform(dict(img=img))
    assert out["img_shape"] == (256, 342)  # 683 * 0.5 + 0.5 -> 342
    wide = np.zeros((100, 1000, 3), np.uint8)  # the long side binds: 2048 * 0.5 = 1024 px
    assert ResizeToRatio(scale=(2048, 512), ratio=0.5).transform(dict(img=wide))["img_shape"] \
        == (102, 1024)


# --- the configs ----------------------------------------------------------------------------

def test_configs_carry_the_mae_multiscale_recipe(repo_root):
    from mmengine.config import Config

    from mae_transfer.segmentation.tta import describe_tta

    expected_base = {"ratios": RATIOS, "flip": True, "predictions": 12,
                     "model": "AveragedSegTTAModel"}
    for name, scale, min_short in [
            ("upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py", [2048, 512], 512),
            ("upernet_mae-vit-l_8xb2-160k_ade20k-512x512.py", [2048, 512], 512),
            ("upernet_vit-mini_1xb4-40it_shapes-64x64.py", [128, 128], 64),
            ("upernet_vit-mini_e2e_paste-128x128.py", [160, 160], 128)]:
        cfg = Config.fromfile(str(repo_root / CONFIGS / name))
        assert describe_tta(cfg) == dict(expected_base, scale=scale, min_short=min_short), name
        assert cfg.tta is False, name  # single-scale unless --tta / tta=True
        # every slide window stays a full crop: the minimum short side is the crop
        assert min_short == cfg.model.test_cfg.crop_size[0] == cfg.model.test_cfg.crop_size[1]
        # the single-scale test resizes to the same base scale as ratio 1.0
        resize = next(s for s in cfg.test_dataloader.dataset.pipeline if s["type"] == "Resize")
        assert sorted(resize["scale"]) == sorted(scale), name


def test_tta_config_switch_checks_nested_loaders_and_keeps_validation(repo_root, ade_root):
    from mae_transfer.segmentation.entry import load_config
    from mae_transfer.tools.train_seg import parse_args

    cfg = load_config(parse_args([str(repo_root / TINY), "--data-root", str(ade_root),
                                  "--eval-only", "--checkpoint", "unused.pth",
                                  "--cfg-options", "tta=True"]))
    test_steps = cfg.test_dataloader.dataset.pipeline
    aug = next(s for s in test_steps if s["type"] == "TestTimeAug")
    loaders = [s for stage in aug["transforms"] for s in stage if "Load" in s["type"]]
    assert [s["type"] for s in loaders] == ["CheckedLoadAnnotations"]
    assert loaders[0]["num_classes"] == 3  # label values checked as in single-scale runs
    assert test_steps[0]["type"] == "CheckedLoadImageFromFile"
    assert not any(s["type"] == "TestTimeAug" for s in cfg.val_dataloader.dataset.pipeline)


def test_tta_outside_an_evaluation_or_without_tta_keys_is_one_line(repo_root, ade_root,
                                                                    tmp_path, capsys):
    from mae_transfer.tools.train_seg import main

    work = tmp_path / "w"
    assert main([TINY, "--tta", "--data-root", str(ade_root), "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eval-only" in err[0], err
    assert not work.exists()  # refused before the run claimed anything
    assert main([TINY, "--cfg-options", "tta=True", "--data-root", str(ade_root),
                 "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eval-only" in err[0], err

    bare = tmp_path / "no_tta.py"
    bare.write_text(f"_base_ = ['{repo_root / TINY}']\ntta_pipeline = None\n")
    assert main([str(bare), "--eval-only", "--tta", "--checkpoint", str(tmp_path / "x.pth"),
                 "--data-root", str(ade_root), "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tta_pipeline" in err[0] and "no_tta.py" in err[0], err


# --- the merged logits by hand --------------------------------------------------------------

@pytest.fixture
def one_image(tmp_path):
    """A 96 x 120 photo-like image (shapes on a gradient) and its label map, as PNG files."""
    h, w = 96, 120
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w)[None, :]
    img[..., 1] = np.linspace(255, 0, h)[:, None]
    cv2.circle(img, (35, 40), 22, (20, 200, 240), -1)
    cv2.rectangle(img, (70, 30), (110, 80), (230, 40, 90), -1)
    label = np.ones((h, w), np.uint8)
    label[img[..., 2] == 90] = 2
    paths = tmp_path / "img.png", tmp_path / "label.png"
    cv2.imwrite(str(paths[0]), img)
    cv2.imwrite(str(paths[1]), label)
    return paths


def by_hand(model, image_path, scale, min_short):
    """Mean softmax over ratios x flips: resize, flip, slide inference, flip back, resize back."""
    from mmseg.structures import SegDataSample

    img = cv2.imread(str(image_path))  # BGR, as LoadImageFromFile reads it
    h, w = img.shape[:2]
    total, count = 0, 0
    for r in RATIOS:
        short = max(int(scale * r), min_short)
        new_h, new_w = (short, int(w * short / h + 0.5)) if h <= w else \
            (int(h * short / w + 0.5), short)
        resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        for flip in (False, True):
            pixels = resized[:, ::-1] if flip else resized
            tensor = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
            meta = dict(ori_shape=(h, w), img_shape=(new_h, new_w), pad_shape=(new_h, new_w))
            data = model.data_preprocessor(
                dict(inputs=[tensor], data_samples=[SegDataSample(metainfo=meta)]), False)
            with torch.no_grad():
                logits = model.inference(data["inputs"], [dict(meta)])  # 1 x C x new_h x new_w
            if flip:
                logits = logits.flip(dims=(3,))
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            total = total + logits.softmax(dim=1)[0]
            count += 1
    return total / count, count


def test_tta_logits_are_the_mean_softmax_of_each_ratio_and_flip(tiny_cfg, one_image):
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.models.segmentors import SegTTAModel
    from mmseg.registry import MODELS

    from mae_transfer.segmentation.tta import AveragedSegTTAModel

    init_default_scope("mmseg")
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(tiny_cfg.model)).eval()
    with torch.no_grad():  # sharper logits: averaging probabilities differs from averaging logits
        model.decode_head.conv_seg.weight.mul_(30)
    tta = AveragedSegTTAModel(module=model).eval()

    data = Compose(tiny_cfg.tta_pipeline)(dict(img_path=str(one_image[0]),
                                               seg_map_path=str(one_image[1]),
                                               reduce_zero_label=True, seg_fields=[]))
    crops, merged_inputs = [], []
    forward = model.backbone.forward
    model.backbone.forward = lambda x: crops.append(tuple(x.shape[-2:])) or forward(x)
    merge = tta.merge_preds
    tta.merge_preds = lambda lists: merged_inputs.append(lists) or merge(lists)
    with torch.no_grad():
        [out] = tta.test_step(pseudo_collate([data]))
    model.backbone.forward = forward

    expected, count = by_hand(model, one_image[0], scale=128, min_short=64)
    assert count == 12 and out.tta_predictions == 12
    assert out.seg_logits.data.shape == expected.shape == (3, 96, 120)
    torch.testing.assert_close(out.seg_logits.data, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.pred_sem_seg.data, expected.argmax(dim=0, keepdim=True))
    assert len(out.pred_sem_seg.data.unique()) > 1  # a non-trivial map, not one class
    # the merged map is not any single augmentation's (nor the mean of the logits)
    single = merged_inputs[0][0][4].seg_logits.data.softmax(dim=0)  # ratio 1.0, no flip
    assert not torch.allclose(single, expected, atol=1e-3)
    # ground truth at the original size; the image's metainfo, not the last augmentation's
    assert out.gt_sem_seg.data.shape == (1, 96, 120)
    assert out.ori_shape == (96, 120) and "flip" not in out.metainfo
    # MMSeg's SegTTAModel predicts the same labels from the same augmentations
    [reference] = SegTTAModel.merge_preds(tta, merged_inputs[0])
    assert torch.equal(reference.pred_sem_seg.data.squeeze(), out.pred_sem_seg.data.squeeze())
    # every scale went through slide inference in full 64 x 64 windows (short side >= the crop)
    expected_windows = 0
    for r in RATIOS:
        short = max(int(128 * r), 64)
        expected_windows += 2 * grids(short, 64, 48) * grids(int(120 * short / 96 + 0.5), 64, 48)
    assert len(crops) == expected_windows and set(crops) == {(64, 64)}


# --- end to end -----------------------------------------------------------------------------

def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


@pytest.fixture(scope="module")
def evaluations(repo_root, ade_root, tmp_path_factory):
    """The tiny config trained 20 iterations, then evaluated single-scale and with ``--tta``."""
    from mae_transfer.tools.test_seg import main as test_main
    from mae_transfer.tools.train_seg import main

    root = tmp_path_factory.mktemp("tta_e2e")
    assert main([TINY, "--work-dir", str(root / "train"), "--data-root", str(ade_root),
                 "--cfg-options", "train_cfg.max_iters=20", "train_cfg.val_interval=1000",
                 "default_hooks.checkpoint.interval=20"]) == 0
    ckpt = root / "train" / "iter_20.pth"
    assert main([TINY, "--eval-only", "--checkpoint", str(ckpt), "--data-root", str(ade_root),
                 "--work-dir", str(root / "single")]) == 0
    assert test_main([TINY, str(ckpt), "--tta", "--data-root", str(ade_root),
                      "--work-dir", str(root / "tta")]) == 0
    read = lambda name: json.loads((root / name / "test_results.json").read_text())  # noqa
    return dict(root=root, checkpoint=ckpt, single=read("single"), tta=read("tta"))


@pytest.mark.slow
def test_tta_evaluation_end_to_end_differs_from_single_scale(evaluations):
    single, tta = evaluations["single"], evaluations["tta"]
    assert single["tta"] is None
    assert tta["tta"] == {"ratios": RATIOS, "flip": True, "scale": [128, 128], "min_short": 64,
                          "predictions": 12, "model": "AveragedSegTTAModel"}
    assert tta["checkpoint"] == single["checkpoint"] == str(evaluations["checkpoint"])
    m1, m2 = single["metrics"]["mIoU"], tta["metrics"]["mIoU"]
    assert 20 < m1 < 100 and 20 < m2 <= 100  # a model that has learnt something
    assert m1 != m2 and tta["per_class"] != single["per_class"]  # TTA changed the predictions


@pytest.mark.slow
def test_two_process_tta_evaluation_equals_one_process(repo_root, ade_root, evaluations):
    out = evaluations["root"] / "two.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(repo_root / "tools" / "test_seg.py"), TINY, str(evaluations["checkpoint"]), "--tta",
         "--launcher", "pytorch", "--data-root", str(ade_root),
         "--work-dir", str(evaluations["root"] / "two"), "--out", str(out)],
        cwd=repo_root, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = json.loads(out.read_text()), evaluations["tta"]
    assert two["metrics"] == one["metrics"] and two["per_class"] == one["per_class"]
    assert two["tta"] == one["tta"]
    assert "rank 1 of 2" in proc.stdout + proc.stderr
