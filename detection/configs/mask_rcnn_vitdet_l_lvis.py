"""ViT-L/16 Mask R-CNN (ViTDet recipe) on LVIS v1: ``mask_rcnn_vitdet_l_coco.py`` (24 blocks,
global attention in 5, 11, 17, 23, drop path 0.4, layer decay 0.8) with ViTDet's LVIS edits, as
``mask_rcnn_vitdet_b_lvis.py`` (lr 2e-4, 156250 iterations).

ViTDet's numbers with an MAE ViT-L (``LVIS/mask_rcnn_vitdet_l_100ep``): 46.1 box AP / 43.6 mask AP.

    python tools/train_det.py --config detection/configs/mask_rcnn_vitdet_l_lvis.py --num-gpus 8 \
        train.init_checkpoint=/path/to/mae_vit_large.safetensors
"""
from .common.lvis_loader import dataloader
from .common.lvis_recipe import (LVIS_EVAL_PERIOD, LVIS_LR, LVIS_MAX_ITER, lvis_roi_heads,
                                 lvis_schedule)
from .mask_rcnn_vitdet_l_coco import model, optimizer, train

lvis_roi_heads(model)
optimizer.lr = LVIS_LR
train.max_iter = LVIS_MAX_ITER
lr_multiplier = lvis_schedule(train.max_iter)
train.eval_period = LVIS_EVAL_PERIOD
train.output_dir = "./output/mask_rcnn_vitdet_l_lvis"
