"""ViT-L/16 Cascade Mask R-CNN (ViTDet recipe) on COCO 2017: ``mask_rcnn_vitdet_l_coco.py``
(same backbone, data, 100 epochs, optimizer and weight-decay policy) with ViTDet's three cascade
stages (``common/cascade.py``).

ViTDet's numbers with an MAE
ViT-L (``cascade_mask_rcnn_vitdet_l_100ep``): 57.6 box AP / 50.0 mask AP.

    python tools/train_det.py --config detection/configs/cascade_mask_rcnn_vitdet_l_coco.py \
        --num-gpus 8 train.init_checkpoint=/path/to/mae_vit_large.safetensors
"""
from .common.cascade import cascade_roi_heads
from .mask_rcnn_vitdet_l_coco import dataloader, lr_multiplier, model, optimizer, train

cascade_roi_heads(model)
train.output_dir = "./output/cascade_mask_rcnn_vitdet_l_coco"
