"""ViT-L/16 Mask R-CNN (ViTDet recipe) on COCO 2017: as ViT-B, with 24 blocks (global attention in
5, 11, 17, 23), drop path 0.4 and layer decay 0.8; 100 epochs.

    python tools/train_det.py --config detection/configs/mask_rcnn_vitdet_l_coco.py --num-gpus 8 \
        train.init_checkpoint=/path/to/mae_vit_large.safetensors
"""
from .common.coco_lsj import dataloader
from .common.mask_rcnn_vitdet import model
from .common.recipe import lr_multiplier, optimizer, train

model.backbone.net.name = "vit_large_patch16"
model.backbone.net.drop_path_rate = 0.4
model.backbone.net.global_blocks = [5, 11, 17, 23]
optimizer.params.layer_decay = 0.8
train.output_dir = "./output/mask_rcnn_vitdet_l_coco"
