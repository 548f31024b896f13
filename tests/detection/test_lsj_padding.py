"""LSJ as ViTDet: the crop never pads; the model zero-pads after normalisation (issue #10.2).

ViTDet's ``FixedSizeCrop(pad=False)`` leaves a scaled-down image at its own size; the detector
then pads the normalised batch with zeros to the square and keeps the real size, so proposals
are clipped to the image and training padding is test padding. A crop that pads the raw image
with grey 128 would hand the model a square "image" with grey borders instead.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.utils.events import EventStorage

from mae_transfer.detection.datasets import load_coco_instances

CONFIGS = Path(__file__).resolve().parents[2] / "detection" / "configs"


def _mapper_at_half_scale(cfg):
    """The config's train mapper with the jitter pinned to 0.5 (so the crop is never filled)."""
    cfg.dataloader.train.mapper.augmentations[1].update(min_scale=0.5, max_scale=0.5)
    return instantiate(cfg.dataloader.train.mapper)


def _records(shapes_dataset):
    root = shapes_dataset["coco"]
    return load_coco_instances(root / "annotations" / "instances_train.json",
                               root / "images" / "train")


@pytest.mark.parametrize("config, crop, scaled", [("mask_rcnn_vitdet_b_coco.py", 1024, 512),
                                                  ("mask_rcnn_vit_mini_cpu.py", 128, 64)])
def test_lsj_crop_keeps_a_small_image_at_its_own_size(shapes_dataset, config, crop, scaled):
    cfg = LazyConfig.load(str(CONFIGS / config))
    lsj = cfg.dataloader.train.mapper.augmentations
    assert lsj[2].crop_size == (crop, crop) and lsj[2].pad is False
    np.random.seed(0)
    mapped = _mapper_at_half_scale(cfg)(_records(shapes_dataset)[0])  # a 128x128 photo
    assert mapped["image"].shape == (3, scaled, scaled)
    assert mapped["instances"].image_size == (scaled, scaled)
    boxes = mapped["instances"].gt_boxes.tensor
    assert len(boxes) and boxes.min() >= 0 and boxes.max() <= scaled


def test_training_pads_with_zeros_after_normalisation_and_clips_proposals_to_the_image(
        shapes_dataset):
    cfg = LazyConfig.load(str(CONFIGS / "mask_rcnn_vit_mini_cpu.py"))
    np.random.seed(0)
    mapper = _mapper_at_half_scale(cfg)
    batch = [mapper(r) for r in _records(shapes_dataset)[:2]]
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    seen = []
    hook = model.proposal_generator.register_forward_hook(
        lambda m, args, out: seen.append((args[0], out[0])))
    try:
        with EventStorage(0):
            model(batch)
    finally:
        hook.remove()
    images, proposals = seen[0]
    assert images.tensor.shape == (2, 3, 128, 128) and images.image_sizes == [(64, 64)] * 2
    padding = images.tensor.clone()
    padding[:, :, :64, :64] = 0
    assert padding.abs().max() == 0  # zeros around the 64x64 images
    for per_image in proposals:
        assert len(per_image) > 0 and per_image.proposal_boxes.tensor.max() <= 64
