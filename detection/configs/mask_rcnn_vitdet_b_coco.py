"""ViT-B/16 Mask R-CNN (ViTDet recipe) on COCO 2017: 1024 px LSJ, 100 epochs at batch 64.

Paper numbers with an MAE ViT-B: 51.6 box AP / 45.9 mask AP (ViTDet), 50.3 / 44.9 (MAE paper).

    python tools/train_det.py --config detection/configs/mask_rcnn_vitdet_b_coco.py --num-gpus 8 \
        train.init_checkpoint=/path/to/mae_vit_base.safetensors
"""
from .common.coco_lsj import dataloader
from .common.mask_rcnn_vitdet import model
from .common.recipe import lr_multiplier, optimizer, train

train.output_dir = "./output/mask_rcnn_vitdet_b_coco"
