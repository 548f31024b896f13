"""Tiny Cascade Mask R-CNN for the CPU: ``mask_rcnn_vit_mini_cpu.py`` with ViTDet's cascade heads.

The test-sized counterpart of ``cascade_mask_rcnn_vitdet_{b,l,h}_coco.py``: same data, schedule
and optimizer as the tiny Mask R-CNN, its small box heads copied into three cascade stages
(``common/cascade.py``). Train it as the tiny Mask R-CNN (same ``--dataset`` flags).
"""
from .common.cascade import cascade_roi_heads
from .mask_rcnn_vit_mini_cpu import dataloader, lr_multiplier, model, optimizer, train

cascade_roi_heads(model)
train.output_dir = "./output/cascade_det_mini_cpu"
