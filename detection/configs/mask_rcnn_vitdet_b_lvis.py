"""ViT-B/16 Mask R-CNN (ViTDet recipe) on LVIS v1: ``mask_rcnn_vitdet_b_coco.py`` (same backbone,
heads, LSJ, optimizer and weight-decay policy) with ViTDet's LVIS edits (``common/lvis_recipe.py``):
1203 classes, sigmoid classifier with the federated loss, 300 detections per image at score 0.02,
LVIS data with repeat-factor sampling and the LVIS evaluator (``common/lvis_loader.py``), 100
LVIS epochs (156250 iterations) at lr 2e-4.

ViTDet's numbers with an MAE ViT-B (``LVIS/mask_rcnn_vitdet_b_100ep``): 40.2 box AP / 38.2 mask AP.

    python tools/train_det.py --config detection/configs/mask_rcnn_vitdet_b_lvis.py --num-gpus 8 \
        train.init_checkpoint=/path/to/mae_vit_base.safetensors
"""
from .common.lvis_loader import dataloader
from .common.lvis_recipe import (LVIS_EVAL_PERIOD, LVIS_LR, LVIS_MAX_ITER, lvis_roi_heads,
                                 lvis_schedule)
from .mask_rcnn_vitdet_b_coco import model, optimizer, train

lvis_roi_heads(model)
optimizer.lr = LVIS_LR
train.max_iter = LVIS_MAX_ITER
lr_multiplier = lvis_schedule(train.max_iter)
train.eval_period = LVIS_EVAL_PERIOD
train.output_dir = "./output/mask_rcnn_vitdet_b_lvis"
