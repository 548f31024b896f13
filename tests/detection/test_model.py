"""The ViT backbone inside Detectron2's GeneralizedRCNN: train and inference steps, optimizer."""
import math
from pathlib import Path

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.solver import LRMultiplier
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from mae_transfer.detection.training import AutocastTrainer, amp_dtype, build_optimizer

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "detection" / "configs" / "mask_rcnn_vit_mini_cpu.py"
EXPECTED_LOSSES = {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}


def tiny_cfg():
    return LazyConfig.load(str(TINY))


def batch(n=2, size=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]])
        polys = [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()]
        inst = Instances((size, size), gt_boxes=Boxes(boxes), gt_masks=PolygonMasks(polys),
                         gt_classes=torch.tensor([0, 2]))
        out.append({"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8,
                                           generator=g), "instances": inst})
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return instantiate(tiny_cfg().model)


def test_training_step_gives_the_mask_rcnn_losses_and_gradients_reach_the_vit(model):
    model.train()
    with EventStorage(0):
        losses = model(batch())
    assert set(losses) == EXPECTED_LOSSES
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    for name in ("backbone.net.blocks.0.attn.qkv.weight", "backbone.net.patch_embed.proj.weight",
                 "backbone.net.blocks.0.attn.rel_pos_h", "backbone.pyramid.levels.0.0.0.weight",
                 "roi_heads.mask_head.predictor.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_inference_step_returns_boxes_and_masks_at_the_requested_size(model):
    model.eval()
    inputs = [{"image": b["image"], "height": 256, "width": 200} for b in batch(1)]
    with torch.no_grad():
        out = model(inputs)[0]["instances"]
    assert out.image_size == (256, 200)
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(out.get_fields())
    assert len(out) <= 100 and out.pred_masks.shape[1:] == (256, 200)
    if len(out):
        assert out.pred_classes.max() < 3 and out.scores.min() >= 0.05


def test_layer_decay_groups_keep_their_ratios_through_detectron2s_lr_schedule(model):
    cfg = tiny_cfg()
    optimizer = build_optimizer(cfg, model)
    base, decay, depth = cfg.optimizer.lr, cfg.optimizer.params.layer_decay, 4
    by_layer = {g["layer_id"]: g for g in optimizer.param_groups}
    assert set(by_layer) == set(range(depth + 2))
    assert "backbone.net.patch_embed.proj.weight" in by_layer[0]["param_names"]
    assert "roi_heads.box_predictor.cls_score.weight" in by_layer[depth + 1]["param_names"]
    for lid, group in by_layer.items():
        assert math.isclose(group["lr"], base * decay ** (depth + 1 - lid))
    groups_wd = {n: g["weight_decay"] for g in optimizer.param_groups for n in g["param_names"]}
    # ViTDet's rule (wd_policy="vitdet"): only nn.LayerNorm parameters and pos_embed skip decay;
    # rel-pos tables, biases and the pyramid's channel LayerNorm are decayed.
    for name in ("backbone.net.pos_embed", "backbone.net.blocks.1.norm1.weight",
                 "backbone.net.blocks.1.norm2.bias"):
        assert groups_wd[name] == 0.0, name
    for name in ("backbone.net.blocks.1.attn.qkv.weight", "backbone.net.blocks.1.attn.qkv.bias",
                 "backbone.net.blocks.1.attn.rel_pos_h", "backbone.pyramid.levels.0.1.1.weight"):
        assert groups_wd[name] == 0.1, name

    max_iter = cfg.train.max_iter
    scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), max_iter)
    multiplier = instantiate(cfg.lr_multiplier)
    for it in range(max_iter):
        for group in optimizer.param_groups:  # every group: its own base lr x the schedule
            expected = base * group["lr_scale"] * multiplier(it / max_iter)
            assert math.isclose(group["lr"], expected, rel_tol=1e-6), (it, group["layer_id"])
        scheduler.step()
    assert multiplier(0.0) == pytest.approx(0.001) and multiplier(0.5) == 1.0
    assert multiplier(0.99) == pytest.approx(0.01)


