"""ViT-H Mask R-CNN (ViTDet recipe) on COCO 2017: 32 blocks (global attention in 7, 15, 23, 31),
drop path 0.5, layer decay 0.9, 75 epochs; activation checkpointing to fit 1024 px in memory.

The MAE ViT-H has 14x14 patches; Detectron2's poolers need power-of-2 strides, so the detector
uses 16x16 patches (as ViTDet does): the patch-embedding kernel is resized when the checkpoint
is loaded.

    python tools/train_det.py --config detection/configs/mask_rcnn_vitdet_h_coco.py --num-gpus 8 \
        train.init_checkpoint=/path/to/mae_vit_huge.safetensors
"""
from .common.coco_lsj import dataloader
from .common.mask_rcnn_vitdet import model
from .common.recipe import coco_iterations, optimizer, step_schedule, train

model.backbone.net.name = "vit_huge_patch14"
model.backbone.net.patch_size = 16
model.backbone.net.drop_path_rate = 0.5
model.backbone.net.global_blocks = [7, 15, 23, 31]
model.backbone.net.grad_checkpointing = True
optimizer.params.layer_decay = 0.9
optimizer.params.wd_policy = "vitdet_h"  # ViTDet H: overrides={}, weight_decay_norm=None
train.max_iter = coco_iterations(75)
# ViTDet shortens the 100-epoch schedule to 3/4 and keeps its warm-up fraction (250 / 184375):
# 187.5 warm-up iterations.
lr_multiplier = step_schedule(train.max_iter,
                              warmup_iters=250 * train.max_iter / coco_iterations(100))
train.output_dir = "./output/mask_rcnn_vitdet_h_coco"
