"""ViT-H Mask R-CNN (ViTDet recipe) on LVIS v1: ``mask_rcnn_vitdet_h_coco.py`` (32 blocks with
16x16 patches, global attention in 7, 15, 23, 31, layer decay 0.9, ViTDet's H weight-decay
policy, activation checkpointing) with ViTDet's LVIS edits. Where ViTDet's LVIS H differs from
its COCO H: drop path 0.4 (COCO 0.5) and 100 epochs, 156250 iterations with a 250-iteration
warm-up (COCO: 75 epochs); unlike LVIS B / L, the lr stays 1e-4.

ViTDet's numbers with an MAE ViT-H (``LVIS/mask_rcnn_vitdet_h_100ep``): 49.1 box AP / 46.0 mask AP.

    python tools/train_det.py --config detection/configs/mask_rcnn_vitdet_h_lvis.py --num-gpus 8 \
        train.init_checkpoint=/path/to/mae_vit_huge.safetensors
"""
from .common.lvis_loader import dataloader
from .common.lvis_recipe import LVIS_EVAL_PERIOD, LVIS_MAX_ITER, lvis_roi_heads, lvis_schedule
from .mask_rcnn_vitdet_h_coco import model, optimizer, train

lvis_roi_heads(model)
model.backbone.net.drop_path_rate = 0.4
optimizer.lr = 1e-4
train.max_iter = LVIS_MAX_ITER
lr_multiplier = lvis_schedule(train.max_iter)
train.eval_period = LVIS_EVAL_PERIOD
train.output_dir = "./output/mask_rcnn_vitdet_h_lvis"