def test_autocast_trainer_step_in_bfloat16_updates_the_weights(model):
    """The GPU mixed-precision code path, run here with CPU autocast."""
    cfg = tiny_cfg()
    assert amp_dtype(cfg) is None  # the tiny config trains in fp32
    cfg.train.amp.enabled, cfg.train.device = True, "cuda"
    assert amp_dtype(cfg) is torch.bfloat16
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = AutocastTrainer(model, iter([batch(1)] * 2), optimizer, amp_dtype=torch.bfloat16,
                              device_type="cpu")
    before = model.backbone.net.blocks[0].attn.qkv.weight.detach().clone()
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.iter = 0
        trainer.run_step()
    after = model.backbone.net.blocks[0].attn.qkv.weight
    assert after.dtype == torch.float32 and not torch.equal(before, after)
    assert math.isfinite(storage.history("total_loss").latest())


@pytest.mark.parametrize("size, arch, global_blocks, drop_path, decay, max_iter, warmup", [
    ("b", (768, 12), [2, 5, 8, 11], 0.1, 0.7, 184375, 250),
    ("l", (1024, 24), [5, 11, 17, 23], 0.4, 0.8, 184375, 250),
    ("h", (1280, 32), [7, 15, 23, 31], 0.5, 0.9, 138281, 250 * 138281 / 184375),
])
def test_coco_configs_express_the_vitdet_recipes(size, arch, global_blocks, drop_path, decay,
                                                  max_iter, warmup):
    cfg = LazyConfig.load(str(REPO / "detection" / "configs" / f"mask_rcnn_vitdet_{size}_coco.py"))
    with torch.device("meta"):  # the structure, without allocating hundreds of MB
        model = instantiate(cfg.model)
    net = model.backbone.net
    assert (net.embed_dim, net.depth, net.patch_size) == (*arch, (16, 16))
    assert [i for i, b in enumerate(net.blocks) if b.attn.window_size == 0] == global_blocks
    assert {b.attn.window_size for b in net.blocks} == {0, 14}
    assert all(b.attn.use_rel_pos for b in net.blocks) and net.cls_token is None
    assert net.blocks[-1].drop_path.drop_prob == pytest.approx(drop_path)
    assert model.backbone.padding_constraints == {"size_divisibility": 32, "square_size": 1024}
    assert [type(m).__name__ for m in model.roi_heads.box_head.children()][:4] == ["Conv2d"] * 4
    assert type(model.roi_heads.box_head.conv1.norm).__name__ == "LayerNorm2d"
    assert type(model.roi_heads.mask_head.mask_fcn1.norm).__name__ == "LayerNorm2d"
    assert cfg.optimizer.params.layer_decay == decay and cfg.optimizer.lr == 1e-4
    assert cfg.optimizer.weight_decay == 0.1 and list(cfg.optimizer.betas) == [0.9, 0.999]
    assert cfg.train.max_iter == max_iter and cfg.train.amp.enabled
    milestones = cfg.lr_multiplier.scheduler.milestones
    assert milestones == [round(max_iter * 8 / 9), round(max_iter * 26 / 27)]
    # ViTDet's own numbers (H: the 100-epoch ones x 3 // 4)
    assert milestones == {184375: [163889, 177546], 138281: [122916, 133159]}[max_iter]
    assert cfg.lr_multiplier.warmup_length * max_iter == pytest.approx(warmup)  # H: 187.5
    assert cfg.dataloader.train.total_batch_size == 64
    lsj = instantiate(cfg.dataloader.train.mapper.augmentations)
    assert [type(a).__name__ for a in lsj] == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert (lsj[1].min_scale, lsj[1].max_scale, lsj[2].crop_size) == (0.1, 2.0, (1024, 1024))
