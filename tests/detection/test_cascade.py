"""Cascade Mask R-CNN as ViTDet's ``cascade_mask_rcnn_vitdet_{b,l,h}`` (issue #10.4), and every
shipped detection config's optimizer with its reference weight-decay policy (issue #10.3)."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.utils.events import EventStorage

from mae_transfer.detection.datasets import load_coco_instances
from mae_transfer.detection.training import build_optimizer

CONFIGS = Path(__file__).resolve().parents[2] / "detection" / "configs"
#: ViTDet's stages (projects/ViTDet/configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py).
STAGES = [(0.5, [10, 10, 5, 5]), (0.6, [20, 20, 10, 10]), (0.7, [30, 30, 15, 15])]
#: Shipped config -> (ViTDet's weight-decay policy, layer decay, ViT blocks).
OPTIMIZERS = {
    "mask_rcnn_vitdet_b_coco.py": ("vitdet", 0.7, 12),
    "mask_rcnn_vitdet_l_coco.py": ("vitdet", 0.8, 24),
    "mask_rcnn_vitdet_h_coco.py": ("vitdet_h", 0.9, 32),
    "cascade_mask_rcnn_vitdet_b_coco.py": ("vitdet", 0.7, 12),
    "cascade_mask_rcnn_vitdet_l_coco.py": ("vitdet", 0.8, 24),
    "cascade_mask_rcnn_vitdet_h_coco.py": ("vitdet_h", 0.9, 32),
    "mask_rcnn_vit_mini_cpu.py": ("vitdet", 0.7, 4),
    "cascade_mask_rcnn_vit_mini_cpu.py": ("vitdet", 0.7, 4),
}


def _load(name):
    return LazyConfig.load(str(CONFIGS / name))


def _on_meta(cfg):
    with torch.device("meta"):  # the structure, without allocating the weights
        return instantiate(cfg.model)


@pytest.mark.parametrize("size", ["b", "l", "h"])
def test_cascade_configs_are_vitdets_cascade_on_the_mask_rcnn_recipe(size):
    cfg = _load(f"cascade_mask_rcnn_vitdet_{size}_coco.py")
    mask_cfg = _load(f"mask_rcnn_vitdet_{size}_coco.py")
    model = _on_meta(cfg)
    heads = model.roi_heads
    assert isinstance(heads, CascadeROIHeads) and heads.num_cascade_stages == 3
    assert [(m.thresholds[1], m.allow_low_quality_matches) for m in heads.proposal_matchers] == \
        [(iou, False) for iou, _ in STAGES]
    assert heads.proposal_matcher.thresholds[1] == 0.5  # the RPN proposals' matcher: stage 1
    for head, predictor, (_, weights) in zip(heads.box_head, heads.box_predictor, STAGES):
        assert [c.out_channels for c in head.conv_norm_relus] == [256] * 4
        assert all(type(c.norm).__name__ == "LayerNorm2d" for c in head.conv_norm_relus)
        assert [fc.out_features for fc in head.fcs] == [1024]
        assert head.conv_norm_relus[0].in_channels == 256
        assert list(predictor.box2box_transform.weights) == weights
        assert predictor.bbox_pred.out_features == 4  # class-agnostic regression
        assert predictor.cls_score.out_features == 81 and predictor.test_score_thresh == 0.05
    assert len({id(h) for h in heads.box_head}) == 3  # three heads, not one shared
    assert type(heads.mask_head.mask_fcn1.norm).__name__ == "LayerNorm2d"
    # everything but the box branch is the Mask R-CNN recipe of the same size
    for key in ("backbone", "proposal_generator", "pixel_mean", "pixel_std"):
        assert cfg.model[key] == mask_cfg.model[key], key
    for key in ("mask_head", "mask_pooler", "box_pooler", "num_classes", "batch_size_per_image",
                "positive_fraction"):
        assert cfg.model.roi_heads[key] == mask_cfg.model.roi_heads[key], key
    for part in ("optimizer", "lr_multiplier", "dataloader"):
        assert cfg[part] == mask_cfg[part], part
    assert {k: v for k, v in cfg.train.items() if k != "output_dir"} == \
        {k: v for k, v in mask_cfg.train.items() if k != "output_dir"}


def _torch_norm_params(model):
    return {f"{m_name}.{p_name}" for m_name, m in model.named_modules()
            if isinstance(m, nn.LayerNorm) for p_name, _ in m.named_parameters(recurse=False)}


@pytest.mark.parametrize("config", sorted(OPTIMIZERS))
def test_each_detection_config_builds_its_optimizer_with_vitdets_policy(config):
    """ViTDet B/L: only ``nn.LayerNorm`` parameters and ``pos_embed`` skip weight decay; ViTDet
    H: nothing does. Checked on the config's own model, group by group."""
    policy, decay, depth = OPTIMIZERS[config]
    cfg = _load(config)
    assert cfg.optimizer.params.wd_policy == policy
    assert cfg.optimizer.params.layer_decay == decay
    model = _on_meta(cfg)
    optimizer = build_optimizer(cfg, model)
    exempt = set() if policy == "vitdet_h" else \
        _torch_norm_params(model) | {"backbone.net.pos_embed"}
    assert len(exempt) == (0 if policy == "vitdet_h" else 2 * (2 * depth) + 1)
    seen = set()
    for group in optimizer.param_groups:
        scale = decay ** (depth + 1 - group["layer_id"])
        assert math.isclose(group["lr"], cfg.optimizer.lr * scale)
        for name in group["param_names"]:
            expected = 0.0 if name in exempt else cfg.optimizer.weight_decay
            assert group["weight_decay"] == expected, name
            seen.add(name)
    assert seen == {n for n, _ in model.named_parameters()}
    # decayed under both policies: biases, rel-pos tables and Detectron2's "LN" in the heads
    names = {n for n in seen if n not in exempt}
    assert {"backbone.net.blocks.0.attn.qkv.bias", "backbone.net.blocks.0.attn.rel_pos_h",
            "backbone.pyramid.levels.0.1.1.weight"} <= names


def test_tiny_cascade_trains_and_predicts_through_three_stages(shapes_dataset):
    cfg = _load("cascade_mask_rcnn_vit_mini_cpu.py")
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    assert isinstance(model.roi_heads, CascadeROIHeads)
    root = shapes_dataset["coco"]
    records = load_coco_instances(root / "annotations" / "instances_train.json",
                                  root / "images" / "train")
    mapper = instantiate(cfg.dataloader.train.mapper)
    batch = [mapper(r) for r in records[:2]]
    model.train()
    with EventStorage(0):
        losses = model(batch)
    stages = {f"loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)}
    assert set(losses) == stages | {"loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for s in range(3):
        grad = model.roi_heads.box_predictor[s].bbox_pred.weight.grad
        assert grad is not None and grad.abs().sum() > 0, s
    model.eval()
    model.roi_heads.box_predictor[-1].test_score_thresh = 0.0
    test = instantiate(cfg.dataloader.test.mapper)(records[0])
    with torch.no_grad():
        out = model([test])[0]["instances"]
    assert len(out) > 0 and out.pred_masks.shape[-2:] == (records[0]["height"],
                                                           records[0]["width"])
