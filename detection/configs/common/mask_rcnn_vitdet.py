"""ViTDet's Mask R-CNN (Li et al. 2022) on our ViT, for Detectron2 LazyConfig (ViT-B defaults).

- backbone: ``backbones.build_vit`` with window attention (14) + global blocks 2, 5, 8, 11,
  decomposed relative position bias, drop path 0.1, no cls token, no final norm; ``img_size``
  1024 (the detection input: the position embedding is resized once, when loaded);
  simple feature pyramid p2..p6 (256 channels, LayerNorm);
- every batch (train and test) zero-padded after normalisation to 1024x1024, bottom / right, with
  the real image sizes kept (``detection.rcnn.ViTDetRCNN``: also on Detectron2 v0.6, which
  ignores ``padding_constraints``);
- RPN with 2 hidden convs; box head 4 conv (LayerNorm) + 1 fc; mask head 4 conv (LayerNorm);
- inputs RGB, normalised with the ImageNet mean / std (as the MAE pretraining saw them).

Every head's channel count follows ``model.backbone.out_channels``.
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import (FastRCNNConvFCHead, FastRCNNOutputLayers,
                                           MaskRCNNConvUpsampleHead, StandardROIHeads)

from mae_transfer.backbones import build_vit
from mae_transfer.backbones.layers import LayerNorm2d
from mae_transfer.detection.backbone import ViTDetBackbone
from mae_transfer.detection.rcnn import ViTDetRCNN

LEVELS = ["p2", "p3", "p4", "p5"]
POOLER_SCALES = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)

model = L(ViTDetRCNN)(
    backbone=L(ViTDetBackbone)(
        net=L(build_vit)(
            name="vit_base_patch16", img_size=1024, drop_path_rate=0.1,
            window_size=14, global_blocks=[2, 5, 8, 11], use_rel_pos=True,
            use_cls_token=False, final_norm=False, fused_attn=True, grad_checkpointing=False),
        out_channels=256,
        scale_factors=None,  # strides 4..32 for the ViT's patch size (16: 4, 2, 1, 0.5)
        num_extra_levels=1,
        norm_layer=LayerNorm2d,
        square_pad=1024,
    ),
    proposal_generator=L(RPN)(
        in_features=LEVELS + ["p6"],
        head=L(StandardRPNHead)(in_channels="${...backbone.out_channels}", num_anchors=3,
                                conv_dims=[-1, -1]),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]], aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64], offset=0.0),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1],
                                  allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1],
                                    allow_low_quality_matches=False),
        box_in_features=LEVELS,
        box_pooler=L(ROIPooler)(output_size=7, scales=POOLER_SCALES, sampling_ratio=0,
                                pooler_type="ROIAlignV2"),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=L(ShapeSpec)(channels="${....backbone.out_channels}", height=7, width=7),
            conv_dims=[256, 256, 256, 256], fc_dims=[1024], conv_norm=LayerNorm2d),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels="${...box_head.fc_dims[0]}"),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}"),
        mask_in_features=LEVELS,
        mask_pooler=L(ROIPooler)(output_size=14, scales=POOLER_SCALES, sampling_ratio=0,
                                 pooler_type="ROIAlignV2"),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=L(ShapeSpec)(channels="${....backbone.out_channels}", height=14,
                                     width=14),
            num_classes="${..num_classes}",
            conv_dims=[256, 256, 256, 256, 256], conv_norm=LayerNorm2d),
    ),
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
