"""ViT-L Cascade Mask R-CNN (ViTDet recipe) on LVIS v1: ``mask_rcnn_vitdet_l_lvis.py`` (same
backbone, data, schedule, optimizer) with ViTDet's three cascade stages (``common/cascade.py``),
each stage's class-agnostic predictor the LVIS one (sigmoid + federated loss, score 0.02, 300
detections), as ViTDet's ``LVIS/cascade_mask_rcnn_vitdet_l_100ep.py`` sets ``box_predictors``.

ViTDet's numbers with an MAE ViT-L (``LVIS/cascade_mask_rcnn_vitdet_l_100ep``):
49.2 box AP / 44.5 mask AP.

    python tools/train_det.py --config detection/configs/cascade_mask_rcnn_vitdet_l_lvis.py \
        --num-gpus 8 train.init_checkpoint=/path/to/mae_vit_large.safetensors
"""
from .common.cascade import cascade_roi_heads
from .mask_rcnn_vitdet_l_lvis import dataloader, lr_multiplier, model, optimizer, train

cascade_roi_heads(model)
train.output_dir = "./output/cascade_mask_rcnn_vitdet_l_lvis"
