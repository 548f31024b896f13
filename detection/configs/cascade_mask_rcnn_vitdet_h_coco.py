"""ViT-H Cascade Mask R-CNN (ViTDet recipe) on COCO 2017: ``mask_rcnn_vitdet_h_coco.py`` (same
backbone with 16x16 patches, data, 75 epochs, optimizer and weight-decay policy) with
ViTDet's three cascade stages (``common/cascade.py``).

ViTDet's numbers with an MAE
ViT-H (``cascade_mask_rcnn_vitdet_h_75ep``): 58.7 box AP / 51.0 mask AP.

    python tools/train_det.py --config detection/configs/cascade_mask_rcnn_vitdet_h_coco.py \
        --num-gpus 8 train.init_checkpoint=/path/to/mae_vit_huge.safetensors
"""
from .common.cascade import cascade_roi_heads
from .mask_rcnn_vitdet_h_coco import dataloader, lr_multiplier, model, optimizer, train

cascade_roi_heads(model)
train.output_dir = "./output/cascade_mask_rcnn_vitdet_h_coco"
