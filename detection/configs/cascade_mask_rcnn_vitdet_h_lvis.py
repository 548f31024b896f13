"""ViT-H Cascade Mask R-CNN (ViTDet recipe) on LVIS v1: ``mask_rcnn_vitdet_h_lvis.py`` (same
backbone, data, schedule, optimizer) with ViTDet's three cascade stages (``common/cascade.py``),
each stage's class-agnostic predictor the LVIS one (sigmoid + federated loss, score 0.02, 300
detections), as ViTDet's ``LVIS/cascade_mask_rcnn_vitdet_h_100ep.py`` sets ``box_predictors``.

ViTDet's numbers with an MAE ViT-H (``LVIS/cascade_mask_rcnn_vitdet_h_100ep``):
51.5 box AP / 46.6 mask AP.

    python tools/train_det.py --config detection/configs/cascade_mask_rcnn_vitdet_h_lvis.py \
        --num-gpus 8 train.init_checkpoint=/path/to/mae_vit_huge.safetensors
"""
from .common.cascade import cascade_roi_heads
from .mask_rcnn_vitdet_h_lvis import dataloader, lr_multiplier, model, optimizer, train

cascade_roi_heads(model)
train.output_dir = "./output/cascade_mask_rcnn_vitdet_h_lvis"
