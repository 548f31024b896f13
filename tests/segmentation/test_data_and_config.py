"""ADELayoutDataset (ADE20K layout, classes.txt) and the entry point's config adaptations."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import mae_transfer.segmentation.registration  # noqa: F401  (registers MAEViT, ...)
from mae_transfer.segmentation.datasets import ADELayoutDataset, read_class_names
from mae_transfer.segmentation.entry import adapt_to_device, set_data_root, sync_num_classes


def dataset(root, split="training", **kw):
    return ADELayoutDataset(data_root=str(root), data_prefix=dict(
        img_path=f"images/{split}", seg_map_path=f"annotations/{split}"), **kw)


def test_shapes_set_reads_its_classes_and_reduces_the_zero_label(ade_root):
    from mmseg.datasets.transforms import LoadAnnotations

    ds = dataset(ade_root)
    assert read_class_names(str(ade_root)) == ["disc", "square", "triangle"]
    assert ds.metainfo["classes"] == ("disc", "square", "triangle")
    assert len(ds.metainfo["palette"]) == 3
    assert len(ds) == 16 and len(dataset(ade_root, "validation")) == 4
    info = ds.get_data_info(0)
    raw = np.array(Image.open(info["seg_map_path"]))
    labels = LoadAnnotations()(dict(info))["gt_seg_map"]
    # ADE convention: 0 ("other") -> 255 (ignored), class k -> k - 1
    assert np.array_equal(labels == 255, raw == 0)
    assert np.array_equal(labels[raw > 0], raw[raw > 0].astype(np.int64) - 1)
    assert set(np.unique(labels)) <= {0, 1, 2, 255}


def test_without_classes_txt_it_is_ade20k(tmp_path, ade_root):
    from mmseg.datasets import ADE20KDataset

    root = tmp_path / "ADEChallengeData2016"
    shutil.copytree(ade_root, root, ignore=shutil.ignore_patterns("classes.txt"))
    ds = dataset(root)
    assert ds.metainfo["classes"] == ADE20KDataset.METAINFO["classes"]
    assert len(ds.metainfo["classes"]) == 150
    assert list(ds.metainfo["palette"]) == list(ADE20KDataset.METAINFO["palette"])


def test_layout_errors_name_the_folder_or_image(tmp_path, ade_root):
    with pytest.raises(FileNotFoundError, match="no image folder .*images/training"):
        dataset(tmp_path)
    root = tmp_path / "broken"
    shutil.copytree(ade_root, root)
    (root / "annotations" / "training" / "train_0003.png").unlink()
    with pytest.raises(FileNotFoundError, match="train_0003.jpg"):
        dataset(root)


def test_data_root_and_num_classes_follow_the_data(tiny_config_path, ade_root, tmp_path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(tiny_config_path))
    cfg.model.decode_head.num_classes = 150
    cfg.model.auxiliary_head.num_classes = 150
    set_data_root(cfg, str(ade_root))
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert cfg[key].dataset.data_root == str(ade_root)
    assert sync_num_classes(cfg) == ["disc", "square", "triangle"]
    assert cfg.model.decode_head.num_classes == 3 and cfg.model.auxiliary_head.num_classes == 3
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        set_data_root(cfg, str(tmp_path / "nowhere"))


def test_full_configs_and_device_switch(repo_root):
    from mmengine.config import Config

    b = Config.fromfile(str(repo_root / "segmentation/configs/"
                                        "upernet_mae-vit-b_8xb2-160k_ade20k-512x512.py"))
    large = Config.fromfile(str(repo_root / "segmentation/configs/"
                                            "upernet_mae-vit-l_8xb2-160k_ade20k-512x512.py"))
    assert b.model.backbone.out_indices == (3, 5, 7, 11) and b.model.neck is None
    assert large.model.backbone.out_indices == (7, 11, 15, 23)
    assert large.model.decode_head.in_channels == [1024] * 4
    assert b.train_cfg.max_iters == 160000 and b.train_dataloader.batch_size * 8 == 16
    assert b.optim_wrapper.optimizer.lr == 1e-4 and b.optim_wrapper.optimizer.weight_decay == 0.05
    assert b.optim_wrapper.paramwise_cfg.layer_decay_rate == 0.65
    assert b.model.test_cfg.mode == "slide" and b.train_pipeline[3].crop_size == (512, 512)
    assert [s.type for s in b.param_scheduler] == ["LinearLR", "PolyLR"]

    gpu = b.copy()
    adapt_to_device(gpu, cuda=True)
    assert gpu.optim_wrapper.type == "AmpOptimWrapper" and gpu.optim_wrapper.dtype == "bfloat16"
    adapt_to_device(b, cuda=False)
    assert b.optim_wrapper.type == "OptimWrapper" and "dtype" not in b.optim_wrapper
    b.launcher = "pytorch"  # gloo on a CPU (tests/segmentation/test_multiprocess.py)
    adapt_to_device(b, cuda=False)
    b.launcher = "slurm"
    with pytest.raises(ValueError, match="--launcher slurm needs GPUs"):
        adapt_to_device(b, cuda=False)
